"""The training loop every sweep trial and every full run share.

    result = train(config, out_dir=Path("runs/x"), callback=on_step)

builds the model, optimizer and data from `config`, resumes from the newest good checkpoint in out_dir, and runs
optimizer steps until schedule.max_steps. After each step it calls `callback(metrics)`; a truthy return value stops
the run. That callback is the only seam to the outside world (the sweep reports to Optuna and prunes through it).

The host reads a step's numbers one step late: it queues step n+1 on the device, then reads step n's loss and grad
norm and calls the callback while the device runs step n+1 (`finished_steps`). Nothing waits for the device within
a step. A callback that stops the run (a pruned trial) thus stops it with the next step already computed: that step
is dropped, in no record (losses, tokens, checkpoints), so a stopped run reports what it reported when steps were read
at once. Where a step ends at an evaluation or a checkpoint, which read the weights and RNG it leaves, the next step
is queued only after them.

Data-parallel under torchrun: `torchrun --nproc_per_node 2 -m sweep train ...` splits each step's micro-batches
across processes (same global batch), averages gradients with DDP, and only rank 0 writes checkpoints and calls
the callback.
"""

import contextlib
import functools
import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Literal, Protocol

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from train_core.checkpoint import CheckpointManager
from train_core.config import DataConfig, ScheduleConfig, TrainConfig
from train_core.data import TokenData, TrainBatches, ensure_corpus, fold_vocab, to_device
from train_core.errors import InputError
from train_core.memory import check_fits
from train_core.model import GPT, GPTConfig
from train_core.noise import NoiseScale
from train_core.peak import MachinePeak

# Sections of the config that change the numbers a run produces; a checkpoint only resumes a run that agrees on them.
RESUME_SECTIONS = ("model", "data", "batch", "schedule", "optimizer", "seed")


CALLBACK_KEY = "callback"  # a checkpoint's entry for train()'s callback_state
NOISE_SCALE_KEY = "noise_scale"  # a checkpoint's entry for the noise scale's moving averages


class Stateful(Protocol):
    """State that goes into checkpoints as plain values (numbers, strings, None, lists and dicts of them)."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class StepMetrics:
    """What the callback sees after each optimizer step."""

    step: int  # 0-based index of the step just taken
    loss: float  # mean train loss over the step's micro-batches (nan/inf when the step was not finite)
    lr: float
    grad_norm: float  # global grad norm before clipping
    tokens_seen: int
    tokens_per_s: float
    ms_per_step: float  # from the end of the step before (its start after an evaluation or checkpoint) to its end
    mfu: float  # achieved / peak FLOP/s
    val_loss: float | None = None  # set on steps where an evaluation ran
    noise_scale_tokens: float | None = None  # B_simple so far (train_core/noise.py); None where not (yet) measured


@dataclass
class TrainResult:
    status: Literal["completed", "stopped", "nonfinite"]
    steps_done: int
    tokens_seen: int
    final_train_loss: float
    final_val_loss: float | None
    best_val_loss: float | None
    train_seconds: float  # time in training steps, this process, excluding evals and checkpoints
    tokens_per_s: float
    mfu: float
    flops_per_token: int
    num_params: int
    losses: list[float] = field(default_factory=list)  # train loss per step run by this call
    noise_scale_tokens: float | None = None  # B_simple at the last step; None where not (yet) measured
    peak: str = ""  # what mfu is over, FLOP/s and source (MachinePeak.describe); "" in results saved before it


def resolve_device(name: str) -> torch.device:
    """`auto`: CUDA, else MPS, else the CPU. On CUDA one GPU per torchrun process (its LOCAL_RANK); a `--workers`
    worker sees only the GPU it was given, as cuda:0."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device(name)


def device_label(device: torch.device) -> str:
    """What a run trained on, for people: 'cuda:0 (NVIDIA H100 80GB HBM3, CUDA_VISIBLE_DEVICES=3)', 'cpu'."""
    details = [torch.cuda.get_device_name(device)] if device.type == "cuda" else []
    if (visible := os.environ.get("CUDA_VISIBLE_DEVICES")) is not None:
        details.append(f"CUDA_VISIBLE_DEVICES={visible}")
    return f"{device}" + (f" ({', '.join(details)})" if details else "")


# CPU instructions that compute in bfloat16 (x86 AVX-512 BF16 and AMX, Arm BF16 and SVE BF16). Torch's own check (a
# private mkldnn op) also says yes on plain AVX-512, where oneDNN only emulates bfloat16.
NATIVE_BF16_CPU_FEATURES = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The autocast dtype: bfloat16 only where the hardware runs it natively (emulated bf16 is ~100x slower)."""
    if name != "auto":
        return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]
    # Native on Ampere and later; torch's default check also says yes where bf16 is only emulated (V100, T4).
    if device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False):
        return torch.bfloat16
    if device.type == "cpu" and any(torch.cpu.get_capabilities().get(f) for f in NATIVE_BF16_CPU_FEATURES):
        return torch.bfloat16
    return torch.float32


# (model config, device) -> the model a process compiled for it, and its compiled wrapper: see build_model
_COMPILED: dict[tuple[str, str], tuple[GPT, torch.nn.Module]] = {}


def build_model(config: TrainConfig, device: torch.device) -> tuple[GPT, torch.nn.Module]:
    """The model at the seed's initial weights, and what runs its steps: the model itself, or with `compile` its
    torch.compile wrapper.

    torch.compile traces one module object: a new model per trial would compile again in every trial (tens of seconds
    for GPT-2 124M) and, past torch's recompile limit, run uncompiled. So a process compiles one model per model
    config and device, and each later run loads its freshly initialised weights into it.
    """
    torch.manual_seed(config.seed)  # same seed, same initial weights: trials of a study are paired
    fresh = GPT(config.model).to(device)
    if not config.compiled(device.type):
        return fresh, fresh
    key = (json.dumps(asdict(config.model), sort_keys=True), str(device))
    if key not in _COMPILED:
        _COMPILED[key] = (fresh, torch.compile(fresh))
        return _COMPILED[key]
    model, compiled = _COMPILED[key]
    model.load_state_dict(fresh.state_dict())
    model.zero_grad(set_to_none=True)  # a run that stopped mid-step left its gradients
    model.train()
    return model, compiled


def make_optimizer(model: GPT, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over the model's parameter groups (weight decay on >=2-D weights only; μP's per-group LR multipliers)."""
    groups = model.optimizer_groups(weight_decay=config.optimizer.weight_decay)
    fused = device.type in ("cuda", "cpu")
    return torch.optim.AdamW(
        groups,
        lr=config.schedule.max_lr,
        betas=(config.optimizer.beta1, config.optimizer.beta2),
        eps=config.optimizer.eps,
        fused=fused,
        foreach=None if fused else True,
    )


def open_data(data: DataConfig, *, vocab_size: int, progress: bool = True) -> tuple[TokenData, TokenData]:
    if data.corpus is not None:
        folder = ensure_corpus(data.corpus, progress=progress)
        train_pattern, val_pattern = str(folder / "train.bin"), str(folder / "val.bin")
    else:
        train_pattern, val_pattern = data.train, data.val
    if data.top_tokens is None:
        return TokenData.open(train_pattern, vocab_size=vocab_size), TokenData.open(val_pattern, vocab_size=vocab_size)
    train, val = TokenData.open(train_pattern, vocab_size=None), TokenData.open(val_pattern, vocab_size=None)
    return fold_vocab(train, val, top_tokens=data.top_tokens)


def train(
    config: TrainConfig,
    *,
    out_dir: Path | None = None,
    callback: Callable[[StepMetrics], bool | None] | None = None,
    callback_state: Stateful | None = None,
) -> TrainResult:
    """Run `config` to schedule.max_steps (or until callback returns True), checkpointing into out_dir if given.

    callback_state is the callback's own state (a loss smoother, say): saved in every checkpoint and restored on
    resume, so that a resumed run's callback sees and says what the uninterrupted run's would have.
    """
    with _process_group(config) as (rank, world_size):
        return _train(config, out_dir=out_dir, callback=callback, callback_state=callback_state, rank=rank,
                      world_size=world_size)


def _train(
    config: TrainConfig,
    *,
    out_dir: Path | None,
    callback: Callable[[StepMetrics], bool | None] | None,
    callback_state: Stateful | None,
    rank: int,
    world_size: int,
) -> TrainResult:
    checkpoints = CheckpointManager(out_dir, keep_last=config.checkpoint.keep_last) if out_dir else None
    if checkpoints and (done := checkpoints.done_summary()) is not None:
        check_resumable(done["config"], config, out_dir)
        return TrainResult(**done["result"])  # finished earlier: nothing to do

    run = setup_run(config, checkpoints=checkpoints, rank=rank, world_size=world_size, callback_state=callback_state)
    status, steps, val_loss = "completed", [], None
    for taken in finished_steps(run):
        steps.append(taken)
        steps_done = taken.step + 1
        val_loss = evaluate(run) if taken.finite and evaluates_after(config, steps_done) else None
        new_best = val_loss is not None and (run.best_val_loss is None or val_loss < run.best_val_loss)
        if new_best:
            run.best_val_loss = val_loss
        stop = bool(callback(step_metrics(run, taken, val_loss=val_loss))) if (callback and run.is_main) else False
        # Under torchrun, reading the ranks' agreement waits for the step in flight: the device idles while the next
        # one is queued.
        if world_size > 1:
            stop = _any_rank(stop, run.device)
        if checkpoints and run.is_main and taken.finite:
            save_checkpoints(run, steps_done=steps_done, new_best=new_best)
        if not taken.finite:
            status = "nonfinite"
            break
        if stop:
            status = "stopped"
            break

    steps_done = run.start_step + len(steps)
    if not config.peak_flops and run.is_main:
        run.peak.save()  # a step that beat the kept peak raised it
    if not steps and val_loss is None:
        val_loss = evaluate(run)  # resumed from the final checkpoint of a run that died before writing DONE
    result = run_result(run, steps, status=status, steps_done=steps_done, final_val_loss=val_loss)
    if checkpoints and run.is_main and status == "completed":
        checkpoints.mark_done({"result": asdict(result) | {"losses": []}, "config": config.to_dict()})
    return result


@dataclass(kw_only=True)
class Run:
    """One training run as `setup_run` builds it: what the steps below read, and the two things they change
    (best_val_loss, and the model and optimizer state through torch)."""

    config: TrainConfig
    rank: int
    world_size: int
    device: torch.device
    raw_model: GPT
    model: torch.nn.Module  # raw_model, compiled and wrapped in DDP as the config and world size ask (build_model)
    optimizer: torch.optim.AdamW
    autocast: Callable[[], contextlib.AbstractContextManager]
    batches: TrainBatches
    val_data: TokenData
    checkpoints: CheckpointManager | None
    peak: MachinePeak
    flops_per_token: int
    start_step: int  # the step a resumed run continues from; 0 for a fresh one
    best_val_loss: float | None
    noise_scale: NoiseScale | None  # B_simple's moving averages, where this run measures it (noise_scale_for)
    callback_state: Stateful | None = None  # see train(); saved with every checkpoint

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def grad_accum(self) -> int:
        return self.config.grad_accum_steps(world_size=self.world_size)

    @property
    def passes(self) -> int:
        """Forward/backward passes per optimizer step on this process (forward_passes)."""
        return forward_passes(self.config, world_size=self.world_size)

    @property
    def pieces(self) -> int:
        """Forward/backward passes per micro-batch: 2 where noise_scale "split" halves a lone micro-batch, else 1."""
        return self.passes // self.grad_accum

    @property
    def tokens_per_step(self) -> int:
        return self.config.batch.total_batch_size


class DeviceMark:
    """A point in the device's queue of work and the time the device reached it: on CUDA an event in the current
    stream, timed on the GPU; elsewhere the host's clock as the mark is made, the work before it being done by then
    (a CPU's work is the host's own; on MPS the step's numbers are copied to the host with a wait)."""

    def __init__(self, device: torch.device):
        self._time = time.perf_counter()
        self._event = torch.cuda.Event(enable_timing=True) if device.type == "cuda" else None
        if self._event is not None:
            self._event.record()

    def wait(self) -> None:
        """Until the device has got here: not for the work queued after."""
        if self._event is not None:
            self._event.synchronize()

    def seconds_since(self, earlier: "DeviceMark") -> float:
        """Device time from `earlier` to here; both reached (wait)."""
        if self._event is not None:
            return earlier._event.elapsed_time(self._event) / 1000
        return self._time - earlier._time


@dataclass(frozen=True, kw_only=True)
class QueuedStep:
    """One optimizer step as train_step queued it on the device, its numbers not read yet (finish_step)."""

    step: int
    lr: float
    # loss, grad norm[, the first pass's squared grad norm, where the noise scale is measured]: on the host once the
    # device reaches `done` (on CUDA, pinned memory the device copies into)
    numbers: torch.Tensor
    started: DeviceMark
    done: DeviceMark  # after the step's update and the copy of its numbers


@dataclass(frozen=True, kw_only=True)
class StepTaken:
    """One optimizer step as the host read it (finish_step)."""

    step: int
    lr: float
    loss: float  # mean over the micro-batches; nan/inf when the step was not finite
    grad_norm: float  # before clipping
    seconds: float  # from where the step before ended on the device (or this step's start, after a pause) to its end

    @property
    def finite(self) -> bool:
        return math.isfinite(self.loss) and math.isfinite(self.grad_norm)


def setup_run(
    config: TrainConfig,
    *,
    checkpoints: CheckpointManager | None,
    rank: int,
    world_size: int,
    callback_state: Stateful | None = None,
) -> Run:
    """Data, model and optimizer for `config`, resumed from the newest good checkpoint when there is one."""
    device = resolve_device(config.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # else every torchrun rank would also open a context on GPU 0
    check_fits(config, device=device)  # before anything is allocated
    autocast_dtype = resolve_dtype(config.dtype, device)
    with _rank_zero_first(world_size, rank == 0):
        train_data, val_data = open_data(config.data, vocab_size=config.model.vocab_size, progress=rank == 0)

    raw_model, model = build_model(config, device)
    optimizer = make_optimizer(raw_model, config, device)
    noise_scale = noise_scale_for(config, world_size=world_size)
    start_step, best_val_loss = 0, None
    state = checkpoints.load_latest(map_location=device) if checkpoints else None
    if state is not None:
        check_resumable(state["config"], config, checkpoints.folder, step=state["step"])
        restore(state, model=raw_model, optimizer=optimizer, device=device)
        start_step, best_val_loss = state["step"], state["best_val_loss"]
        if callback_state is not None and CALLBACK_KEY in state:
            callback_state.load_state_dict(state[CALLBACK_KEY])
        # A checkpoint of a run that did not measure it has none: the averages then start from this step.
        if noise_scale is not None and NOISE_SCALE_KEY in state:
            noise_scale.load_state_dict(state[NOISE_SCALE_KEY])

    if world_size > 1:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    # A peak the config names is taken as given; else this machine's, kept across runs (train_core/peak.py).
    peak = (MachinePeak("config", config.peak_flops, source="the config's peak_flops") if config.peak_flops
            else MachinePeak.load(device, autocast_dtype))
    batches = TrainBatches(train_data, device=device, prefetch=device.type == "cuda", seed=config.seed,
                           grad_accum=config.grad_accum_steps(world_size=world_size), rank=rank,
                           batch_size=config.batch.micro_batch_size, block_size=config.model.block_size)
    return Run(
        config=config, rank=rank, world_size=world_size, device=device, raw_model=raw_model, model=model,
        optimizer=optimizer,
        autocast=functools.partial(
            torch.autocast, device.type, dtype=autocast_dtype, enabled=autocast_dtype != torch.float32
        ),
        batches=batches, val_data=val_data, checkpoints=checkpoints, peak=peak,
        flops_per_token=raw_model.flops_per_token(), start_step=start_step, best_val_loss=best_val_loss,
        noise_scale=noise_scale, callback_state=callback_state,
    )


def forward_passes(config: TrainConfig, *, world_size: int) -> int:
    """Forward/backward passes per optimizer step on each process: grad_accum, or 2 where noise_scale "split" runs a
    lone micro-batch as its two halves."""
    grad_accum = config.grad_accum_steps(world_size=world_size)
    return 2 if config.noise_scale == "split" and grad_accum == 1 else grad_accum


def noise_scale_for(config: TrainConfig, *, world_size: int) -> NoiseScale | None:
    """The noise scale's moving averages where `config` measures it, else None.

    Its small batch is a process's first forward/backward pass, read before the next pass adds to the gradient and
    before DDP averages it (every pass but the last runs without sync); its big batch is the whole step. A step of one
    pass per process has no small batch to read (the lone pass's gradient is averaged across processes inside its
    backward): there it is measured only with noise_scale "split".
    """
    passes = forward_passes(config, world_size=world_size)
    if config.noise_scale == "off" or passes == 1:
        return None
    tokens = config.batch.total_batch_size
    return NoiseScale(small_batch=tokens // (passes * world_size), big_batch=tokens)


def restore(state: dict, *, model: GPT, optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Weights, optimizer moments and RNG from a checkpoint (see `snapshot`)."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"]["cpu"].cpu())
    if device.type == "cuda" and "cuda" in state["rng"]:  # absent in a checkpoint written on a CPU
        torch.cuda.set_rng_state(state["rng"]["cuda"].cpu(), device)


def finished_steps(run: Run) -> Iterator[StepTaken]:
    """The run's steps from run.start_step on, each handed out once its numbers are on the host, one step late: step
    n+1 is queued before step n is handed out, so that the device runs it while the caller looks at step n. Not after
    a step that `pauses_after`: what the caller does then reads the weights and RNG that step leaves. A caller that
    stops early leaves the queued step unread: it is in no record.

    A step's time runs on the device's clock from where the step before it ended (its start after a pause), so that
    what the host does meanwhile counts where the device waits for it, and evaluations and checkpoints never do."""
    in_flight = None  # (the step queued and not read yet, where the step before it ended)
    previous_done = None  # where the step before ended on the device, unless a pause came after it
    for step in range(run.start_step, run.config.schedule.max_steps):
        queued = train_step(run, step)
        if in_flight is not None:
            yield finish_step(run, *in_flight)  # the previous step, read while the device runs this one
        if pauses_after(run, step):
            since, in_flight, previous_done = previous_done, None, None
            yield finish_step(run, queued, since)
        else:
            in_flight, previous_done = (queued, previous_done), queued.done


def pauses_after(run: Run, step: int) -> bool:
    """Whether the next step waits for this one's numbers: where an evaluation or a checkpoint follows it (the last
    step has both), which read the state it leaves."""
    steps_done = step + 1
    return evaluates_after(run.config, steps_done) or (run.checkpoints is not None
                                                       and saves_after(run.config, steps_done))


def train_step(run: Run, step: int) -> QueuedStep:
    """Queues one optimizer step at the schedule's LR on the device: grad_accum micro-batches, clipping, the update.
    Nothing here waits for the device; finish_step reads the step's numbers. A non-finite step is applied too (telling
    would need its numbers): it ends the run, before anything that is kept evaluates or saves the weights it leaves.
    Where the noise scale is measured, the first pass's gradient norm is taken on the way: no gradient changes."""
    started = DeviceMark(run.device)
    config, passes, pieces = run.config, run.passes, run.pieces
    lr = config.schedule.lr(step)
    for group in run.optimizer.param_groups:
        group["lr"] = lr * group["lr_multiplier"]  # --- μP --- hidden matrices train at lr/m; 1 elsewhere
    loss_sum = torch.zeros((), device=run.device)
    first_pass_sq_norm = None
    for index in range(passes):
        micro_step, piece = divmod(index, pieces)
        if piece == 0:
            micro_batch = run.batches.get(step=step, micro_step=micro_step)
        x, y = (t.chunk(pieces)[piece] for t in micro_batch)  # the whole micro-batch unless split
        # Under DDP, average gradients across processes only on the last pass.
        sync = run.world_size == 1 or index == passes - 1
        with (contextlib.nullcontext() if sync else run.model.no_sync()), run.autocast():
            loss = run.model(x, y) / passes
        if piece == pieces - 1:
            run.batches.prefetch_after(step=step, micro_step=micro_step)  # CUDA: while the GPU runs this forward
        loss.backward()
        if index == 0 and run.noise_scale is not None:
            first_pass_sq_norm = squared_grad_norm(run.raw_model)  # |first pass's mean gradient / passes|²
        loss_sum += loss.detach()
    if run.world_size > 1:
        dist.all_reduce(loss_sum, op=dist.ReduceOp.AVG)
        if first_pass_sq_norm is not None:  # each process's own first pass: their mean is as unbiased, less noisy
            dist.all_reduce(first_pass_sq_norm, op=dist.ReduceOp.AVG)
    max_norm = config.optimizer.grad_clip if config.optimizer.grad_clip > 0 else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(run.raw_model.parameters(), max_norm)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    numbers = [loss_sum, grad_norm] + ([first_pass_sq_norm] if first_pass_sq_norm is not None else [])
    on_host = torch.stack(numbers).to("cpu", non_blocking=run.device.type == "cuda")
    return QueuedStep(step=step, lr=lr, numbers=on_host, started=started, done=DeviceMark(run.device))


def finish_step(run: Run, queued: QueuedStep, since: DeviceMark | None = None) -> StepTaken:
    """`queued` as the host reads it, once the device has done it (not the work queued after it: `.item()` would wait
    for all of that), timed from `since`, else from its start; its gradient norms go into the noise scale. The
    trainer's one read of a step's numbers."""
    queued.done.wait()
    loss, grad_norm, *first_pass_sq_norm = queued.numbers.tolist()
    taken = StepTaken(step=queued.step, lr=queued.lr, loss=loss, grad_norm=grad_norm,
                      seconds=queued.done.seconds_since(since or queued.started))
    if first_pass_sq_norm and taken.finite:
        small_sq_norm = first_pass_sq_norm[0] * run.passes**2  # the first pass's own mean gradient
        if math.isfinite(small_sq_norm):
            run.noise_scale.update(small_sq_norm=small_sq_norm, big_sq_norm=grad_norm**2)
    return taken


def squared_grad_norm(model: torch.nn.Module) -> torch.Tensor:
    """|gradient|² over all of model's parameters in one fused pass (torch's foreach norms); a tensor, so that
    nothing waits for the GPU here."""
    return torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None]).square()


def evaluates_after(config: TrainConfig, steps_done: int) -> bool:
    """Whether the run evaluates once steps_done steps are done: every eval.interval steps and at the end."""
    return steps_done % config.eval.interval == 0 or steps_done == config.schedule.max_steps


def evaluate(run: Run) -> float:
    """Mean val loss over the config's fixed eval batches (split across ranks), on the model uncompiled: compiled, a
    no-grad forward in eval mode would be a second graph to compile, for a few forwards every eval.interval steps."""
    config, model = run.config, run.raw_model
    model.eval()
    total = torch.zeros((), device=run.device)
    with torch.no_grad(), run.autocast():
        for index in range(run.rank, config.eval.iters, run.world_size):
            batch = run.val_data.val_batch(index, batch_size=config.batch.micro_batch_size,
                                           block_size=config.model.block_size)
            x, y = to_device(*batch, run.device)
            total += model(x, y)
    model.train()
    if run.world_size > 1:
        dist.all_reduce(total)
    return total.item() / config.eval.iters


def step_metrics(run: Run, taken: StepTaken, *, val_loss: float | None) -> StepMetrics:
    tokens = run.tokens_per_step
    return StepMetrics(
        step=taken.step,
        loss=taken.loss,
        lr=taken.lr,
        grad_norm=taken.grad_norm,
        tokens_seen=(taken.step + 1) * tokens,
        tokens_per_s=tokens / taken.seconds,
        ms_per_step=taken.seconds * 1000,
        mfu=run.peak.mfu(run.flops_per_token * tokens / taken.seconds / run.world_size),
        val_loss=val_loss,
        noise_scale_tokens=run.noise_scale.b_simple if run.noise_scale is not None else None,
    )


def snapshot(run: Run, *, steps_done: int) -> dict:
    """Everything an exact resume needs: weights, optimizer, config, step, best val loss, RNG, the callback's state."""
    rng = {"cpu": torch.get_rng_state()}
    if run.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(run.device)
    return {
        "model": run.raw_model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "config": run.config.to_dict(),
        "step": steps_done,
        "best_val_loss": run.best_val_loss,
        "rng": rng,
    } | ({CALLBACK_KEY: run.callback_state.state_dict()} if run.callback_state is not None else {}) | (
        {NOISE_SCALE_KEY: run.noise_scale.state_dict()} if run.noise_scale is not None else {})


def save_checkpoints(run: Run, *, steps_done: int, new_best: bool) -> None:
    """The checkpoint policy: a best copy on each new best val loss, one every checkpoint.interval steps and at the
    end, and (wsd) the state where the cool-down starts, which longer runs branch from (saves_after: where)."""
    last = steps_done == run.config.schedule.max_steps
    if new_best:
        run.checkpoints.save_best(snapshot(run, steps_done=steps_done))
    if steps_done % run.config.checkpoint.interval == 0 or last:
        run.checkpoints.save(snapshot(run, steps_done=steps_done), step=steps_done)
    if steps_done == run.config.schedule.stable_end:
        run.checkpoints.save_stable(snapshot(run, steps_done=steps_done), step=steps_done)


def saves_after(config: TrainConfig, steps_done: int) -> bool:
    """Whether save_checkpoints saves a step or stable checkpoint once steps_done steps are done."""
    schedule = config.schedule
    return steps_done % config.checkpoint.interval == 0 or steps_done in (schedule.max_steps, schedule.stable_end)


def run_result(run: Run, steps: list[StepTaken], *, status: str, steps_done: int, final_val_loss: float | None) -> TrainResult:
    """The result of this call's steps (a resumed run's earlier steps are not in its losses or speed)."""
    seconds = sum(s.seconds for s in steps)
    tokens = run.tokens_per_step * len(steps)
    return TrainResult(
        status=status,
        steps_done=steps_done,
        tokens_seen=steps_done * run.tokens_per_step,
        final_train_loss=steps[-1].loss if steps else math.nan,
        final_val_loss=final_val_loss,
        best_val_loss=run.best_val_loss,
        train_seconds=seconds,
        tokens_per_s=tokens / seconds if seconds else 0.0,
        mfu=run.peak.mfu(run.flops_per_token * tokens / seconds / run.world_size) if seconds else 0.0,
        flops_per_token=run.flops_per_token,
        num_params=run.raw_model.num_params(),
        losses=[s.loss for s in steps],
        noise_scale_tokens=run.noise_scale.b_simple if run.noise_scale is not None else None,
        peak=run.peak.describe(),
    )


def check_resumable(saved: dict, config: TrainConfig, out_dir: Path, *, step: int | None = None) -> None:
    """A checkpoint or DONE marker in out_dir belongs to this config only if they agree on RESUME_SECTIONS.

    A checkpoint taken after `step` steps also belongs to a run whose schedule differs only from that step on (a longer
    WSD run branching off a shorter one's stable phase): this run would have reached the very same state there.
    """
    check_same_parametrization(saved["model"], config.model, where=f"the checkpoint in {out_dir}")
    current = config.to_dict()
    # model.loss only picks how the same loss is computed (rounding, as device and compile): not what a run is. A
    # checkpoint written before a model option existed lacks it, and ran its default.
    current["model"].pop("loss")
    defaults = {f.name: f.default for f in fields(GPTConfig)}
    saved = saved | {"model": {k: v for k, v in (defaults | saved["model"]).items() if k != "loss"}}
    for section in RESUME_SECTIONS:
        same = saved.get(section) == current[section]
        if not same and section == "schedule" and step is not None:
            same = _same_lrs(ScheduleConfig(**saved["schedule"]), config.schedule, steps=step)
        if not same:
            raise InputError(
                f"the checkpoint in {out_dir} was written with a different {section} "
                f"({saved.get(section)!r} vs now {current[section]!r}); use another output folder or move that one away"
            )


def check_same_parametrization(saved_model: dict, model: GPTConfig, *, where: str) -> None:
    """--- μP --- Weights and LRs of one parametrization mean something else under another: refuse the mix by name."""
    saved = parametrization_name(saved_model.get("parametrization", "sp"), saved_model.get("mup_base_width"))
    now = parametrization_name(model.parametrization, model.mup_base_width)
    if saved != now:
        raise InputError(f"{where} was trained under {saved}, but this run is {now}; use the same model.parametrization "
                         "and model.mup_base_width, or another output folder")


def parametrization_name(parametrization: str, base_width: int | None) -> str:
    return "SP" if parametrization == "sp" else f"μP with base width {base_width}"


def _same_lrs(a: ScheduleConfig, b: ScheduleConfig, *, steps: int) -> bool:
    return all(a.lr(step) == b.lr(step) for step in range(steps))


@contextlib.contextmanager
def _process_group(config: TrainConfig):
    """(rank, world_size); joins the process group torchrun describes in the environment, and leaves it in step with
    the other ranks (a rank that exits while another still holds its connections aborts in gloo's teardown)."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if world_size == 1:
        yield 0, 1
        return
    joined = not dist.is_initialized()
    if joined:
        backend = "nccl" if resolve_device(config.device).type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    yield dist.get_rank(), world_size
    if joined:  # not after an exception: the other ranks may never reach the barrier
        dist.barrier()
        dist.destroy_process_group()


@contextlib.contextmanager
def _rank_zero_first(world_size: int, is_main: bool):
    """Rank 0 runs the block first (e.g. preparing a corpus) while the others wait, then the others run it."""
    if world_size > 1 and not is_main:
        dist.barrier()
    yield
    if world_size > 1 and is_main:
        dist.barrier()


def _any_rank(flag: bool, device: torch.device) -> bool:
    tensor = torch.tensor(float(flag), device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())
