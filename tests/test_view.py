"""What a person sees and runs around a sweep: the live view on a terminal, `status`, `prepare`, the pruners by
name, and how the trainer picks its device and dtype."""

import io
import re

import optuna
import torch
from optuna.trial import TrialState
from rich.console import Console

from sweep.cli import main
from sweep.pruning import make_pruner
from sweep.view import LiveView, PlainView, SweepView, make_view
from sweep_fixtures import ANCHOR_LR, STEPS, load, run_lr
from train_core.trainer import resolve_device, resolve_dtype

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def test_the_view_is_live_on_a_terminal_plain_in_a_log_and_silent_when_quiet():
    terminal, log = Console(file=io.StringIO(), force_terminal=True), Console(file=io.StringIO())
    assert isinstance(make_view(terminal, quiet=False), LiveView)
    assert isinstance(make_view(log, quiet=False), PlainView)
    assert type(make_view(terminal, quiet=True)) is SweepView


def test_the_live_view_draws_the_progress_and_every_trial(study, monkeypatch, capsys):
    monkeypatch.setenv("FORCE_COLOR", "1")  # rich takes the captured output for a terminal: the live view draws
    assert main(["lr", "--study", str(study), "--steps", str(STEPS), "--storage", "v.log", "--trials", "3",
                 "--sampler", "random", "--pruner", "none"]) == 0
    out = ANSI.sub("", capsys.readouterr().out)
    assert "train loss" in out and "val loss" in out and "eta" in out
    assert "3/3 trials" in out  # the last frame counts every finished trial
    last_frame = out[out.rindex("3/3 trials"):]
    for trial in load("v.log").trials:
        assert f"{trial.value:.4f}" in last_frame, trial.number


def test_status_lists_the_studies_of_a_storage_and_shows_one(study, capsys):
    assert run_lr(study, "s.log", "--sampler", "random", "--pruner", "none", "--trials", "2") == 0
    capsys.readouterr()
    assert main(["status", "--storage", "s.log"]) == 0
    listing = capsys.readouterr().out
    assert f"tiny-{STEPS}" in listing
    assert main(["status", "--storage", "s.log", "--study-name", f"tiny-{STEPS}"]) == 0
    shown = capsys.readouterr().out
    assert all(f"{t.value:.4f}" in shown for t in load("s.log").trials)
    assert main(["status", "--storage", "s.log", "--study-name", "nope"]) == 2
    assert f"tiny-{STEPS}" in capsys.readouterr().err  # names the studies there are


def test_asha_prunes_a_trial_that_learns_nothing(study):
    common = ("--pruner", "asha", "--lr-min", "1e-7", "--sampler", "random")
    assert run_lr(study, "p.log", *common, "--trials", "1") == 0  # the anchor
    queued = load("p.log")
    queued.enqueue_trial({"lr": 2 * ANCHOR_LR, "warmup": 2})
    queued.enqueue_trial({"lr": 1e-7, "warmup": 0})  # learns nothing in 20 steps
    assert run_lr(study, "p.log", *common, "--trials", "3") == 0
    good_0, good_1, tiny = load("p.log").get_trials()
    assert (good_0.state, good_1.state) == (TrialState.COMPLETE, TrialState.COMPLETE)
    assert tiny.state == TrialState.PRUNED and tiny.user_attrs["prune_reason"].startswith("asha:")
    assert tiny.user_attrs["steps_done"] < STEPS


def test_a_hyperband_sweep_runs_to_its_budget(study):
    """Hyperband splits trials into brackets (three trials rarely share one, so this checks the wiring, not a prune)."""
    assert run_lr(study, "h.log", "--pruner", "hyperband", "--sampler", "random", "--trials", "4") == 0
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in load("h.log").trials)
    assert isinstance(make_pruner("hyperband", steps=STEPS, warmup_steps=2), optuna.pruners.HyperbandPruner)


def test_prepare_tokenizes_a_folder_and_refuses_a_bad_fraction(tmp_path, capsys):
    texts = tmp_path / "texts"
    texts.mkdir()
    for i in range(40):
        (texts / f"doc{i}.txt").write_text(f"document {i}: " + "the quick brown fox jumps over the lazy dog. " * 20)
    assert main(["prepare", str(texts), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    train, val = (tmp_path / "out" / "train.bin").stat().st_size, (tmp_path / "out" / "val.bin").stat().st_size
    assert train > 0 and val > 0 and f"{train // 2:,} train tokens" in out and f"{val // 2:,} val tokens" in out
    assert main(["prepare", str(texts), "--out", str(tmp_path / "bad"), "--val-fraction", "1.5"]) == 2
    assert "--val-fraction must be in (0, 1), got 1.5" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_resolve_device_and_dtype():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    cpu = torch.device("cpu")
    assert resolve_dtype("float32", cpu) == torch.float32 and resolve_dtype("bfloat16", cpu) == torch.bfloat16
    assert resolve_dtype("auto", cpu) in (torch.float32, torch.bfloat16)  # bf16 only where the CPU runs it natively
