"""The command line itself: help texts, and what `--help` costs."""

import subprocess
import sys

import pytest

from sweep.cli import COMMANDS, main


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_says_what_it_does_in_its_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    usage, description, *_ = capsys.readouterr().out.split("\n\n")
    assert usage.startswith(f"usage: sweep {command}") and len(description.split()) >= 8, description


def test_horizon_neither_lists_nor_takes_a_study_name(capsys):
    with pytest.raises(SystemExit):
        main(["horizon", "--help"])
    assert "--study-name" not in capsys.readouterr().out
    assert main(["horizon", "--steps", "10,20", "--study-name", "x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--study-name" in err


def test_lr_max_help_names_where_the_default_comes_from(capsys):
    with pytest.raises(SystemExit):
        main(["lr", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "search.lr_max, anchor*16 in the default study" in out


@pytest.mark.slow
def test_help_does_not_import_torch():
    probe = ("import runpy, sys; sys.argv = ['sweep', '--help']\n"
             "try:\n    runpy.run_module('sweep', run_name='__main__')\nexcept SystemExit:\n    pass\n"
             "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False"  # torch alone takes seconds to import


def test_a_run_that_falls_back_to_best_says_so_in_one_warning_line(study, tmp_path, capsys):
    from train_core.checkpoint import DONE_FILE, CheckpointManager

    out = tmp_path / "run"
    command = ["train", "--study", str(study), "--max-steps", "8", "--out", str(out)]
    assert main(command) == 0
    (out / DONE_FILE).unlink()  # as if the process died before it finished
    for path in CheckpointManager(out).step_files():
        path.write_bytes(path.read_bytes()[:100])  # both step checkpoints torn
    capsys.readouterr()

    assert main(command) == 0

    warnings = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(warnings) == 1 and warnings[0].startswith("warning: every step checkpoint"), warnings
    assert "resuming from best.pt" in warnings[0]
