"""train(): gradient accumulation, learning, the callback seam, non-finite steps, and exact resume from checkpoints."""

import argparse
import collections
import functools
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import train_core.trainer as trainer
from train_core.checkpoint import CheckpointManager
from train_core.data import TokenData, write_nanogpt_bin
from train_core.errors import InputError
from train_core.model import GPT
from train_core.peak import MachinePeak, measure_peak_flops
from train_core.tokenizer import gpt2_encoding
from train_core.trainer import (
    build_model, check_resumable, evaluate, finish_step, make_optimizer, setup_run, train, train_step,
)

CPU = torch.device("cpu")


# --- one optimizer step -----------------------------------------------------------------------------------------


def test_grad_accumulation_equals_one_big_batch(make_config, tmp_path):
    """4 micro-steps of 2 sequences give the loss, grad norm and weights of one step over the same 8 sequences."""
    config = make_config(
        batch={"total_batch_size": 8 * 16, "micro_batch_size": 2},
        schedule={"max_steps": 1, "warmup_steps": 0},
        optimizer={"grad_clip": 0.0},
    )
    seen = []
    train(config, out_dir=tmp_path / "run", callback=seen.append)
    trained = CheckpointManager(tmp_path / "run").load_latest()["model"]

    # The reference: the very sequences the trainer drew for its 4 micro-steps, in one forward/backward of 8.
    data = TokenData.open(config.data.train, vocab_size=config.model.vocab_size)
    micro = [data.get_batch(seed=config.seed, step=0, micro_step=i, rank=0, batch_size=2, block_size=16)
             for i in range(4)]
    assert not torch.equal(micro[0][0], micro[1][0])  # distinct sequences, or the comparison proves little
    x, y = torch.cat([b[0] for b in micro]), torch.cat([b[1] for b in micro])  # (8, T)
    torch.manual_seed(config.seed)
    model = GPT(config.model)
    optimizer = make_optimizer(model, config, CPU)
    lr = config.schedule.lr(0)
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss = model(x, y)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), math.inf).item()
    optimizer.step()

    # Adam's first step hardly depends on the gradient's scale, so the loss and grad norm check the 1/accum scaling.
    assert seen[0].loss == pytest.approx(loss.item(), rel=1e-5)
    assert seen[0].grad_norm == pytest.approx(grad_norm, rel=1e-4)
    # Adam moves each weight by about lr * sign(grad): a different batch would flip many of those signs. Rounding
    # can only move a weight whose gradient is near 0 (near Adam's eps), and then by a small part of lr.
    for name, value in model.state_dict().items():
        torch.testing.assert_close(trained[name], value, rtol=0, atol=0.01 * lr, msg=lambda m: f"{name}: {m}")


def test_overfitting_one_batch_drives_the_loss_down(make_config):
    config = make_config()
    torch.manual_seed(0)
    model = GPT(config.model)
    optimizer = make_optimizer(model, config, CPU)
    x, y = torch.randint(256, (4, 16)), torch.randint(256, (4, 16))
    losses = []
    for _ in range(50):
        loss = model(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(256), abs=0.1)
    assert losses[-1] < 0.3 * losses[0]  # 64 random targets memorised


# --- whole runs -------------------------------------------------------------------------------------------------


@pytest.fixture
def text_files(tmp_path):
    """(train, val, vocab) from ~25 KB of real Python source, GPT-2-tokenized, ids renumbered densely so that a
    tiny output layer covers them."""
    text = Path(argparse.__file__).read_text(encoding="utf-8")[:25_000]
    tokens = np.array(gpt2_encoding().encode_ordinary(text))
    vocab, dense = np.unique(tokens, return_inverse=True)
    cut = int(0.9 * len(dense))
    write_nanogpt_bin(tmp_path / "text_train.bin", dense[:cut])
    write_nanogpt_bin(tmp_path / "text_val.bin", dense[cut:])
    return str(tmp_path / "text_train.bin"), str(tmp_path / "text_val.bin"), len(vocab)


def test_loss_falls_on_real_text(make_config, text_files):
    train_path, val_path, vocab = text_files
    config = make_config(
        model={"vocab_size": vocab, "block_size": 32},
        data={"train": train_path, "val": val_path},
        batch={"total_batch_size": 8 * 32, "micro_batch_size": 8},
        schedule={"max_lr": 1e-2, "warmup_steps": 5, "max_steps": 40},
        eval={"interval": 20, "iters": 4},
    )
    seen = []
    result = train(config, callback=seen.append)
    assert result.status == "completed" and len(result.losses) == 40
    assert result.losses[0] == pytest.approx(math.log(vocab), abs=0.3)  # starts near uniform
    assert np.mean(result.losses[-5:]) < result.losses[0] - 2.0
    # Held-out text gets better too, and keeps getting better between the two evaluations.
    assert result.final_val_loss < seen[19].val_loss < math.log(vocab) - 1.0


def test_callback_sees_every_step_with_scheduled_lr_and_evals(make_config):
    config = make_config(schedule={"max_steps": 10}, eval={"interval": 4})
    seen = []
    result = train(config, callback=seen.append)
    assert [m.step for m in seen] == list(range(10))
    assert [m.lr for m in seen] == [config.schedule.lr(s) for s in range(10)]
    assert [m.loss for m in seen] == result.losses
    assert [m.tokens_seen for m in seen] == [64 * (s + 1) for s in range(10)]
    # Evaluations after steps 4 and 8 (step indices 3, 7) and at the end.
    assert [m.step for m in seen if m.val_loss is not None] == [3, 7, 9]
    assert result.final_val_loss == seen[-1].val_loss
    assert result.best_val_loss == min(m.val_loss for m in seen if m.val_loss is not None)


def test_callback_returning_true_stops_the_run(make_config):
    seen = []
    result = train(make_config(), callback=lambda m: seen.append(m.step) or m.step == 2)
    assert result.status == "stopped"
    assert seen == [0, 1, 2] and result.steps_done == 3


def test_non_finite_step_is_reported_and_ends_the_run_with_nothing_of_it_kept(make_config, tmp_path):
    # An absurd LR without clipping: the first update blows the weights up, the next forward is not finite.
    config = make_config(schedule={"max_lr": 1e20, "warmup_steps": 0}, optimizer={"grad_clip": 0.0},
                         checkpoint={"interval": 1})
    seen = []
    result = train(config, out_dir=tmp_path / "run", callback=seen.append)
    assert result.status == "nonfinite" and result.steps_done == len(seen) and len(seen) < 10
    assert not math.isfinite(seen[-1].loss) and seen[-1].val_loss is None
    assert all(math.isfinite(m.loss) for m in seen[:-1])
    # The update was applied unread (no wait for the device before it), but nothing of it was saved: the last
    # checkpoint is the finite state before it, and there is no DONE marker.
    manager = CheckpointManager(tmp_path / "run")
    saved = manager.load_latest()
    assert saved["step"] == len(seen) - 1 and all(torch.isfinite(w).all() for w in saved["model"].values())
    assert manager.done_summary() is None
    # Without checkpoints the step after the broken one was queued before it was read: it is dropped as well.
    again = []
    unsaved = train(config, callback=again.append)
    assert [m.step for m in again] == [m.step for m in seen] and unsaved.steps_done == len(seen)
    assert unsaved.losses[:-1] == result.losses[:-1] and not math.isfinite(unsaved.final_train_loss)


# --- one step late: the host reads a step while the device runs the next ----------------------------------------

# The Python reads of a tensor's values: on a GPU each waits for everything queued on the device so far.
TENSOR_READS = ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__")


@pytest.fixture
def host_reads(monkeypatch):
    """A Counter of reads of tensor values, by method name, from here to the end of the test."""
    counts = collections.Counter()
    for name in TENSOR_READS:
        def counted(self, *args, _read=getattr(torch.Tensor, name), _name=name, **kwargs):
            counts[_name] += 1
            return _read(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return counts


def test_a_step_is_queued_without_reading_a_number_and_read_in_one_go(make_config, host_reads):
    """Two micro-batches and the noise scale's first-pass norm: a step that used to read three numbers on the way,
    the first two before its update. Now it reads none; its numbers come in one read, and a run reads once a step
    and once an evaluation."""
    config = make_config(batch={"total_batch_size": 2 * 4 * 16, "micro_batch_size": 4})
    run = setup_run(config, checkpoints=None, rank=0, world_size=1)
    assert run.noise_scale is not None
    queued = train_step(run, 0)
    assert sum(host_reads.values()) == 0
    finish_step(run, queued)
    assert host_reads == {"tolist": 1}
    host_reads.clear()
    train(config)  # 10 steps; evaluations after 4, 8 and 10
    assert host_reads == {"tolist": 10, "item": 3}


def _log_queued_steps(monkeypatch, events: list) -> None:
    queue = trainer.train_step
    monkeypatch.setattr(trainer, "train_step", lambda run, step: events.append(f"queue {step}") or queue(run, step))


def test_the_callback_sees_each_step_while_the_next_one_is_queued(make_config, monkeypatch, tmp_path):
    """Step n+1 is queued before the callback sees step n, except where an evaluation or a checkpoint reads the state
    step n leaves: there step n+1 waits for them."""
    events = []
    _log_queued_steps(monkeypatch, events)

    def see(metrics):
        events.append(f"see {metrics.step}")

    train(make_config(eval={"interval": 4}), callback=see)  # evaluations after 4, 8 and 10 steps
    assert events == [f"{what} {step}" for what, step in [
        ("queue", 0), ("queue", 1), ("see", 0), ("queue", 2), ("see", 1), ("queue", 3), ("see", 2), ("see", 3),
        ("queue", 4), ("queue", 5), ("see", 4), ("queue", 6), ("see", 5), ("queue", 7), ("see", 6), ("see", 7),
        ("queue", 8), ("queue", 9), ("see", 8), ("see", 9)]]
    events.clear()
    # Checkpoints after 3, 6, 9 and 10 steps, an evaluation after 10.
    train(make_config(eval={"interval": 10}, checkpoint={"interval": 3}), out_dir=tmp_path / "run", callback=see)
    assert events == [f"{what} {step}" for what, step in [
        ("queue", 0), ("queue", 1), ("see", 0), ("queue", 2), ("see", 1), ("see", 2), ("queue", 3), ("queue", 4),
        ("see", 3), ("queue", 5), ("see", 4), ("see", 5), ("queue", 6), ("queue", 7), ("see", 6), ("queue", 8),
        ("see", 7), ("see", 8), ("queue", 9), ("see", 9)]]


def test_a_stop_drops_the_step_already_queued_and_the_run_resumes_exactly(make_config, monkeypatch, tmp_path):
    """A callback that stops the run at step 5 (a pruned trial) does so with step 6 already computed: step 6 is in
    no record (losses, tokens, checkpoints), and resuming continues the uninterrupted run bit for bit. With dropout,
    the random numbers step 6 drew must not leak into it either."""
    config = make_config(model={"dropout": 0.1}, checkpoint={"interval": 4})
    uninterrupted = train(config)
    events, seen = [], []
    _log_queued_steps(monkeypatch, events)
    stopped = train(config, out_dir=tmp_path / "run", callback=lambda m: seen.append(m.step) or m.step == 5)
    assert events == [f"queue {step}" for step in range(7)] and seen == list(range(6))
    assert stopped.status == "stopped" and stopped.steps_done == 6 and stopped.tokens_seen == 6 * 64
    assert stopped.losses == uninterrupted.losses[:6]
    assert [p.name for p in CheckpointManager(tmp_path / "run").step_files()] == ["step-00000004.pt"]
    resumed = train(config, out_dir=tmp_path / "run")
    assert resumed.losses == uninterrupted.losses[4:]  # bitwise


@pytest.fixture
def counted_compiles(monkeypatch):
    """The graphs torch.compile compiles from here on, through a backend that counts them and runs them as they are:
    graph breaks and recompiles are Dynamo's, whatever the backend, and this one takes no time."""
    graphs = []

    def counting_backend(graph, example_inputs):
        graphs.append(graph)
        return graph.forward

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=counting_backend))
    monkeypatch.setattr(trainer, "_COMPILED", {})  # compiled models of other tests are not this backend's
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield graphs
    torch._dynamo.reset()


def test_a_compiled_run_is_one_graph_compiled_once_per_shape_evaluations_included(make_config, counted_compiles):
    """No graph break, and no recompile for the evaluations (after 3, 6, 9 and 10 steps) or a second trial in the
    process; a micro-batch of another shape is a second graph."""
    for run in ({}, {"schedule": {"max_lr": 3e-3}}):
        assert train(make_config(compile=True, eval={"interval": 3}, **run)).status == "completed"
    assert len(counted_compiles) == 1
    train(make_config(compile=True, noise_scale="split"))  # each micro-batch as two halves
    assert len(counted_compiles) == 2
    assert not torch._dynamo.utils.counters["graph_break"]


# --- resume -----------------------------------------------------------------------------------------------------


def _stop_after(step):
    # A stop does not save a checkpoint of its own (a pruned trial's folder is thrown away): tests stop right
    # after an interval checkpoint so that resuming starts where the stopped run ended.
    return lambda m: m.step == step


def test_resume_is_bitwise_exact(make_config, tmp_path):
    config = make_config(schedule={"max_steps": 10}, checkpoint={"interval": 4})
    uninterrupted = train(config)

    first = train(config, out_dir=tmp_path / "run", callback=_stop_after(3))  # stops on the step-4 checkpoint
    assert first.status == "stopped" and first.losses == uninterrupted.losses[:4]
    steps = []
    resumed = train(config, out_dir=tmp_path / "run", callback=lambda m: steps.append(m.step))
    assert steps == list(range(4, 10))
    assert resumed.status == "completed"
    assert resumed.losses == uninterrupted.losses[4:]  # bitwise, not approximately
    assert resumed.final_val_loss == uninterrupted.final_val_loss
    assert resumed.best_val_loss == uninterrupted.best_val_loss


def test_resume_restores_the_random_state_dropout_draws_from(make_config, tmp_path):
    """With dropout each step's loss depends on the RNG, so a resumed run matches the uninterrupted one only if its
    checkpoint restored the RNG state: the CPU generator's here, the device's too on a GPU (the same code path)."""
    config = make_config(model={"dropout": 0.1}, schedule={"max_steps": 8}, checkpoint={"interval": 4})
    uninterrupted = train(config)
    train(config, out_dir=tmp_path / "run", callback=_stop_after(3))
    assert set(CheckpointManager(tmp_path / "run").load_latest()["rng"]) == {"cpu"}  # no CUDA generator here
    resumed = train(config, out_dir=tmp_path / "run")
    assert resumed.losses == uninterrupted.losses[4:]  # bitwise


def test_resume_with_dropout_is_bitwise_exact_when_the_resumed_run_measures_the_machine_peak(
    make_config, tmp_path, monkeypatch
):
    config = make_config(model={"dropout": 0.2}, peak_flops=None, schedule={"max_steps": 10}, checkpoint={"interval": 4})
    measure_at = {"path": tmp_path / "peak-a.json"}
    load = MachinePeak.load.__func__
    monkeypatch.setattr(MachinePeak, "load", classmethod(lambda cls, d, t: load(cls, d, t, path=measure_at["path"])))
    uninterrupted = train(config)

    train(config, out_dir=tmp_path / "run", callback=_stop_after(3))
    measure_at["path"] = tmp_path / "peak-b.json"  # another machine's first run: it measures after restoring the RNG
    resumed = train(config, out_dir=tmp_path / "run")

    assert resumed.losses == uninterrupted.losses[4:]  # bitwise: the dropout masks are the uninterrupted run's


def test_measuring_the_machine_peak_leaves_the_global_rng_alone():
    before = torch.get_rng_state()
    measure_peak_flops(torch.device("cpu"), torch.float32, budget_s=0)
    assert torch.equal(torch.get_rng_state(), before)


class _RunningMean:
    """A callback with state of its own, like the sweep's loss smoother."""

    def __init__(self):
        self.total, self.seen, self.means = 0.0, 0, []

    def __call__(self, metrics):
        self.total, self.seen = self.total + metrics.loss, self.seen + 1
        self.means.append(self.total / self.seen)

    def state_dict(self) -> dict:
        return {"total": self.total, "seen": self.seen}

    def load_state_dict(self, state: dict) -> None:
        self.total, self.seen = state["total"], state["seen"]


def test_the_callbacks_state_resumes_with_the_run(make_config, tmp_path):
    config = make_config(schedule={"max_steps": 10}, checkpoint={"interval": 4})
    whole = _RunningMean()
    train(config, callback=whole, callback_state=whole)

    first = _RunningMean()
    train(config, out_dir=tmp_path / "run", callback=lambda m: first(m) or m.step == 3, callback_state=first)
    resumed = _RunningMean()
    train(config, out_dir=tmp_path / "run", callback=resumed, callback_state=resumed)

    assert first.means + resumed.means == whole.means  # what the uninterrupted callback said, step for step


def test_with_both_step_checkpoints_torn_the_run_resumes_from_best_and_says_so(make_config, tmp_path):
    config = make_config(schedule={"max_steps": 10}, checkpoint={"interval": 2}, eval={"interval": 4})
    uninterrupted = train(config)
    train(config, out_dir=tmp_path / "run", callback=_stop_after(5))  # step-4 and step-6, best.pt at step 4
    for path in CheckpointManager(tmp_path / "run").step_files():
        path.write_bytes(path.read_bytes()[:100])

    steps = []
    with pytest.warns(UserWarning, match="resuming from best.pt at step 4"):
        resumed = train(config, out_dir=tmp_path / "run", callback=lambda m: steps.append(m.step))
    assert steps[0] == 4  # not step 0
    assert resumed.losses == uninterrupted.losses[4:]


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_unreadable_latest_checkpoint_falls_back_to_the_previous_one(make_config, tmp_path, damage):
    config = make_config(schedule={"max_steps": 10}, checkpoint={"interval": 2})
    uninterrupted = train(config)
    train(config, out_dir=tmp_path / "run", callback=_stop_after(3))  # saves step-2 and step-4
    latest = tmp_path / "run" / "step-00000004.pt"
    data = latest.read_bytes()
    latest.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"not a checkpoint" * 100)

    steps = []
    with pytest.warns(UserWarning, match="step-00000004.pt"):
        resumed = train(config, out_dir=tmp_path / "run", callback=lambda m: steps.append(m.step))
    assert steps[0] == 2  # resumed from step-2
    assert resumed.status == "completed"
    assert resumed.losses == uninterrupted.losses[2:]


def test_finished_run_returns_its_summary_without_training(make_config, tmp_path):
    config = make_config(schedule={"max_steps": 4})
    first = train(config, out_dir=tmp_path / "run")
    for path in CheckpointManager(tmp_path / "run").step_files():
        path.unlink()  # with only DONE left, any training would have to start over and call the callback

    def must_not_train(metrics):
        raise AssertionError("trained again")

    again = train(config, out_dir=tmp_path / "run", callback=must_not_train)
    assert again.status == "completed" and again.steps_done == 4
    assert again.final_val_loss == first.final_val_loss and again.best_val_loss == first.best_val_loss
    assert again.losses == []  # per-step losses belong to the call that ran them


def test_resuming_with_a_different_schedule_is_refused(make_config, tmp_path):
    train(make_config(), out_dir=tmp_path / "run", callback=_stop_after(3))
    with pytest.raises(InputError, match="different schedule"):
        train(make_config(schedule={"max_lr": 2e-2}), out_dir=tmp_path / "run")


def test_the_loss_path_is_no_part_of_what_a_checkpoint_resumes(make_config, tmp_path):
    """model.loss picks how the same loss is computed: a run stopped on one path resumes on the other, and a
    checkpoint written before the option existed still resumes; any other model change is still refused."""
    train(make_config(model={"loss": "chunked"}), out_dir=tmp_path / "run", callback=_stop_after(3))
    steps = []
    train(make_config(model={"loss": "full"}), out_dir=tmp_path / "run", callback=lambda m: steps.append(m.step))
    assert steps == list(range(4, 10))
    older = make_config().to_dict()
    del older["model"]["loss"]
    check_resumable(older, make_config(), tmp_path)
    with pytest.raises(InputError, match="different model"):
        check_resumable(older, make_config(model={"n_layer": 3}), tmp_path)


def test_finished_run_with_another_config_is_refused(make_config, tmp_path):
    """A DONE folder answers only for the config that finished there, not for any config pointed at it."""
    train(make_config(schedule={"max_steps": 4}), out_dir=tmp_path / "run")
    with pytest.raises(InputError, match="different schedule"):
        train(make_config(schedule={"max_steps": 4, "max_lr": 2e-2}), out_dir=tmp_path / "run")


def test_longer_wsd_run_branches_exactly_from_a_shorter_ones_stable_phase(make_config, tmp_path):
    """A 20-step WSD run cools down from step 16; a 10-step one from step 8, where it keeps its state. Started
    from that state, the 20-step run ends bitwise where the same run trained from step 0 ends."""
    wsd = {"shape": "wsd", "cooldown_fraction": 0.2, "warmup_steps": 2}
    short = make_config(schedule=wsd | {"max_steps": 10})
    long = make_config(schedule=wsd | {"max_steps": 20})
    from_zero = train(long)
    train(short, out_dir=tmp_path / "short")
    stable = CheckpointManager(tmp_path / "short").stable_files()
    assert list(stable) == [8]

    CheckpointManager(tmp_path / "long").adopt(stable[8], step=8)
    steps = []
    branched = train(long, out_dir=tmp_path / "long", callback=lambda m: steps.append(m.step))
    assert steps == list(range(8, 20))
    assert branched.losses == from_zero.losses[8:]  # bitwise
    assert branched.final_val_loss == from_zero.final_val_loss


def test_a_checkpoint_from_a_run_whose_lr_already_differed_is_refused(make_config, tmp_path):
    """Cosine runs of other lengths differ from their first step: no shorter one's state is a longer one's."""
    train(make_config(schedule={"max_steps": 10}), out_dir=tmp_path / "short")
    CheckpointManager(tmp_path / "long").adopt(tmp_path / "short" / "step-00000008.pt", step=8)
    with pytest.raises(InputError, match="different schedule"):
        train(make_config(schedule={"max_steps": 20}), out_dir=tmp_path / "long")


@pytest.mark.slow
def test_compiled_runs_of_one_process_share_one_compiled_model_and_start_from_their_own_weights(make_config):
    """Two compiled trials in one worker process: the second reuses the first's compiled model instead of compiling
    again, yet starts from the seed's initial weights, so both follow their uncompiled runs' losses."""
    runs = [{"schedule": {"max_steps": 3}}, {"schedule": {"max_steps": 3, "max_lr": 3e-3}}]
    compiled = [build_model(make_config(compile=True, **run), CPU)[1] for run in runs]
    assert compiled[0] is compiled[1] and compiled[0] is not build_model(make_config(), CPU)[1]
    losses = [train(make_config(compile=True, **run)).losses for run in runs]
    eager = [train(make_config(**run)).losses for run in runs]
    assert losses[0] != losses[1]
    np.testing.assert_allclose(losses, eager, rtol=1e-4)


def test_the_loops_steps_called_one_by_one_give_the_losses_train_reports(make_config, tmp_path):
    """train() is setup_run, then train_step, finish_step, evaluate and save_checkpoints per step: each a step a test
    can call."""
    config = make_config(schedule={"max_steps": 4})
    expected = train(config, out_dir=tmp_path / "whole")
    run = setup_run(config, checkpoints=None, rank=0, world_size=1)
    steps = [finish_step(run, train_step(run, step)) for step in range(4)]
    assert [s.loss for s in steps] == expected.losses  # bitwise
    assert all(s.finite for s in steps) and [s.lr for s in steps] == [config.schedule.lr(i) for i in range(4)]
    assert evaluate(run) == expected.final_val_loss
