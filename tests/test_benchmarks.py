"""The benchmarks the GPU evidence script runs (benchmarks/gpu_evidence.sh), run small on the CPU: they finish,
and print the rows they promise."""

import importlib.util
from pathlib import Path

import pytest

from sweep_fixtures import study_values, write_study, write_token_files

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_throughput_times_train_core_against_the_plain_step(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("LR_SWEEP_CACHE", str(tmp_path))  # the peak it measures is not kept for this machine's runs
    throughput = _load("throughput")
    monkeypatch.setitem(throughput.SHAPES, "tiny", {"n_layer": 1, "n_head": 1, "n_embd": 16, "block_size": 16,
                                                    "batch": 2})
    assert throughput.main(["--steps", "1", "--shapes", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "train_core" in out and "plain" in out and "failed" not in out, out
    assert "MFU over " in out and "matmul peak (1024² and 2048²" in out, out


@pytest.mark.slow
def test_compare_workers_sweeps_a_study_with_each_worker_count(tmp_path, capsys):
    workers = _load("workers")
    study = write_study(tmp_path / "tiny.yaml", study_values(write_token_files(tmp_path / "tokens")))
    assert workers.main(["--compare-workers", "1,2", "--study", str(study), "--trials", "2", "--steps", "3"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    table = [row[:2] for row in rows if len(row) == 7 and row[0] in ("1", "2")]  # workers, trials, wall s, ...
    assert table == [["1", "2"], ["2", "2"]], rows


def test_storage_reads_times_the_study_check_and_a_redis_open_against_their_baselines(capsys):
    assert _load("storage_reads").main(["--trials", "2", "--reports", "3"]) == 0
    out = capsys.readouterr().out
    assert "replaying the file (before)" in out and "the sweep's own storage" in out, out
    assert "Optuna's JournalRedisBackend" in out or "redis: skipped" in out, out
