"""BranchStore: which stable-phase state a WSD trial starts from, and which ones the store keeps."""

import torch

from sweep.branches import BranchStore
from train_core.checkpoint import CheckpointManager


def _wsd(make_config, steps, **schedule):
    return make_config(schedule={"shape": "wsd", "cooldown_fraction": 0.2, "warmup_steps": 2, "max_steps": steps} | schedule)


def _leave_stable_state(folder, step):
    CheckpointManager(folder).save_stable({"step": step}, step=step)


def test_store_keeps_the_furthest_state_and_hands_it_only_to_runs_that_pass_through_it(make_config, tmp_path):
    store = BranchStore(tmp_path / "branches")
    _leave_stable_state(tmp_path / "run-20", 16)
    store.put(_wsd(make_config, 20), tmp_path / "run-20")
    _leave_stable_state(tmp_path / "run-10", 8)
    store.put(_wsd(make_config, 10), tmp_path / "run-10")  # nearer than 16: not kept
    assert [p.name for p in (tmp_path / "branches").glob("*/*")] == ["stable-00000016.pt"]

    assert store.take(_wsd(make_config, 15), tmp_path / "run-15") is None  # cools down from 12, before 16
    assert store.take(_wsd(make_config, 40), tmp_path / "run-40") == 16
    adopted = CheckpointManager(tmp_path / "run-40").step_files()
    assert [p.name for p in adopted] == ["step-00000016.pt"]
    assert torch.load(adopted[0], weights_only=True) == {"step": 16}


def test_runs_of_another_lr_or_a_cosine_schedule_get_nothing(make_config, tmp_path):
    store = BranchStore(tmp_path / "branches")
    _leave_stable_state(tmp_path / "run", 8)
    store.put(_wsd(make_config, 10), tmp_path / "run")
    assert store.take(_wsd(make_config, 40, max_lr=2e-2), tmp_path / "other-lr") is None
    assert store.take(make_config(schedule={"max_steps": 40}), tmp_path / "cosine") is None
    assert store.take(_wsd(make_config, 40), tmp_path / "same") == 8
