"""The machine's peak FLOP/s: measured once per machine and kept in a file, checked by every later read (a figure kept
from a busy moment is measured again), raised by faster readings; MFU never > 1; the output says what it is."""

import json

import pytest
import torch

from train_core import peak as peak_module
from train_core.peak import BF16_DENSE_PEAK, MachinePeak, machine_key, measure_peak_flops, published_bf16_peak
from train_core.trainer import train

CPU = torch.device("cpu")


def test_the_first_load_measures_and_keeps_the_peak_the_next_reads_it(tmp_path):
    path = tmp_path / "peak.json"
    first = MachinePeak.load(CPU, torch.float32, path=path)
    assert first.flops > 1e8
    assert "measured now" in first.describe()
    assert json.loads(path.read_text()) == {machine_key(CPU, torch.float32): first.flops}
    path.write_text(json.dumps({first.key: 1.5e15}))  # as if an earlier process had measured more
    kept = MachinePeak.load(CPU, torch.float32, path=path)
    assert kept.flops == 1.5e15  # no check beats it: a high figure stays
    assert kept.describe().startswith(f"1,500 TFLOP/s, this machine's float32 matmul peak (1024² and 2048² on "
                                      f"{torch.get_num_threads()} threads), kept in {path}; a check now read ")
    assert json.loads(path.read_text()) == {first.key: 1.5e15}


def test_a_peak_kept_from_a_busy_moment_is_measured_again_by_the_next_read(tmp_path):
    path = tmp_path / "peak.json"
    fresh = measure_peak_flops(CPU, torch.float32)
    key = machine_key(CPU, torch.float32)
    path.write_text(json.dumps({key: fresh / 10}))  # kept from a busy moment (the was a third)

    peak = MachinePeak.load(CPU, torch.float32, path=path)

    # Two readings on shared cores differ by tens of percent; one that kept the busy figure would be at a tenth.
    assert peak.flops > fresh / 2
    assert json.loads(path.read_text()) == {key: peak.flops}
    assert "measured now: a check beat the" in peak.describe()


@pytest.mark.parametrize(("check", "kept_after"), [(109.0, 100.0), (111.0, 300.0)])
def test_only_a_check_more_than_the_margin_above_the_kept_peak_replaces_it(tmp_path, monkeypatch, check, kept_after):
    path = tmp_path / "peak.json"
    path.write_text(json.dumps({machine_key(CPU, torch.float32): 100.0}))
    readings = iter([check, 300.0])  # the check, then the measurement it calls for
    monkeypatch.setattr(peak_module, "measure_peak_flops", lambda device, dtype, budget_s=1.0: next(readings))
    assert MachinePeak.load(CPU, torch.float32, path=path).flops == kept_after
    assert json.loads(path.read_text()) == {machine_key(CPU, torch.float32): kept_after}


def test_the_runs_of_one_process_share_one_check(tmp_path, monkeypatch):
    """A sweep's trials each read the peak; one check per process is enough, and each costs a fraction of a second."""
    path = tmp_path / "peak.json"
    path.write_text(json.dumps({machine_key(CPU, torch.float32): 100.0}))
    readings = []
    monkeypatch.setattr(peak_module, "measure_peak_flops",
                        lambda device, dtype, budget_s=1.0: readings.append(budget_s) or 105.0)
    assert [MachinePeak.load(CPU, torch.float32, path=path).flops for _ in range(3)] == [100.0] * 3
    assert len(readings) == 1


def test_mfu_is_never_above_one_and_a_faster_rate_raises_the_kept_peak(tmp_path):
    path = tmp_path / "peak.json"
    peak = MachinePeak("cpu|x|float32|2 threads", 100e9, source="measured now", path=path)
    assert peak.mfu(50e9) == pytest.approx(0.5)
    assert peak.describe() == "100.0 GFLOP/s, measured now"
    assert peak.mfu(120e9) == 1.0  # what a busy start-up measurement used to print as 120%
    assert peak.mfu(60e9) == pytest.approx(0.5)
    assert peak.describe() == "120.0 GFLOP/s, the fastest rate this run reached, above the peak read before it"
    peak.save()
    assert json.loads(path.read_text()) == {"cpu|x|float32|2 threads": 120e9}


def test_saving_keeps_a_higher_peak_another_process_wrote(tmp_path):
    path = tmp_path / "peak.json"
    MachinePeak("k", 300.0, path=path).save()
    MachinePeak("k", 200.0, path=path).save()
    MachinePeak("other", 5.0, path=path).save()
    assert json.loads(path.read_text()) == {"k": 300.0, "other": 5.0}


def test_the_cache_file_follows_LR_SWEEP_CACHE_at_each_read(tmp_path, monkeypatch):
    monkeypatch.setenv("LR_SWEEP_CACHE", str(tmp_path))
    MachinePeak("k", 300.0).save()
    assert json.loads((tmp_path / "peak_flops.json").read_text()) == {"k": 300.0}


def test_a_broken_cache_file_is_measured_over(tmp_path):
    path = tmp_path / "peak.json"
    path.write_text("{not json")
    with pytest.warns(UserWarning, match="left as it is"):  # not a table of peaks: not written over (test_targets)
        assert MachinePeak.load(CPU, torch.float32, path=path).flops > 1e8


def test_mfu_peaks_of_known_gpus_are_the_published_dense_bf16_ones():
    peaks = dict(BF16_DENSE_PEAK)
    assert peaks["H100"] == peaks["H200"] == 989e12
    assert published_bf16_peak("NVIDIA H100 80GB HBM3") == 989e12
    assert published_bf16_peak("NVIDIA H100 PCIe") == 756e12  # the first fragment a name contains decides
    assert published_bf16_peak("NVIDIA GeForce RTX 4090") is None  # measured like a CPU


def test_a_run_says_what_its_mfu_is_over(make_config, tmp_path, monkeypatch):
    monkeypatch.setenv("LR_SWEEP_CACHE", str(tmp_path))
    assert train(make_config(schedule={"max_steps": 2})).peak == "100.0 GFLOP/s, the config's peak_flops"
    measured = train(make_config(peak_flops=None, schedule={"max_steps": 2})).peak
    assert measured.endswith(f", this machine's float32 matmul peak (1024² and 2048² on {torch.get_num_threads()} "
                             "threads), measured now")
    assert list(json.loads((tmp_path / "peak_flops.json").read_text())) == [machine_key(CPU, torch.float32)]
