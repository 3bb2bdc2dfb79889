"""A wrong path destroys nothing: every command that truncates, deletes or overwrites a path recognises it first.

Each destructive place is pointed at something it did not make: it refuses with one line (exit 2) and the whole
working folder is as it was, byte for byte, with nothing new in it (no backup, no lock, no data/). Pointed at its
own, it still works.
"""

import json
import sqlite3
from pathlib import Path

import matplotlib
import optuna
import pytest

from sweep.cli import main
from sweep.plots import save_figure
from sweep_fixtures import run_lr
from train_core.errors import InputError
from train_core.locks import exclusive, this_process
from train_core.peak import MachinePeak
from train_core.targets import clear_run_folder

matplotlib.use("Agg")
STEPS = 5  # steps per trial of the sweeps here: they only need to run


def tree(folder: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder (None) under folder."""
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


def refused(capsys, code: int, *, says: str) -> None:
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert says in lines[0], lines[0]


def sqlite_file(path: Path) -> Path:
    with sqlite3.connect(path) as db:
        db.execute("create table notes (text)")
    return path


# --- the journal repair ---------------------------------------------------------------------------------------------


def test_repair_journal_refuses_the_sqlite_study_of_the_default_storage_and_leaves_it_as_it_was(tmp_path, monkeypatch,
                                                                                                 capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    optuna.create_study(study_name="s", storage="sqlite:///runs/sweep.db").enqueue_trial({"lr": 1e-3})
    capsys.readouterr()
    before = tree(tmp_path)

    code = main(["repair-journal", "runs/sweep.db"])

    refused(capsys, code, says="repair-journal runs/sweep.db is a SQLite database")
    assert tree(tmp_path) == before  # not emptied, and no backup or lock file beside it


@pytest.mark.parametrize("content, looks", [
    (b"my notes\nsecond line\n", "a text file (21 bytes)"),
    (b"\x00\x01\x02\xff garbage", "a binary file"),
    (b'{"event":"start"}\n{"event":"st', "a text file"),  # JSON lines, but not Optuna's: no op_code
], ids=["text", "binary", "other-json-lines"])
def test_repair_journal_refuses_a_file_with_no_journal_record(tmp_path, capsys, content, looks):
    (tmp_path / "notes.txt").write_bytes(content)
    before = tree(tmp_path)

    code = main(["repair-journal", str(tmp_path / "notes.txt")])

    refused(capsys, code, says=f"notes.txt is {looks}")
    assert tree(tmp_path) == before


def test_repair_journal_cuts_a_journal_whose_only_record_is_torn(tmp_path, capsys):
    torn = b'{"op_code":0,"worker_id":"ab'
    journal = tmp_path / "sweep.log"
    journal.write_bytes(torn)

    assert main(["repair-journal", str(journal)]) == 0

    assert journal.read_bytes() == b""
    assert [b.read_bytes() for b in tmp_path.glob("sweep.log.*.bak")] == [torn]


# --- the runs folder, the storage and its artifacts -----------------------------------------------------------------


def test_lr_with_a_runs_dir_that_is_a_file_exits_2_before_the_corpus_is_tokenized(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results.txt").write_text("loss 3.21\n")
    before = tree(tmp_path)

    code = main(["lr", "--steps", "10", "--runs-dir", "results.txt"])

    refused(capsys, code, says="--runs-dir results.txt is a text file (10 bytes), expected a folder")
    assert tree(tmp_path) == before  # no data/, no runs/


@pytest.mark.parametrize("storage, says", [
    ("notes.txt", "--storage notes.txt is a text file"),
    ("sqlite:///notes.txt", "notes.txt is a text file (9 bytes), not a SQLite database"),
    ("store", "--storage store is a SQLite database, not a journal file: give it as sqlite:///store"),
    ("runs", "--storage runs is a folder holding"),
    ("notes.txt/sweep.log", "the folder of --storage notes.txt/sweep.log is a text file"),
    ("typo/missing/sweep.log", "neither its folder typo/missing nor typo exists"),
    ("home/sweep.log", "artifact folder home/artifacts (beside the storage) holds notes.txt"),
], ids=["text-as-journal", "text-as-sqlite", "sqlite-as-journal", "folder", "below-a-file", "missing-folders",
        "foreign-artifact-folder"])
def test_a_storage_path_that_holds_something_else_is_refused_before_any_work(study, tmp_path, capsys, storage, says):
    (tmp_path / "notes.txt").write_text("my notes\n")
    sqlite_file(tmp_path / "store")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "keep.txt").write_text("mine")
    (tmp_path / "home" / "artifacts").mkdir(parents=True)
    (tmp_path / "home" / "artifacts" / "notes.txt").write_text("mine")
    before = tree(tmp_path)

    code = run_lr(study, storage, "--trials", "1", steps=STEPS)

    refused(capsys, code, says=says)
    assert tree(tmp_path) == before


def test_a_storage_in_a_new_folder_and_its_artifacts_are_its_own_to_continue(study, tmp_path):
    assert run_lr(study, "new/sweep.log", "--trials", "1", "--pruner", "none", steps=STEPS) == 0
    assert list((tmp_path / "new" / "artifacts").iterdir())  # a curve and the plot, named by uuid

    assert run_lr(study, "new/sweep.log", "--trials", "2", "--pruner", "none", steps=STEPS) == 0


# --- run folders: train --out, promote, a sweep's trials, checkpoint retention --------------------------------------


@pytest.mark.parametrize("make, says", [
    (lambda out: out.write_text("my results\n"), "is a text file (11 bytes), expected a folder"),
    (lambda out: (out.mkdir(), (out / "notes.txt").write_text("mine"), (out / "best.pt").write_bytes(b"my weights"),
                  (out / "step-00000001.pt").write_bytes(b"mine too")),  # retention would delete it
     "holds notes.txt, which a run does not write"),
    (lambda out: (out.mkdir(), (out / ".lock").write_text("owned by rsync\n")), "not a lock of this tool"),
], ids=["a-file", "a-folder-of-other-files", "a-lock-of-another-tool"])
def test_train_refuses_an_out_that_is_not_a_run_folder(study, tmp_path, capsys, make, says):
    out = tmp_path / "mine"
    make(out)
    before = tree(tmp_path)

    code = main(["train", "--study", str(study), "--max-steps", "2", "--out", str(out)])

    refused(capsys, code, says=says)
    assert tree(tmp_path) == before


def test_an_out_inside_a_run_folder_is_refused_and_the_run_folder_stays_its_runs(study, tmp_path, capsys):
    run = tmp_path / "run"
    train = ["train", "--study", str(study), "--max-steps", "2", "--out", str(run)]
    assert main(train) == 0
    assert main(train) == 0  # its own folder: the finished run says so
    capsys.readouterr()
    before = tree(tmp_path)

    for argv, says in [
        (["train", "--study", str(study), "--max-steps", "2", "--out", str(run / "sub")], f"is inside the run folder {run}"),
        (["prepare", str(study), "--out", str(run / "data")], f"output folder {run / 'data'} is inside the run folder"),
    ]:
        refused(capsys, main(argv), says=says)
        assert tree(tmp_path) == before


def test_promote_refuses_a_run_folder_holding_other_files_and_runs_in_its_own(study, tmp_path, capsys):
    assert run_lr(study, "sweep.log", "--trials", "1", "--pruner", "none", steps=STEPS) == 0
    run_dir = tmp_path / "runs" / f"tiny-{STEPS}" / "promote-0-2steps"
    run_dir.mkdir(parents=True)
    (run_dir / "notes.txt").write_text("mine")
    promote = ["promote", "best", "--study", str(study), "--steps", str(STEPS), "--storage", "sweep.log",
               "--max-steps", "2"]
    capsys.readouterr()
    before = tree(tmp_path)

    refused(capsys, main(promote), says=f"run folder runs/tiny-{STEPS}/promote-0-2steps holds notes.txt")
    assert tree(tmp_path) == before

    (run_dir / "notes.txt").unlink()
    assert main(promote) == 0
    assert (run_dir / "DONE").exists()


def test_a_sweep_refuses_a_study_folder_holding_other_files_before_any_work(study, tmp_path, capsys):
    trial = tmp_path / "runs" / f"tiny-{STEPS}" / "trial-0"
    trial.mkdir(parents=True)
    (trial / "notes.txt").write_text("mine")  # the sweep deletes trial-0 when its trial ends
    before = tree(tmp_path)

    code = run_lr(study, "sweep.log", "--trials", "1", steps=STEPS)

    refused(capsys, code, says=f"study folder runs/tiny-{STEPS} holds trial-0/notes.txt")
    assert tree(tmp_path) == before


def test_a_sweep_clears_the_trial_folders_an_older_study_of_its_name_left(study, tmp_path):
    trial = tmp_path / "runs" / f"tiny-{STEPS}" / "trial-0"
    trial.mkdir(parents=True)
    (trial / "step-00000003.pt").write_bytes(b"an older study's checkpoint")

    assert run_lr(study, "sweep.log", "--trials", "1", "--pruner", "none", steps=STEPS) == 0

    assert not trial.exists()  # trained from step 0 in it, then deleted with its checkpoints


def test_clearing_a_run_folder_deletes_only_what_a_run_writes(tmp_path):
    run = tmp_path / "trial-0"
    run.mkdir()
    for name in ("step-00000100.pt", "best.pt", "DONE", ".lock", "trial-0-curve.csv"):
        (run / name).write_bytes(b"x")
    (run / "notes.txt").write_text("mine")

    clear_run_folder(run)

    assert tree(tmp_path) == {"trial-0": None, "trial-0/notes.txt": b"mine"}
    (run / "notes.txt").unlink()
    clear_run_folder(run)
    assert not run.exists()


# --- the branch store -----------------------------------------------------------------------------------------------

WSD = ("--schedule", "wsd", "--warmup", "2", "--trials", "1", "--pruner", "none")


def test_a_wsd_sweep_refuses_a_branch_store_holding_other_files(study, tmp_path, capsys):
    store = tmp_path / "runs" / "tiny-branches"
    store.mkdir(parents=True)
    (store / "notes.txt").write_text("mine")
    before = tree(tmp_path)

    code = run_lr(study, "sweep.log", *WSD, steps=STEPS)

    refused(capsys, code, says="branch store runs/tiny-branches holds notes.txt")
    assert tree(tmp_path) == before


def test_a_wsd_sweep_keeps_its_stable_phase_in_its_own_branch_store(study, tmp_path):
    assert run_lr(study, "sweep.log", *WSD, steps=STEPS) == 0
    assert run_lr(study, "sweep.log", *WSD, "--study-name", "longer", steps=STEPS + 5) == 0

    stored = [p.name for p in (tmp_path / "runs" / "tiny-branches").rglob("*.pt")]
    assert stored == ["stable-00000008.pt"]  # the longer trial's state replaced the shorter one's


# --- prepare --out --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("files, says", [
    ({"notes.txt": b"mine"}, "holds notes.txt, which prepare does not write"),
    ({"train.bin": b"\x00\x01", "meta.json": b'{"vocab_size": 65}'}, "holds a meta.json that prepare did not write"),
], ids=["other-files", "another-tools-meta"])
def test_prepare_refuses_an_out_folder_it_did_not_write(tmp_path, capsys, files, says):
    (tmp_path / "input.txt").write_text("Hello world, said the text.")
    out = tmp_path / "out"
    out.mkdir()
    for name, content in files.items():
        (out / name).write_bytes(content)
    before = tree(tmp_path)

    code = main(["prepare", str(tmp_path / "input.txt"), "--out", str(out)])

    refused(capsys, code, says=says)
    assert tree(tmp_path) == before


def test_prepare_writes_over_what_an_earlier_prepare_wrote(tmp_path):
    (tmp_path / "input.txt").write_text("Hello world, said the text.")
    prepare = ["prepare", str(tmp_path / "input.txt"), "--out", str(tmp_path / "out")]
    assert main(prepare) == 0
    first = tree(tmp_path / "out")
    (tmp_path / "input.txt").write_text("Other words, and more of them.")

    assert main(prepare) == 0

    assert tree(tmp_path / "out").keys() == first.keys() and tree(tmp_path / "out") != first


# --- plots ----------------------------------------------------------------------------------------------------------


def test_a_plot_is_written_over_a_plot_only(tmp_path):
    import matplotlib.pyplot as plt

    notes = tmp_path / "notes.png"
    notes.write_text("not an image\n")
    with pytest.raises(InputError, match="notes.png is a text file .* not a plot this tool wrote"):
        save_figure(plt.figure(), notes)
    assert notes.read_text() == "not an image\n"

    plot = save_figure(plt.figure(figsize=(2, 2)), tmp_path / "plot.png")
    first = plot.read_bytes()
    save_figure(plt.figure(figsize=(3, 2)), plot)
    assert plot.read_bytes() != first


def test_a_plot_writer_killed_mid_write_leaves_no_file_the_next_one_refuses(tmp_path):
    """A sweep's workers all plot the study; one SIGKILLed inside savefig left an empty PNG, which every later
    worker then refused (exit 2). Plots are written atomically now, and an empty file holds nothing to lose."""
    import matplotlib.pyplot as plt

    torn = tmp_path / "study-lr.png"
    torn.write_bytes(b"")
    save_figure(plt.figure(figsize=(2, 2)), torn)
    assert torn.read_bytes().startswith(b"\x89PNG") and not [p for p in tmp_path.iterdir() if p != torn]


@pytest.mark.parametrize("out, make, says", [
    ("cc.png", lambda t: (t / "cc.png").write_text("my notes\n"), "--out cc.png is a text file"),
    ("cc.png", lambda t: (t / "cc.json").write_text("[1, 2]\n"), "cc.json, where its scales go, is a text file"),
    ("cc.txt", lambda t: None, "expected a .png file, got .txt"),
], ids=["plot", "scales", "suffix"])
def test_coord_check_refuses_an_out_that_is_not_its_own_before_training(study, tmp_path, capsys, out, make, says):
    make(tmp_path)
    before = tree(tmp_path)

    code = main(["coord-check", "--study", str(study), "--widths", "16,32", "--steps", "2", "--out", out])

    refused(capsys, code, says=says)
    assert tree(tmp_path) == before


def test_coord_check_writes_over_its_own_plot_and_scales(study, tmp_path):
    command = ["coord-check", "--study", str(study), "--widths", "16,32", "--out", "cc.png", "--steps"]
    assert main([*command, "2"]) == 0
    assert main([*command, "3"]) == 0
    assert json.loads((tmp_path / "cc.json").read_text())["steps"] == 3


# --- the peak cache and lock files ----------------------------------------------------------------------------------


def test_the_peak_cache_is_left_as_it_is_when_it_is_not_a_table_of_peaks(tmp_path):
    cache = tmp_path / "peak_flops.json"
    cache.write_text("my notes\n")
    with pytest.warns(UserWarning, match=f"the peak FLOP/s cache {cache} is a text file"):
        MachinePeak("cpu|x|float32|1 threads", 2e9, path=cache).save()
    assert cache.read_text() == "my notes\n"

    cache.write_text(json.dumps({"cpu|y|float32|1 threads": 1e9}))
    MachinePeak("cpu|x|float32|1 threads", 2e9, path=cache).save()
    assert json.loads(cache.read_text()) == {"cpu|x|float32|1 threads": 2e9, "cpu|y|float32|1 threads": 1e9}


def test_a_lock_file_of_another_tool_is_refused_not_truncated(tmp_path):
    lock = tmp_path / "sweep.db.lock"
    lock.write_text("owned by rsync\n")
    with pytest.raises(InputError, match="not a lock of this tool"):
        with exclusive(lock, what="storage"):
            pass
    assert lock.read_text() == "owned by rsync\n"

    lock.write_text("pid 1 on another-host\n")  # ours, left by a process that died
    with exclusive(lock, what="storage"):
        assert lock.read_text() == f"{this_process()}\n"
