"""CheckpointManager: atomic writes, keep-last-K pruning, weights-only loading with fallback, best.pt and DONE."""

import re

import pytest
import torch

from train_core.checkpoint import CheckpointManager
from train_core.errors import FaultError
from train_core.trainer import train


def _state(step, value=0.0):
    return {"model": {"w": torch.full((2,), value)}, "optimizer": {}, "config": {}, "step": step}


class NotAWeight:
    """An arbitrary Python object: weights-only loading must refuse to unpickle it."""


def test_save_leaves_only_the_checkpoint_behind(tmp_path):
    manager = CheckpointManager(tmp_path)
    manager.save(_state(1), step=1)
    manager.save_best(_state(1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "step-00000001.pt"]


def test_failed_save_keeps_the_old_file_and_leaves_no_temp_file(tmp_path):
    manager = CheckpointManager(tmp_path)
    manager.save_best(_state(1, value=1.0))
    with pytest.raises(Exception):
        manager.save_best(_state(2) | {"unpicklable": lambda: None})
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]
    assert manager.load_best()["step"] == 1


def test_keep_last_prunes_to_the_newest_k(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=3)
    for step in range(1, 7):
        manager.save(_state(step), step=step)
    assert [p.name for p in manager.step_files()] == ["step-00000004.pt", "step-00000005.pt", "step-00000006.pt"]
    assert manager.load_latest()["step"] == 6


def test_keep_last_below_one_is_refused(tmp_path):
    with pytest.raises(ValueError, match="keep_last must be >= 1"):
        CheckpointManager(tmp_path, keep_last=0)


def test_by_default_only_the_newest_step_checkpoint_and_the_best_are_kept(tmp_path):
    """What resume needs: a 300-step run used to keep three 41 MB checkpoints of the default study."""
    manager = CheckpointManager(tmp_path)
    for step in (100, 200, 300):
        manager.save(_state(step), step=step)
    manager.save_best(_state(200))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "step-00000300.pt"]


def test_a_newest_checkpoint_that_does_not_load_falls_back_to_the_best(tmp_path):
    manager = CheckpointManager(tmp_path)
    manager.save_best(_state(200))
    manager.save(_state(300), step=300)
    (tmp_path / "step-00000300.pt").write_bytes(b"torn by a disk fault")
    with pytest.warns(UserWarning, match=r"unreadable \(step-00000300.pt: \w+\): resuming from best.pt at step 200"):
        assert manager.load_latest()["step"] == 200


def test_load_latest_is_none_without_checkpoints(tmp_path):
    assert CheckpointManager(tmp_path / "missing").load_latest() is None


def test_arbitrary_python_objects_are_not_unpickled(tmp_path):
    manager = CheckpointManager(tmp_path)
    manager.save(_state(1, value=1.0), step=1)
    torch.save(_state(2) | {"payload": NotAWeight()}, tmp_path / "step-00000002.pt")
    with pytest.warns(UserWarning, match="step-00000002.pt is unreadable"):
        state = manager.load_latest()
    assert state["step"] == 1  # the unsafe file is skipped like a corrupt one


def test_file_without_the_required_keys_is_unreadable(tmp_path):
    torch.save({"model": {}}, tmp_path / "step-00000001.pt")
    # torch loads it, but a state without the keys resume needs is as unreadable as a torn file
    with pytest.raises(FaultError, match=r"\(step-00000001.pt: ValueError; best.pt: missing\): nothing to resume"):
        CheckpointManager(tmp_path).load_latest()  # never a silent restart from step 0


def test_with_every_step_file_unreadable_the_intact_best_is_resumed_from_with_a_warning(tmp_path):
    manager = CheckpointManager(tmp_path)
    manager.save_best(_state(3, value=3.0))
    for step in (4, 6):
        manager.save(_state(step), step=step)
        path = tmp_path / f"step-{step:08d}.pt"
        path.write_bytes(path.read_bytes()[:20])  # torn

    with pytest.warns(UserWarning, match=r"every step checkpoint in .* is unreadable .*resuming from best.pt at step 3"):
        state = manager.load_latest()
    assert state["step"] == 3 and torch.equal(state["model"]["w"], torch.full((2,), 3.0))


def test_with_every_checkpoint_unreadable_resuming_stops_with_one_line_instead_of_starting_over(tmp_path):
    manager = CheckpointManager(tmp_path)
    manager.save(_state(4), step=4)
    (tmp_path / "step-00000004.pt").write_bytes(b"torn")
    (tmp_path / "best.pt").write_bytes(b"torn too")

    with pytest.raises(FaultError) as refused:
        manager.load_latest()
    assert "\n" not in str(refused.value)
    assert re.search(r"\(step-00000004.pt: \w+; best.pt: \w+\): nothing to resume from", str(refused.value))


def test_best_round_trips_and_is_none_before_any_save(tmp_path):
    manager = CheckpointManager(tmp_path)
    assert manager.load_best() is None
    manager.save_best(_state(3, value=2.5))
    best = manager.load_best()
    assert best["step"] == 3 and torch.equal(best["model"]["w"], torch.full((2,), 2.5))


def test_done_marker_round_trips_its_summary(tmp_path):
    manager = CheckpointManager(tmp_path)
    assert manager.done_summary() is None
    manager.mark_done({"status": "completed", "final_val_loss": 1.25})
    assert manager.done_summary() == {"status": "completed", "final_val_loss": 1.25}


def test_training_keeps_the_lowest_val_loss_in_best(make_config, tmp_path):
    # Eval every 2 steps at a high LR so val loss moves; best.pt must hold the minimum and the step after it.
    config = make_config(schedule={"max_lr": 3e-2, "max_steps": 8}, eval={"interval": 2})
    evals = {}

    def record(metrics):
        if metrics.val_loss is not None:
            evals[metrics.step] = metrics.val_loss

    train(config, out_dir=tmp_path / "run", callback=record)
    assert len(evals) == 4
    best = CheckpointManager(tmp_path / "run").load_best()
    best_step = min(evals, key=evals.get)
    assert best["best_val_loss"] == evals[best_step]
    assert best["step"] == best_step + 1
