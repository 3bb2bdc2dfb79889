"""`sweep batch` and `promote --batch-tokens` on the tiny study (128 tokens a step: one micro-batch of 8 x 16): one grid
study per batch size for the same tokens per trial, each batch's best LR, loss and noise scale, the fit stored with
its plot, and a promote at another batch taking its LR from the fit (or the square-root rule, said in a warning)."""

import math

import pytest

from sweep.batch import BatchFit
from sweep.cli import main
from sweep.trust import CurveBottom
from sweep_fixtures import load, study_values, write_study, write_token_files

# 7 LRs x2 apart, the anchor's 1e-2 among them, around this model's bottom; one warmup (5), no pruning: whole curves.
# Above 2e-2 the tiny model's 20-step curves are jagged and their lowest point moves with the CPU's rounding: 5e-3..8e-2
# without warmup kept both batches' bottoms inside in fp32 on AVX2 but not in bf16 on AVX-512 (128 tokens: 8e-2, the
# edge: no fit); with 5 steps of warmup and 0.16 at the top, both were inside in bf16 and in fp32 on AVX-512.
GRID = ["--steps", "20", "--grid-points", "7", "--lr-min", "2.5e-3", "--lr-max", "0.16", "--warmup", "5", "-q"]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """The tiny study swept at 128 and 256 tokens a step, 20 and 10 steps, in a journal."""
    folder = tmp_path_factory.mktemp("batch")
    study = write_study(folder / "tiny.yaml", study_values(write_token_files(folder / "tokens")))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        code = main(["batch", "--study", str(study), "--batch-tokens", "128,256", "--storage", "b.log", *GRID])
    return code, folder, study


def test_batch_sweeps_each_batch_for_the_same_tokens_and_stores_the_fit(swept):
    code, folder, _ = swept
    assert code == 0
    steps = {}
    for tokens, n in ((128, 20), (256, 10)):
        study = load(str(folder / "b.log"), f"tiny-b{tokens}-{n}")
        steps[tokens] = study.user_attrs["search_space"]["steps"]
        assert all(t.user_attrs["tokens_seen"] == 20 * 128 for t in study.get_trials() if t.state.name == "COMPLETE")
    assert steps == {128: 20, 256: 10}
    fit = load(str(folder / "b.log"), "tiny-batch").user_attrs
    assert fit["batch_tokens"] == [128, 256] and fit["trial_tokens"] == 2560
    assert set(fit["best_lr"]) == {"128", "256"} and all(lr > 0 for lr in fit["best_lr"].values())
    # One micro-step measures no noise scale; two do.
    assert fit["noise_scale_tokens"]["128"] is None and fit["noise_scale_tokens"]["256"] > 0
    assert fit["critical_batch"] in (128, 256)
    assert (folder / "runs" / "tiny-batch.png").read_bytes()[:4] == b"\x89PNG"


def test_the_critical_batch_is_the_largest_within_the_band_of_the_lowest_loss():
    def fit(losses: dict[int, float]) -> BatchFit:
        bottom = CurveBottom(lr=1e-3, at_edge=False, warmup=0, curve=[(1e-3, 3.0)])
        return BatchFit(trial_tokens=8192, bottoms={b: bottom for b in losses}, best_loss=losses,
                        noise_scale={b: None for b in losses}, law=None, band=0.05)

    assert fit({1024: 3.50, 2048: 3.49, 4096: 3.52, 8192: 3.70}).critical_batch() == 4096  # doubling paid to 4096
    assert fit({1024: 3.50, 2048: 3.60, 4096: 3.80, 8192: 4.00}).critical_batch() == 1024  # never paid


@pytest.mark.parametrize("flags, says", [
    (["--batch-tokens", "100,256"], "--batch-tokens 100 must be a positive multiple of micro_batch_size x block_size"),
    (["--batch-tokens", "128"], "must be two or more positive batch sizes"),
    (["--batch-tokens", "0,128"], "must be two or more positive batch sizes"),
    (["--batch-tokens", "128,384", "--steps", "20"], "are not a whole number of 384-token steps"),
], ids=["not-a-multiple", "one-batch", "zero", "steps-do-not-divide"])
def test_bad_batch_sizes_exit_2_in_one_line_and_write_nothing(flags, says, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    study = write_study(tmp_path / "tiny.yaml", study_values(write_token_files(tmp_path / "tokens")))
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["batch", "--study", str(study), "--storage", "b.log", *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_promote_at_another_batch_moves_the_lr_along_the_fit_or_the_square_root_rule(swept, capsys):
    _, folder, study = swept
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        promote = ["promote", "best", "--study", str(study), "--steps", "20", "--storage", "b.log", "--study-name",
                   "tiny-b128-20", "--batch-tokens", "512", "--dry-run"]
        capsys.readouterr()
        assert main(promote) == 0
        fitted = capsys.readouterr()
        said = " ".join(fitted.out.split())  # rich wraps long lines
        assert "the fit `sweep batch` stored" in said and "warning" not in fitted.err
        assert "batch 512 tokens a step instead of the recipe's 128: 25 steps" in said  # the full run's 100 steps' tokens
        exponent = load(str(folder / "b.log"), "tiny-batch").user_attrs["exponent"]
        best = load(str(folder / "b.log"), "tiny-b128-20").best_trial.params["lr"]
        assert math.isfinite(exponent) and f"peak lr {best * 4**exponent:.3g}" in said  # 512 = 4 x the swept 128

        assert main([*promote[:7], "other.log", *promote[8:]]) == 2  # no such study in another storage
        write_study(folder / "other.yaml", study_values(write_token_files(folder / "tokens2")) | {"name": "other"})
        assert main(["lr", "--study", str(folder / "other.yaml"), "--steps", "20", "--storage", "o.log", "--trials", "1",
                     "-q"]) == 0
        capsys.readouterr()
        assert main(["promote", "best", "--study", str(folder / "other.yaml"), "--steps", "20", "--storage", "o.log",
                     "--batch-tokens", "512", "--dry-run"]) == 0
        guessed = capsys.readouterr()
    assert "(512/128)^0.5, the square-root rule" in " ".join(guessed.out.split())
    warnings = [line for line in guessed.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "no batch fit for other" in warnings[0], guessed.err


def test_a_batch_sweep_of_a_model_that_cannot_fit_is_refused_before_anything_trains(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    values = study_values(write_token_files(tmp_path / "tokens"))
    values["model"]["n_embd"] = 10_000_000
    study = write_study(tmp_path / "huge.yaml", values)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["batch", "--study", str(study), "--storage", "b.log", "--batch-tokens", "128,256"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "n_embd=10000000" in err and "cannot fit" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
