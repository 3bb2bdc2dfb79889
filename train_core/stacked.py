"""Several runs of one study trained at once, as one stacked model.

    for member, result in train_stacked(members, stack=4):
        ...  # a member's run ended (completed, stopped by its callback, or not finite)

The trials of a study are paired: the same model, initial weights and batches; only the LR schedule differs. So a
step of K of them is one forward and backward pass of a model whose weights carry a leading member dimension:
`torch.func.vmap` runs GPT.hidden_states over the K members' weights, stacked afresh each step, and the output loss
runs per member (the chunked loss is a custom autograd Function, which vmap does not batch). Gradients flow back
through the stack into each member's own GPT.

Each member is otherwise a whole trainer run (trainer.setup_run): its own GPT and AdamW (its LR schedule, weight
decay, grad-norm clip), its batches, its evaluation and its checkpoints, in the trainer's format, so a member resumes
from its folder as an unstacked run would, and the other way round. `members` is pulled whenever a slot is free: a
member that stopped or finished leaves the stack and the next one takes its place, at its own step (each member
trains on its own step's batch).

What stacking changes: a member's numbers differ from its unstacked twin's by rounding only (batched matmuls sum in
another order); its step time is its share of the stack's step (the step's time / members), so that the members'
tokens/s and MFU add up to the process's. Not measured in a stack: the gradient noise scale (noise_scale_tokens is
None), and a lone micro-batch is not split for it. Not applied: `compile` (members train uncompiled).
"""

import dataclasses
import functools
import math
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from train_core.checkpoint import CheckpointManager
from train_core.config import TrainConfig
from train_core.errors import InputError
from train_core.memory import device_memory, training_bytes
from train_core.model import GPT
from train_core.trainer import (
    Run, StepMetrics, StepTaken, Stateful, TrainResult, check_resumable, evaluate, evaluates_after, resolve_device,
    run_result, save_checkpoints, setup_run, step_metrics,
)

# What members of one stack may differ in: everything else (model, data, batch, optimizer, seed, ...) is shared.
MEMBER_SECTIONS = ("schedule", "eval", "checkpoint")
AUTO_STACK_MEMORY = 0.8  # `auto` fills this share of the device's memory: the estimate errs low (train_core/memory.py)


@dataclass(kw_only=True)
class StackMember:
    """One run for the stack: what train() takes, as one value."""

    config: TrainConfig
    out_dir: Path | None = None
    callback: Callable[[StepMetrics], bool | None] | None = None
    callback_state: Stateful | None = None


@dataclass(kw_only=True)
class _Slot:
    """A member in the stack: its run and the steps this call took of it."""

    member: StackMember
    run: Run
    step: int  # the next step to take
    steps: list[StepTaken] = field(default_factory=list)


def train_stacked(members: Iterable[StackMember | None], *, stack: int) -> Iterator[tuple[StackMember, TrainResult]]:
    """Train `members` at most `stack` at a time; yields each member with its result as it ends. `members` is asked
    for the next one whenever a slot is free; None means none now (it is asked again when a slot frees next), and
    the stack ends once no member trains and it gives none. A member whose folder holds a finished run ends at once
    with that run's result, as with train()."""
    if stack < 1:
        raise InputError(f"stack must be a positive number of members, got {stack}")
    source, slots, shared = iter(members), [], None
    while True:
        while len(slots) < stack and (member := next(source, None)) is not None:
            shared = shared or member.config
            check_stackable(shared, member.config)
            joined = _join(member)
            if isinstance(joined, TrainResult):  # finished earlier: nothing to do
                yield member, joined
            else:
                slots.append(joined)
        if not slots:
            return
        for slot, taken in zip(list(slots), stacked_step(slots)):
            if (result := _after_step(slot, taken)) is not None:
                slots.remove(slot)
                yield slot.member, result


def check_stackable(shared: TrainConfig, config: TrainConfig) -> None:
    """Members of one stack differ only in MEMBER_SECTIONS."""
    a, b = shared.to_dict(), config.to_dict()
    for key in a:
        if key not in MEMBER_SECTIONS and a[key] != b[key]:
            raise InputError(f"runs of one stack must share {key}, got {a[key]!r} and {b[key]!r}; only "
                             f"{', '.join(MEMBER_SECTIONS)} may differ")


def stack_that_fits(config: TrainConfig, *, processes: int = 1) -> int | None:
    """The most members of `config` that `processes` stacks on one device can hold, by train_core.memory's estimate
    over AUTO_STACK_MEMORY of its memory; None where the memory cannot be read."""
    device = resolve_device(config.device)
    available = device_memory(device)
    if available is None:
        return None
    state, activations = training_bytes(config, device=device)
    return int(available[0] * AUTO_STACK_MEMORY // (processes * (state + activations)))


def _join(member: StackMember) -> "_Slot | TrainResult":
    config = member.config
    checkpoints = CheckpointManager(member.out_dir, keep_last=config.checkpoint.keep_last) if member.out_dir else None
    if checkpoints and (done := checkpoints.done_summary()) is not None:
        check_resumable(done["config"], config, member.out_dir)
        return TrainResult(**done["result"])
    # A stack runs its members' own models, uncompiled; and build_model's compiled model is one per process, which
    # every member that compiles would share.
    run = setup_run(dataclasses.replace(config, compile=False), checkpoints=checkpoints, rank=0, world_size=1,
                    callback_state=member.callback_state)
    slot = _Slot(member=member, run=run, step=run.start_step)
    if slot.step == config.schedule.max_steps:  # resumed from the final checkpoint of a run that died before DONE
        return _finish(slot, status="completed", val_loss=evaluate(run))
    return slot


class _HiddenStates(torch.nn.Module):
    """GPT.hidden_states as a module's forward, for torch.func.functional_call."""

    def __init__(self, gpt: GPT):
        super().__init__()
        self.gpt = gpt

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.gpt.hidden_states(idx)


def stacked_step(slots: list[_Slot]) -> list[StepTaken]:
    """One optimizer step of every member, each at its own step's LR and batch: the members' forward and backward
    passes at once, then each member's clip and AdamW step as trainer.train_step takes them, with nothing read from the
    device before the updates; then the step's numbers, in one read."""
    started = time.perf_counter()
    runs = [slot.run for slot in slots]
    lead = runs[0]
    lrs = [run.config.schedule.lr(slot.step) for run, slot in zip(runs, slots)]
    for run, lr in zip(runs, lrs):
        for group in run.optimizer.param_groups:
            group["lr"] = lr * group["lr_multiplier"]  # --- μP --- hidden matrices train at lr/m; 1 elsewhere
    hidden_states = functools.partial(torch.func.functional_call, _HiddenStates(lead.raw_model))
    names = [name for name, _ in lead.raw_model.named_parameters()]
    loss_sums = torch.zeros(len(runs), device=lead.device)
    for micro_step in range(lead.grad_accum):
        # Stacked anew for each micro-step: each backward frees its own graph, the stack included.
        params = {f"gpt.{n}": torch.stack([run.raw_model.get_parameter(n) for run in runs]) for n in names}
        batches = [slot.run.batches.get(step=slot.step, micro_step=micro_step) for slot in slots]
        x, y = torch.stack([b[0] for b in batches]), torch.stack([b[1] for b in batches])  # (K, B, T)
        with lead.autocast(), warnings.catch_warnings():
            # CPU attention has no batching rule: vmap runs it member by member, and says so at every step.
            warnings.filterwarnings("ignore", message=".*scaled_dot_product.*", category=UserWarning)
            h = torch.func.vmap(hidden_states, randomness="different")(params, (x,))  # (K, B, T, C)
            wte = params["gpt.transformer.wte.weight"]
            losses = torch.stack([lead.raw_model.output_loss(h[k], y[k], weight=wte[k]) for k in range(len(runs))])
            losses = losses / lead.grad_accum
        losses.sum().backward()  # members share no weights: each gets its own loss's gradient
        loss_sums += losses.detach()
    max_norm = lead.config.optimizer.grad_clip if lead.config.optimizer.grad_clip > 0 else math.inf
    grad_norms = [torch.nn.utils.clip_grad_norm_(run.raw_model.parameters(), max_norm) for run in runs]
    for run in runs:
        run.optimizer.step()  # a non-finite step too, as the trainer's: it ends that member before anything keeps it
        run.optimizer.zero_grad(set_to_none=True)
    losses, norms = torch.stack([loss_sums, torch.stack(grad_norms)]).tolist()  # the step's one read, after it
    share = (time.perf_counter() - started) / len(runs)
    return [StepTaken(step=slot.step, lr=lr, loss=loss, grad_norm=norm, seconds=share)
            for slot, lr, loss, norm in zip(slots, lrs, losses, norms)]


def _after_step(slot: _Slot, taken: StepTaken) -> TrainResult | None:
    """What trainer.train does after a step, for one member: evaluate when due, call back, checkpoint; its result
    when the run ends here."""
    run, member = slot.run, slot.member
    slot.steps.append(taken)
    slot.step = steps_done = taken.step + 1
    last = steps_done == run.config.schedule.max_steps
    val_loss = evaluate(run) if taken.finite and evaluates_after(run.config, steps_done) else None
    new_best = val_loss is not None and (run.best_val_loss is None or val_loss < run.best_val_loss)
    if new_best:
        run.best_val_loss = val_loss
    stop = bool(member.callback(step_metrics(run, taken, val_loss=val_loss))) if member.callback else False
    if run.checkpoints and taken.finite:
        save_checkpoints(run, steps_done=steps_done, new_best=new_best)
    if not taken.finite:
        return _finish(slot, status="nonfinite", val_loss=val_loss)
    if stop:
        return _finish(slot, status="stopped", val_loss=val_loss)
    return _finish(slot, status="completed", val_loss=val_loss) if last else None


def _finish(slot: _Slot, *, status: str, val_loss: float | None) -> TrainResult:
    run = slot.run
    if not run.config.peak_flops:
        run.peak.save()  # a step that beat the kept peak raised it
    result = run_result(run, slot.steps, status=status, steps_done=slot.step, final_val_loss=val_loss)
    if run.checkpoints and status == "completed":
        run.checkpoints.mark_done({"result": dataclasses.asdict(result) | {"losses": []}, "config": run.config.to_dict()})
    return result
