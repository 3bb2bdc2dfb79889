"""StabilityGuard on synthetic per-step metrics: each kind of blow-up is named with its step, healthy runs never are."""

import math

import numpy as np
import pytest

from sweep.pruning import RECOVERY_STEPS, StabilityGuard, recovery_window
from train_core.trainer import StepMetrics

INITIAL = math.log(50257)  # ~10.82, an untrained GPT-2-vocab model


def metrics(step: int, loss: float, grad_norm: float = 1.0) -> StepMetrics:
    return StepMetrics(step=step, loss=loss, lr=1e-3, grad_norm=grad_norm, tokens_seen=(step + 1) * 1024,
                       tokens_per_s=1e4, ms_per_step=100.0, mfu=0.1)


def healthy_curve(steps: int, *, seed: int = 0) -> list[tuple[float, float]]:
    """(loss, grad norm) of a run that learns: loss decays from the initial value towards 3 with 2% noise; the grad
    norm rises during the first steps, then settles around 0.5 with 30% noise."""
    rng = np.random.default_rng(seed)
    out = []
    for step in range(steps):
        loss = (3 + (INITIAL - 3) * math.exp(-step / 60)) * (1 + 0.02 * rng.standard_normal())
        norm = (0.5 + 2.0 * math.exp(-step / 20)) * math.exp(0.3 * rng.standard_normal())
        out.append((loss, norm))
    return out


def first_reason(guard: StabilityGuard, curve: list[tuple[float, float]]) -> tuple[int, str] | None:
    for step, (loss, norm) in enumerate(curve):
        if (reason := guard.check(metrics(step, loss, norm))) is not None:
            return step, reason
    return None


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("warmup", [0, 30])
def test_a_healthy_run_is_never_stopped(seed, warmup):
    guard = StabilityGuard(initial_loss=INITIAL, warmup_steps=warmup)
    assert first_reason(guard, healthy_curve(500, seed=seed)) is None
    assert 2.5 < guard.smoothed_loss < 3.5


def test_a_healthy_run_that_starts_slowly_is_not_diverged():
    """Loss hovering at the initial value (a tiny LR) is slow, not diverged: that is the median pruner's call."""
    guard = StabilityGuard(initial_loss=INITIAL, warmup_steps=0)
    curve = [(INITIAL + 0.1 * math.sin(step), 1.0) for step in range(200)]
    assert first_reason(guard, curve) is None


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_loss_is_nan_at_its_step(bad):
    guard = StabilityGuard(initial_loss=INITIAL, warmup_steps=10)
    curve = healthy_curve(41) + [(bad, 1.0)]
    assert first_reason(guard, curve) == (41, "nan at step 41")


def test_non_finite_grad_norm_is_nan_even_on_the_first_step():
    guard = StabilityGuard(initial_loss=INITIAL, warmup_steps=10)
    assert guard.check(metrics(0, INITIAL, math.inf)) == "nan at step 0"


def test_loss_that_stays_above_the_start_after_warmup_is_diverged():
    guard = StabilityGuard(initial_loss=INITIAL, warmup_steps=5)
    step, reason = first_reason(guard, [(INITIAL + 2.0, 1.0)] * 40)
    assert step == 5 + guard.recovery_steps - 1  # diverged from the first step after warmup, for the whole window
    assert reason == "diverged: loss 12.82 > 11.32 for 20 steps at step 24", reason


def test_divergence_is_not_judged_during_warmup():
    guard = StabilityGuard(initial_loss=INITIAL, warmup_steps=50)
    step, reason = first_reason(guard, [(INITIAL + 2.0, 1.0)] * 100)
    assert (step, reason.split(":")[0]) == (50 + guard.recovery_steps - 1, "diverged")


def test_a_divergence_that_comes_back_is_not_stopped():
    """Above the limit for less than the window, then learning again: slow to settle, not diverged."""
    guard = StabilityGuard(initial_loss=INITIAL, warmup_steps=0)
    curve = [(INITIAL + 1.0, 1.0)] * 15 + [(INITIAL - 1.0, 1.0)] * 30 + [(INITIAL + 1.0, 1.0)] * 15
    assert first_reason(guard, curve) is None


def test_the_recovering_spike_of_the_issue_is_not_stopped():
    """lr 0.002378 on the default study: 10.54 against a trend of 5.61 at step 50 (grad norm 452), back to 5.21 ten
    steps later, and it ended better than the anchor. A spike that recovers is not instability."""
    guard = StabilityGuard(initial_loss=INITIAL, warmup_steps=30)
    curve = [(5.61, 1.0)] * 50 + [(10.54, 452.0)] + [(8.0, 50.0), (7.0, 5.0)] + [(6.0, 1.5)] * 7 + [(5.21, 1.0)] * 100
    assert first_reason(guard, curve) is None
    assert guard.smoothed_loss == pytest.approx(5.21, abs=0.01)


@pytest.mark.parametrize("last", [19, 20])
def test_a_spike_still_there_after_the_window_is_stopped_and_named(last):
    """The window is counted from the spike's first step; one step back under the margin ends the spike."""
    guard = StabilityGuard(initial_loss=INITIAL, warmup_steps=10)
    curve = [(5.0, 1.0)] * 100 + [(9.0, 1.0)] * last + [(5.0, 1.0)] * 20
    found = first_reason(guard, curve)
    if last < guard.recovery_steps + 1:
        assert found is None
    else:
        assert found == (120, "loss spike not recovered: 9.00 vs trend 5.00 at step 100, still 9.00 at step 120")


def test_a_single_spike_far_above_trend_is_skipped_not_stopped():
    guard = StabilityGuard(initial_loss=INITIAL, warmup_steps=10)
    curve = healthy_curve(200)
    curve[120] = (curve[119][0] + 5.0, curve[120][1])
    assert first_reason(guard, curve) is None


def test_spikes_are_not_judged_before_the_trend_exists():
    guard = StabilityGuard(initial_loss=INITIAL, warmup_steps=100)
    curve = [(INITIAL, 1.0)] * 5 + [(INITIAL + 4.0, 1.0)] * 30 + [(INITIAL - 0.1, 1.0)] * 20
    assert first_reason(guard, curve) is None


def test_grad_norm_1000x_its_trend_for_the_whole_window_is_grad_norm_exploded():
    guard = StabilityGuard(initial_loss=INITIAL, warmup_steps=10)
    curve = healthy_curve(200)
    for step in range(77, 200):
        curve[step] = (curve[step][0], 1000.0 * curve[76][1])
    step, reason = first_reason(guard, curve)
    assert step == 77 + guard.recovery_steps
    assert reason.startswith("grad norm exploded, not recovered: ") and " at step 77, still " in reason, reason


def test_one_grad_norm_jump_of_1000x_is_skipped_not_stopped():
    guard = StabilityGuard(initial_loss=INITIAL, warmup_steps=10)
    curve = healthy_curve(100)
    curve[77] = (curve[77][0], 1000 * curve[76][1])
    assert first_reason(guard, curve) is None


def test_smoothed_loss_is_a_debiased_average():
    guard = StabilityGuard(initial_loss=INITIAL, warmup_steps=0)
    assert math.isnan(guard.smoothed_loss)  # nothing seen yet
    guard.check(metrics(0, 8.0))
    assert guard.smoothed_loss == pytest.approx(8.0)  # no pull towards 0 from the EMA's start
    for step in range(1, 100):
        guard.check(metrics(step, 4.0))
    assert guard.smoothed_loss == pytest.approx(4.0, abs=1e-3)


def test_a_pending_spike_does_not_move_the_trend_but_a_lasting_one_becomes_it():
    """Within the window a spike is left out of the trend the next steps are judged against; after it, the loss is
    the run's new level (what a guard with only the nonfinite rule goes on reporting)."""
    guard = StabilityGuard(initial_loss=INITIAL, warmup_steps=0, rules="nonfinite")
    for step in range(20):
        guard.check(metrics(step, 5.0))
    for step in range(20, 20 + guard.recovery_steps):
        guard.check(metrics(step, 9.0))
        assert guard.smoothed_loss == pytest.approx(5.0)
    for step in range(40, 140):
        guard.check(metrics(step, 9.0))
    assert guard.smoothed_loss == pytest.approx(9.0, abs=1e-3)


def test_nonfinite_rules_stop_only_on_nan_and_report_the_same_trend():
    """The audit's sweeps keep every curve complete; what they report to the pruner is what a default sweep would."""
    curve = healthy_curve(100) + [(INITIAL + 5.0, 1000.0)] * 60 + [(math.nan, 1.0)]
    stopped_at, _ = first_reason(StabilityGuard(initial_loss=INITIAL, warmup_steps=10), curve)
    full = StabilityGuard(initial_loss=INITIAL, warmup_steps=10)
    audit = StabilityGuard(initial_loss=INITIAL, warmup_steps=10, rules="nonfinite")
    for step, (loss, norm) in enumerate(curve[:stopped_at]):
        full.check(metrics(step, loss, norm))
        audit.check(metrics(step, loss, norm))
        assert audit.smoothed_loss == full.smoothed_loss
    assert first_reason(StabilityGuard(initial_loss=INITIAL, warmup_steps=10, rules="nonfinite"), curve) == (
        160, "nan at step 160")


def test_unknown_rules_are_refused():
    with pytest.raises(ValueError, match="rules must be one of all, nonfinite, got 'some'"):
        StabilityGuard(initial_loss=INITIAL, warmup_steps=0, rules="some")


@pytest.mark.parametrize(("steps", "window"), [(10, 2), (50, 5), (300, RECOVERY_STEPS), (5000, RECOVERY_STEPS)])
def test_short_runs_get_a_shorter_window(steps, window):
    assert recovery_window(steps=steps) == window
