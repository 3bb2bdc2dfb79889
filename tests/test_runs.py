"""Study names and run folders (sweep.runs): a study name is data, the runs folder is --runs-dir, nothing escapes it."""

from pathlib import Path

import pytest

from sweep.cli import main
from sweep.runs import Runs, folder_name
from sweep_fixtures import STEPS, load, run_lr

HOSTILE_NAMES = ["../escape", "/abs/path", "a" * 300, "..", ".", "", "a/../../b", "x\x00y", "tiny 20 (copy)"]


@pytest.mark.parametrize("name", ["tiny-20", "gpt2-124m-300", "Default_3.lr"])
def test_a_plain_study_name_is_its_own_folder(name):
    assert folder_name(name) == name


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=repr)
def test_any_other_name_maps_to_one_safe_folder_inside_the_runs_folder(name, tmp_path):
    folder = folder_name(name)
    assert folder not in ("", ".", "..") and not folder.startswith(".")
    assert "/" not in folder and "\\" not in folder and "\x00" not in folder
    assert len(folder) <= 64
    root = tmp_path / "runs"
    path = Runs(root).study(name)
    assert path.parent == root and path.resolve().is_relative_to(root.resolve())
    path.mkdir(parents=True)  # a name the filesystem takes


def test_different_names_never_share_a_folder():
    names = [*HOSTILE_NAMES, "../escapf", "a" * 301, "tiny 20 (copz)", "tiny-20"]
    assert len({folder_name(n) for n in names}) == len(names)


@pytest.mark.parametrize("name", ["../escape", "/abs/path", "s" * 300], ids=["dotdot", "absolute", "300-chars"])
def test_sweep_and_promote_with_a_hostile_study_name_write_only_inside_the_runs_dir(name, study, tmp_path, capsys):
    """The study keeps its real name; its plot and its promoted run's folder stay inside --runs-dir."""
    runs = tmp_path / "work" / "runs"
    code = run_lr(study, str(runs / "s.log"), "--study-name", name, "--trials", "1", "--runs-dir", str(runs))
    assert code == 0
    assert load(str(runs / "s.log"), name).study_name == name
    assert not Path("/abs").exists() and not (tmp_path / "work" / "escape").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.yaml", "work"]
    assert [p.name for p in runs.glob("*-lr.png")] == [f"{folder_name(name)}-lr.png"]
    capsys.readouterr()
    code = main(["promote", "best", "--study", str(study), "--storage", str(runs / "s.log"), "--study-name", name,
                 "--runs-dir", str(runs), "--dry-run"])
    assert code == 0
    assert str(runs / folder_name(name) / "promote-0") in capsys.readouterr().out


def test_runs_dir_holds_the_default_storage_and_every_run(study, tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    assert main(["lr", "--study", str(study), "--steps", str(STEPS), "--trials", "1", "-q",
                 "--runs-dir", str(elsewhere)]) == 0
    assert (elsewhere / "sweep.db").exists() and (elsewhere / "artifacts").is_dir()
    assert not (tmp_path / "runs").exists()
    assert main(["status", "--runs-dir", str(elsewhere)]) == 0
    assert f"tiny-{STEPS}" in capsys.readouterr().out
    assert main(["train", "--study", str(study), "--max-steps", "2", "--runs-dir", str(elsewhere)]) == 0
    assert (elsewhere / "tiny" / "train" / "DONE").exists()
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_transfer_puts_its_studies_plots_and_artifacts_in_the_runs_dir(study, tmp_path, capsys):
    runs = tmp_path / "rd"
    assert main(["transfer", "--study", str(study), "--widths", "16,32", "--steps", "10", "--grid-points", "2", "-q",
                 "--runs-dir", str(runs)]) == 0
    assert "stored in study tiny-transfer-sp" in capsys.readouterr().out
    assert (runs / "tiny-transfer-sp.png").exists() and (runs / "artifacts").is_dir() and (runs / "sweep.db").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rd", "tiny.yaml"]
