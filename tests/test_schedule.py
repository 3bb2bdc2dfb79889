"""get_lr: linear warmup from max_lr/warmup, cosine to min_lr at the decay horizon, min_lr after it, or a constant
plateau."""

import math

import pytest

from train_core.schedule import get_lr

MAX_LR, MIN_RATIO, WARMUP, HORIZON = 6e-4, 0.1, 10, 110
MIN_LR = MAX_LR * MIN_RATIO


def lr(step, **overrides):
    kwargs = dict(max_lr=MAX_LR, warmup_steps=WARMUP, decay_steps=HORIZON, min_lr_ratio=MIN_RATIO) | overrides
    return get_lr(step, **kwargs)


def test_step_zero_already_trains_at_max_lr_over_warmup():
    assert lr(0) == pytest.approx(MAX_LR / WARMUP)


def test_warmup_is_linear_and_reaches_max_lr_on_its_last_step():
    assert lr(4) == pytest.approx(MAX_LR * 5 / WARMUP)
    assert lr(WARMUP - 1) == pytest.approx(MAX_LR)


def test_cosine_starts_at_max_lr_right_after_warmup():
    assert lr(WARMUP) == pytest.approx(MAX_LR)


def test_cosine_midpoint_is_halfway_between_max_and_min():
    assert lr((WARMUP + HORIZON) // 2) == pytest.approx((MAX_LR + MIN_LR) / 2)


def test_cosine_is_decreasing_between_warmup_and_horizon():
    values = [lr(s) for s in range(WARMUP, HORIZON + 1)]
    assert all(a > b for a, b in zip(values, values[1:]))


def test_decay_horizon_and_beyond_hold_min_lr():
    assert lr(HORIZON) == pytest.approx(MIN_LR)
    assert lr(HORIZON + 1) == pytest.approx(MIN_LR)
    assert lr(10 * HORIZON) == pytest.approx(MIN_LR)


def test_no_warmup_starts_at_max_lr():
    assert lr(0, warmup_steps=0) == pytest.approx(MAX_LR)
    # quarter of the way down the cosine: min + (max - min) * (1 + cos(pi/4)) / 2
    expected = MIN_LR + (MAX_LR - MIN_LR) * 0.5 * (1 + math.cos(math.pi / 4))
    assert lr(HORIZON // 4, warmup_steps=0, decay_steps=HORIZON - HORIZON % 4) == pytest.approx(expected)


def test_constant_shape_warms_up_then_holds_max_lr_past_the_horizon():
    assert lr(0, shape="constant") == pytest.approx(MAX_LR / WARMUP)
    for step in (WARMUP, (WARMUP + HORIZON) // 2, HORIZON, 5 * HORIZON):
        assert lr(step, shape="constant") == MAX_LR


def test_min_lr_ratio_sets_the_floor():
    assert lr(HORIZON, min_lr_ratio=0.0) == 0.0
    assert lr(HORIZON, min_lr_ratio=1.0) == pytest.approx(MAX_LR)


def test_exponential_ramps_geometrically_from_min_to_max_without_warmup():
    # The LR range test's ramp: min_lr at step 0, max_lr at decay_steps - 1, the geometric mean halfway.
    last = HORIZON - 1
    assert lr(0, shape="exponential") == pytest.approx(MIN_LR)
    assert lr(50, shape="exponential", decay_steps=101) == pytest.approx(math.sqrt(MIN_LR * MAX_LR))
    assert lr(last, shape="exponential") == pytest.approx(MAX_LR)
    assert lr(last + 10, shape="exponential") == pytest.approx(MAX_LR)
