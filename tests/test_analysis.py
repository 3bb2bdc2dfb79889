"""The decision code behind `sweep horizon`, `sweep confirm` and `sweep range`, on synthetic curves whose answers
are known."""

import math

import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import create_trial

from sweep.analysis import analyse_range_test, best_lr, compare_paired, curve_noise, fit_power_law, seeds_needed, t95
from sweep.cli import main
from sweep.trust import fit_horizon
from train_core.errors import InputError


def bowl(lr: float, *, best: float, depth: float = 3.0, width: float = 0.4) -> float:
    """A loss-vs-LR curve that is a parabola in log(lr) with its bottom at `best`."""
    return depth + width * math.log(lr / best) ** 2


@pytest.mark.parametrize("best", [1.3e-3, 3e-3, 7e-3])
def test_best_lr_finds_the_bottom_between_grid_points(best):
    grid = np.geomspace(2.5e-4, 1.6e-2, 7)
    assert best_lr([(lr, bowl(lr, best=best)) for lr in grid]) == pytest.approx(best, rel=1e-6)


def test_best_lr_at_the_edge_of_the_range_is_the_edge():
    grid = np.geomspace(1e-4, 1e-3, 5)  # the bottom (1e-2) lies beyond the searched range
    assert best_lr([(lr, bowl(lr, best=1e-2)) for lr in grid]) == pytest.approx(1e-3)


def test_best_lr_ignores_diverged_points():
    points = [(1e-3, 4.0), (2e-3, 3.5), (4e-3, 3.4), (8e-3, 3.6), (1.6e-2, math.nan)]
    assert 2e-3 < best_lr(points) < 8e-3


def test_power_law_recovers_exponent_and_extrapolates():
    tokens = [1e5, 3e5, 1e6]
    lrs = [0.02 * t**-0.3 for t in tokens]
    law = fit_power_law(tokens, lrs)
    assert law.exponent == pytest.approx(-0.3)
    assert law.predict(1e7) == pytest.approx(0.02 * 1e7**-0.3)
    assert law.uncertainty_factor(1e7) == pytest.approx(1.0)  # points exactly on the line


def test_power_law_uncertainty_grows_with_scatter_and_distance():
    rng = np.random.default_rng(0)
    tokens = [1e5, 2e5, 4e5, 8e5]
    lrs = [0.02 * t**-0.3 * math.exp(rng.normal(0, 0.1)) for t in tokens]
    law = fit_power_law(tokens, lrs)
    near, far = law.uncertainty_factor(4e5), law.uncertainty_factor(1e8)
    assert 1.0 < near < far


def test_power_law_needs_two_horizons():
    with pytest.raises(ValueError, match="two or more"):
        fit_power_law([1e5, 1e5], [1e-3, 2e-3])


def test_paired_comparison_sees_a_small_consistent_gap_through_large_seed_noise():
    seed_noise = [0.3, -0.2, 0.1, -0.4, 0.25]  # shared by both settings: same seeds, same data order and init
    a = [4.0 + n for n in seed_noise]
    b = [4.02 + n + e for n, e in zip(seed_noise, [0.001, -0.001, 0.002, 0.0, -0.002])]
    c = compare_paired(a, b)
    assert c.distinguishable and c.mean_difference == pytest.approx(0.02, abs=1e-3)


def test_paired_comparison_within_noise_is_not_distinguishable():
    a = [4.00, 4.05, 3.98]
    b = [4.03, 4.01, 4.00]  # differences +0.03, -0.04, +0.02
    assert not compare_paired(a, b).distinguishable


def test_range_test_finds_steepest_descent_and_divergence():
    lrs = list(np.geomspace(1e-6, 1.0, 120))
    # Flat at tiny LRs, falling fastest around 1e-3, then blowing up from 1e-1 on.
    losses = [10.0 - 5.0 / (1 + math.exp(-3 * math.log(lr / 1e-3))) + (1e4 * (lr - 0.1) ** 2 if lr > 0.1 else 0.0)
              for lr in lrs]
    result = analyse_range_test(lrs, losses, smoothing=0.0)
    assert result.steepest_lr == pytest.approx(1e-3, rel=0.15)
    assert 0.1 < result.diverged_lr < 0.3
    low, high = result.bounds()
    assert low < result.steepest_lr < high <= result.diverged_lr


def test_range_test_stops_reading_at_the_first_nan():
    lrs = list(np.geomspace(1e-5, 1e-1, 40))
    losses = [10.0 - i * 0.1 for i in range(30)] + [math.nan] * 10
    result = analyse_range_test(lrs, losses)
    assert result.diverged_lr == pytest.approx(lrs[30])


def _sweep_study(steps: int, *, best: float, grid) -> optuna.Study:
    """An in-memory study of one horizon's grid of LRs, its losses on a bowl with the bottom at `best`."""
    study = optuna.create_study(study_name=f"synthetic-{steps}")
    space = {"lr": FloatDistribution(1e-5, 1.0, log=True), "warmup": IntDistribution(0, 100)}
    for lr in grid:
        study.add_trial(create_trial(params={"lr": lr, "warmup": 10}, distributions=space, value=bowl(lr, best=best)))
    return study


def test_horizon_fit_extrapolates_the_law_and_leaves_out_horizons_whose_bottom_is_off_the_grid():
    grid = np.geomspace(1e-3, 3.2e-2, 6)
    law = lambda steps: 0.2 * (steps * 1024) ** -0.4  # 100 steps: 0.0079; 25 steps: 0.0138; 5 steps: 0.0264
    studies = {steps: _sweep_study(steps, best=law(steps), grid=grid) for steps in (25, 50, 100, 200)}
    studies[1] = _sweep_study(1, best=0.2, grid=grid)  # its bottom lies above 3.2e-2: the lowest loss is at the top
    fit = fit_horizon(studies, tokens_per_step=1024, target_steps=800)
    assert fit.at_edge == [(1, grid[-1])]
    assert [steps for steps, _ in fit.points] == [25, 50, 100, 200]
    assert fit.exponent == pytest.approx(-0.4, abs=1e-6)
    assert fit.lr == pytest.approx(law(800), rel=1e-6)


def test_horizon_fit_with_fewer_than_two_horizons_inside_the_range_is_refused():
    grid = np.geomspace(1e-3, 3.2e-2, 6)
    studies = {10: _sweep_study(10, best=0.2, grid=grid), 20: _sweep_study(20, best=5e-3, grid=grid)}
    with pytest.raises(InputError, match="edge of the searched range.*widen"):
        fit_horizon(studies, tokens_per_step=1024, target_steps=800)


def test_curve_noise_is_the_scatter_around_a_parabola_in_log_lr():
    lrs = [1e-3 * 2**k for k in range(7)]
    smooth = [(lr, 3.6 + 0.05 * math.log2(lr / 8e-3) ** 2) for lr in lrs]
    assert curve_noise(smooth) == pytest.approx(0.0, abs=1e-9)
    jitter = [0.03, -0.03, 0.03, -0.03, 0.03, -0.03, 0.03]
    noisy = [(lr, loss + j) for (lr, loss), j in zip(smooth, jitter)]
    assert 0.02 < curve_noise(noisy) < 0.05
    assert curve_noise(smooth[:3]) is None  # a parabola through 3 points has no residual


@pytest.mark.parametrize(("gap", "sd", "needed"), [(0.2, 0.05, 3), (0.07, 0.05, 5), (0.01, 0.05, None)])
def test_seeds_needed_for_a_95_percent_interval_to_exclude_zero(gap, sd, needed):
    assert seeds_needed(gap, sd) == needed
    if needed is not None:  # one seed fewer would not do
        assert t95(needed - 2) * sd / math.sqrt(needed - 1) >= gap or needed == 2


@pytest.mark.parametrize("df, quantile", [(1, 12.706), (5, 2.571), (40, 2.021), (100, 1.984)])
def test_t95_is_students_t_at_every_degree_of_freedom(df, quantile):
    """Beyond 30 degrees of freedom too: 2.021 at 40, not the normal 1.96 a short table fell back to."""
    assert t95(df) == pytest.approx(quantile, abs=5e-4)


def test_a_range_test_that_diverges_at_once_is_a_one_line_input_error(study, capsys):
    """The loss blows up from the first steps: the range test cannot be read, and the user is told what to change."""
    code = main(["range", "--study", str(study), "--steps", "20", "--lr-start", "50", "--lr-end", "1000",
                 "--storage", "r.log"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--lr-start" in err, err
