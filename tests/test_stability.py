"""StabilityGuard on synthetic per-step metrics: each kind of blow-up is named with its step, healthy runs never are."""

import math

import numpy as np
import pytest

from sweep.stability import StabilityGuard
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


def test_loss_above_the_start_after_warmup_is_diverged():
    guard = StabilityGuard(initial_loss=INITIAL, warmup_steps=5)
    step, reason = first_reason(guard, [(INITIAL + 2.0, 1.0)] * 20)
    assert step == 5  # the first step after warmup
    assert reason.startswith("diverged: loss 12.82 > 11.32 at step 5"), reason


def test_divergence_is_not_judged_during_warmup():
    guard = StabilityGuard(initial_loss=INITIAL, warmup_steps=50)
    too_high = [(INITIAL + 2.0, 1.0)] * 60
    for step, (loss, norm) in enumerate(too_high[:50]):
        assert guard.check(metrics(step, loss, norm)) is None, f"stopped in warmup at step {step}"
    assert guard.check(metrics(50, *too_high[50])).startswith("diverged")


def test_divergence_uses_the_smoothed_loss_not_one_step():
    """One step above the limit after a good run is not divergence (nor a spike, if within the spike margin)."""
    guard = StabilityGuard(initial_loss=INITIAL, warmup_steps=0)
    curve = healthy_curve(200)
    curve[150] = (INITIAL + 0.6, curve[150][1])  # ~8 nats above a trend near 3.6: a spike by default
    guard_small = StabilityGuard(initial_loss=INITIAL, warmup_steps=0, spike_margin=10.0)
    assert first_reason(guard_small, curve) is None
    assert first_reason(guard, curve)[1].startswith("loss spike")


def test_a_single_spike_far_above_trend_is_a_loss_spike():
    guard = StabilityGuard(initial_loss=INITIAL, warmup_steps=10)
    curve = healthy_curve(200)
    trend_before = 3 + (INITIAL - 3) * math.exp(-120 / 60)
    curve[120] = (trend_before + 5.0, curve[120][1])
    step, reason = first_reason(guard, curve)
    assert step == 120
    assert reason.startswith("loss spike: ") and reason.endswith(" at step 120"), reason


def test_spikes_are_not_judged_before_the_trend_exists():
    guard = StabilityGuard(initial_loss=INITIAL, warmup_steps=100)
    curve = [(INITIAL, 1.0)] * 5 + [(INITIAL + 4.0, 1.0)] + [(INITIAL - 0.1, 1.0)] * 20
    assert first_reason(guard, curve) is None


def test_grad_norm_jump_of_1000x_is_grad_norm_exploded():
    guard = StabilityGuard(initial_loss=INITIAL, warmup_steps=10)
    curve = healthy_curve(100)
    curve[77] = (curve[77][0], 1000 * curve[76][1])
    step, reason = first_reason(guard, curve)
    assert step == 77
    assert reason.startswith("grad norm exploded: ") and reason.endswith(" at step 77"), reason


def test_grad_norm_growing_10x_is_not_an_explosion():
    guard = StabilityGuard(initial_loss=INITIAL, warmup_steps=10)
    curve = healthy_curve(100)
    curve[77] = (curve[77][0], 10 * curve[76][1])
    assert first_reason(guard, curve) is None


def test_smoothed_loss_is_a_debiased_average():
    guard = StabilityGuard(initial_loss=INITIAL, warmup_steps=0)
    assert math.isnan(guard.smoothed_loss)  # nothing seen yet
    guard.check(metrics(0, 8.0))
    assert guard.smoothed_loss == pytest.approx(8.0)  # no pull towards 0 from the EMA's start
    for step in range(1, 100):
        guard.check(metrics(step, 4.0))
    assert guard.smoothed_loss == pytest.approx(4.0, abs=1e-3)


def test_a_stopped_step_does_not_move_the_trend():
    """A spike is reported, not averaged in: the trend the next steps are judged against is the one before it."""
    guard = StabilityGuard(initial_loss=INITIAL, warmup_steps=0)
    for step in range(20):
        guard.check(metrics(step, 5.0))
    assert guard.check(metrics(20, 50.0)) is not None
    assert guard.smoothed_loss == pytest.approx(5.0)
