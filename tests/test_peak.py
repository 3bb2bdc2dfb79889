"""The machine's peak FLOP/s: measured once per machine, kept in a file, raised by faster readings; MFU never > 1."""

import json

import pytest
import torch

from train_core.peak import MachinePeak, machine_key

CPU = torch.device("cpu")


def test_the_first_load_measures_and_keeps_the_peak_the_next_reads_it(tmp_path):
    path = tmp_path / "peak.json"
    first = MachinePeak.load(CPU, torch.float32, path=path)
    assert first.flops > 1e8
    assert json.loads(path.read_text()) == {machine_key(CPU, torch.float32): first.flops}
    path.write_text(json.dumps({first.key: 1.5e15}))  # as if an earlier process had measured more
    assert MachinePeak.load(CPU, torch.float32, path=path).flops == 1.5e15


def test_mfu_is_never_above_one_and_a_faster_rate_raises_the_kept_peak(tmp_path):
    path = tmp_path / "peak.json"
    peak = MachinePeak("cpu|x|float32|2 threads", 100.0, path=path)
    assert peak.mfu(50.0) == pytest.approx(0.5)
    assert peak.mfu(120.0) == 1.0  # what a busy start-up measurement used to print as 120%
    assert peak.mfu(60.0) == pytest.approx(0.5)
    peak.save()
    assert json.loads(path.read_text()) == {"cpu|x|float32|2 threads": 120.0}


def test_saving_keeps_a_higher_peak_another_process_wrote(tmp_path):
    path = tmp_path / "peak.json"
    MachinePeak("k", 300.0, path=path).save()
    MachinePeak("k", 200.0, path=path).save()
    MachinePeak("other", 5.0, path=path).save()
    assert json.loads(path.read_text()) == {"k": 300.0, "other": 5.0}


def test_a_broken_cache_file_is_measured_over(tmp_path):
    path = tmp_path / "peak.json"
    path.write_text("{not json")
    with pytest.warns(UserWarning, match="left as it is"):  # not a table of peaks: not written over (test_targets)
        assert MachinePeak.load(CPU, torch.float32, path=path).flops > 1e8
