"""The benchmarks the GPU evidence script runs (benchmarks/gpu_evidence.sh), run small on the CPU: they finish,
and print the rows they promise."""

import functools
import importlib.util
import re
from pathlib import Path

import pytest
import torch

from train_core import GPT, trainer

from sweep_fixtures import merge, study_values, write_study, write_token_files

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY_SHAPE = {"n_layer": 1, "n_head": 1, "n_embd": 16, "block_size": 16, "batch": 2}


@pytest.mark.slow
def test_throughput_times_train_core_against_the_plain_step(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("LR_SWEEP_CACHE", str(tmp_path))  # the peak it measures is not kept for this machine's runs
    throughput = _load("throughput")
    monkeypatch.setitem(throughput.SHAPES, "tiny", TINY_SHAPE)
    assert throughput.main(["--steps", "1", "--shapes", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "train_core" in out and "plain" in out and "failed" not in out, out
    assert "MFU over " in out and "matmul peak (1024² and 2048²" in out, out
    assert "compile s" not in out and "of matmul" not in out, out  # eager on a CPU: the columns it had


@pytest.mark.slow
def test_throughput_compiled_rows_say_their_compile_seconds_and_graph_breaks(monkeypatch, capsys, tmp_path):
    """Through Dynamo's eager backend (what Dynamo traces and where it breaks, without Inductor's code generation,
    which takes minutes on 2 busy cores): no break in either step; a break put into the model shows in both."""
    monkeypatch.setenv("LR_SWEEP_CACHE", str(tmp_path))
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    throughput = _load("throughput")
    monkeypatch.setitem(throughput.SHAPES, "tiny", TINY_SHAPE)

    def compiled_rows() -> dict[str, tuple[float, int]]:
        """(compile s, graph breaks) of each compiled loop, from the lines printed as each loop finishes."""
        monkeypatch.setattr(trainer, "_COMPILED", {})  # train_core's compiled model of the run before: compile anew
        torch._dynamo.reset()
        assert throughput.main(["--steps", "1", "--shapes", "tiny", "--compile"]) == 0
        out = capsys.readouterr().out
        assert "compile s" in out and "graph breaks" in out and "failed" not in out, out  # the table's columns
        found = re.findall(r"(train_core|plain) compiled: .*, compile s (-?[\d.]+), graph breaks (\d+);", out)
        return {loop: (float(seconds), int(breaks)) for loop, seconds, breaks in found}

    assert {loop: breaks for loop, (_, breaks) in compiled_rows().items()} == {"train_core": 0, "plain": 0}

    def hidden_states_with_a_break(self, idx):
        torch._dynamo.graph_break()
        return unbroken(self, idx)

    unbroken = GPT.hidden_states
    monkeypatch.setattr(GPT, "hidden_states", hidden_states_with_a_break)
    broken = compiled_rows()
    assert set(broken) == {"train_core", "plain"} and all(breaks >= 1 for _, breaks in broken.values()), broken
    torch._dynamo.reset()


@pytest.mark.slow
def test_compare_workers_sweeps_a_study_with_each_worker_count_then_each_stack(tmp_path, capsys):
    """--workers 1 is --stack 1: swept once, the baseline of every other row."""
    workers = _load("workers")
    study = write_study(tmp_path / "tiny.yaml", study_values(write_token_files(tmp_path / "tokens")))
    assert workers.main(["--compare-workers", "1,2", "--compare-stacks", "1,2", "--study", str(study), "--trials", "2",
                         "--steps", "3"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    table = [row for row in rows if len(row) == 8 and row[0] in ("1", "2")]  # workers, stack, trials, wall s, ...
    assert [row[:3] for row in table] == [["1", "1", "2"], ["2", "1", "2"], ["1", "2", "2"]], rows
    assert table[0][5] == table[0][7] == "1.00x", rows


def test_storage_reads_times_the_study_check_and_a_redis_open_against_their_baselines(capsys):
    assert _load("storage_reads").main(["--trials", "2", "--reports", "3"]) == 0
    out = capsys.readouterr().out
    assert "replaying the file (before)" in out and "the sweep's own storage" in out, out
    assert "Optuna's JournalRedisBackend" in out or "redis: skipped" in out, out


def test_chunked_loss_times_each_chunk_size_against_the_full_logits_and_marks_the_default(capsys):
    assert _load("chunked_loss").main(["--widths", "16,200", "--rows", "64", "--reps", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("C=")]
    assert len(rows) == (4 if trainer.resolve_dtype("auto", torch.device("cpu")) == torch.bfloat16 else 2)
    for row in rows:  # 128 rows a chunk up to width 128, then 512
        assert re.findall(r"(\d+)\*: [\d,]+ \(x\d+\.\d\d\)", row) == (["128"] if row.startswith("C=16 ") else ["512"])
        assert re.match(r"C=\d+ +(float32|bfloat16) +full [\d,]+ ", row)


@pytest.mark.slow
def test_noise_scale_compares_each_recipe_with_its_baseline_and_times_the_read(tmp_path, capsys):
    values = merge(study_values(write_token_files(tmp_path / "tokens")), {"dtype": "float32"})
    study = write_study(tmp_path / "tiny.yaml", values)  # one micro-step of 8 sequences: split halves it, or 2 x 4
    assert _load("noise_scale").main(["--steps", "1", "--study", str(study)]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines()]
    table = [(" ".join(row[:3]), " ".join(row[4:7]))  # (recipe, baseline) of each row of the final table
             for row in rows if len(row) == 9 and row[1] in ("micro-step,", "micro-steps,")]
    assert table == [("1 micro-step, split", "1 micro-step, off"), ("2 micro-steps, off", "1 micro-step, off"),
                     ("2 micro-steps, on", "2 micro-steps, off")], out
    assert "the read alone" in out, out


@pytest.mark.slow
def test_predict_composes_horizon_and_width_and_checks_it_against_the_targets_own_sweep(tmp_path, monkeypatch, capsys):
    import json

    monkeypatch.chdir(tmp_path)
    values = study_values(write_token_files(tmp_path / "tokens"))
    values["model"] |= {"parametrization": "mup"}
    study = write_study(tmp_path / "tiny.yaml", values)
    predict = _load("predict")
    assert predict.main(["--study", str(study), "--proxy-steps", "10,20", "--horizon-factor", "2", "--target-width", "32",
                         "--lr-min", "5e-3", "--lr-max", "8e-1", "--grid-points", "5", "--warmup", "0", "--seeds", "2",
                         "--out", str(tmp_path / "out")]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    prediction, target, band = results["prediction"], results["target"], results["noise_band"]
    assert prediction["steps"] == 40 and prediction["width"] == 32 and "μP" in prediction["reason"]
    assert target["predicted_over_best"] == prediction["lr"] / target["best_lr"]
    assert len(band["losses_at_predicted"]) == len(band["losses_at_best"]) == 2
    assert "predicted_over_best" in capsys.readouterr().out
