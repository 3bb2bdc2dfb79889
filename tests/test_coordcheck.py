"""--- μP --- `python -m sweep coord-check` on a tiny real-text model: the logits and block outputs keep their scale
across a 16x wider model under μP and grow under SP; the command writes its plot and table; bad widths exit 2."""

import json

import pytest

from sweep.cli import main
from sweep.coordcheck import FLAT, run_coord_check
from sweep.recipe import load_recipe
from sweep_fixtures import study_values, write_study


@pytest.fixture
def two_layer_study(study, tmp_path, data):
    values = study_values(data)
    values["model"]["n_layer"] = 2
    return write_study(tmp_path / "tiny.yaml", values)


def test_logits_and_block_outputs_are_flat_in_width_under_mup_and_grow_under_sp(two_layer_study):
    check = run_coord_check(load_recipe(two_layer_study).train, widths=[16, 64, 256], steps=5)
    assert check.activations == ["embedding", "attn.0", "mlp.0", "attn.1", "mlp.1", "logits"]
    for activation in check.activations:
        assert 1 / FLAT < check.growth("mup", activation) < FLAT, activation
        assert check.spread("mup", activation) < FLAT, activation  # at every width, not only the two ends
    assert check.growth("sp", "logits") >= FLAT
    for block_output in ("attn.0", "mlp.0", "attn.1", "mlp.1"):
        assert check.growth("sp", block_output) >= FLAT, block_output
    assert all(len(check.scales[p][w]["logits"]) == 5 for p in ("sp", "mup") for w in (16, 64, 256))


def test_coord_check_command_writes_the_plot_and_says_what_grows(two_layer_study, tmp_path, capsys):
    assert main(["coord-check", "--study", str(two_layer_study), "--widths", "16,128", "--steps", "3",
                 "--out", "cc.png"]) == 0
    out = capsys.readouterr().out
    logits = next(line for line in out.splitlines() if "logits" in line)
    assert "grows" in logits and "flat" in logits  # SP's column, then μP's
    assert (tmp_path / "cc.png").stat().st_size > 10_000
    scales = json.loads((tmp_path / "cc.json").read_text())["scales"]
    assert len(scales["mup"]["128"]["logits"]) == 3


@pytest.mark.parametrize("widths, named", [("16,33", "--widths 33 must be a multiple of model.n_head=2"),
                                           ("16", "must be two or more positive widths"),
                                           ("16,x", "must be comma-separated widths")])
def test_bad_widths_exit_2_with_one_line(two_layer_study, tmp_path, capsys, widths, named):
    assert main(["coord-check", "--study", str(two_layer_study), "--widths", widths, "--steps", "2"]) == 2
    err = capsys.readouterr().err
    assert named in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists()
