"""The loss-vs-LR plot shows the basin: its y-axis is set by the val losses, not by a pruned trial's train loss."""

import math

import pytest

from sweep.plots import BASIN_SPAN, LrPoint, draw_lr_plot, y_range


def point(lr, loss, *, pruned=False, anchor=False):
    return LrPoint(lr=lr, warmup=30, loss=loss, pruned=pruned, anchor=anchor)


BASIN = [point(1e-3, 3.85, anchor=True), point(3e-3, 3.70), point(6.7e-3, 3.64), point(1.3e-2, 3.68)]


def test_a_pruned_trials_train_loss_far_above_does_not_stretch_the_axis():
    """The issue's plot ran 3.6-8.7 for one early-pruned trial at 8.7; the basin is 3.64-3.85."""
    low, high = y_range([*BASIN, point(2.5e-4, 8.7, pruned=True)])
    assert 3.6 < low < 3.64 and 3.85 < high < 3.9


def test_a_val_loss_far_above_the_best_is_clipped_at_the_basin_span():
    low, high = y_range([*BASIN, point(1e-4, 6.5)])
    assert high == pytest.approx(3.64 + BASIN_SPAN + 0.12 * BASIN_SPAN)


def test_only_pruned_trials_still_give_a_range():
    low, high = y_range([point(1e-3, 6.0, pruned=True), point(2e-3, math.nan, pruned=True)])
    assert low < 6.0 < high


def test_the_plot_is_written_with_off_scale_points(tmp_path):
    path = tmp_path / "lr.png"
    draw_lr_plot([*BASIN, point(2.5e-4, 8.7, pruned=True), point(2e-2, math.nan, pruned=True)], title="t", path=path)
    assert path.stat().st_size > 10_000
