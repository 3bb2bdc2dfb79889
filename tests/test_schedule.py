"""get_lr: linear warmup from max_lr/warmup, cosine to min_lr at the decay horizon, min_lr after it, or a constant
plateau, WSD, or the range test's ramp; the shapes come from one registry, SHAPES."""

import math

import pytest

from train_core.schedule import SHAPES, cooldown_start, get_lr, sweep_shapes

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


def test_wsd_holds_max_lr_then_cools_down_linearly_to_min_lr_at_the_horizon():
    wsd = dict(shape="wsd", cooldown_fraction=0.2)  # cool-down over steps 88..110
    assert lr(0, **wsd) == pytest.approx(MAX_LR / WARMUP)
    assert [lr(s, **wsd) for s in (WARMUP, 50, 87)] == [MAX_LR] * 3
    assert lr(88, **wsd) == pytest.approx(MAX_LR)
    assert lr(99, **wsd) == pytest.approx((MAX_LR + MIN_LR) / 2)
    assert lr(HORIZON, **wsd) == pytest.approx(MIN_LR) and lr(2 * HORIZON, **wsd) == pytest.approx(MIN_LR)


def test_wsd_runs_of_any_length_agree_until_the_shorter_ones_cool_down():
    """What lets a longer WSD run start from a shorter one's state at its cool-down start."""
    short, long = 100, 400
    start = cooldown_start(warmup_steps=WARMUP, decay_steps=short, cooldown_fraction=0.2)
    assert start == 80
    same = [lr(s, shape="wsd", decay_steps=short) == lr(s, shape="wsd", decay_steps=long) for s in range(short)]
    assert same == [s < start for s in range(short)]


def test_wsd_cool_down_never_starts_inside_the_warmup():
    assert cooldown_start(warmup_steps=30, decay_steps=32, cooldown_fraction=0.5) == 30


# --- the registry ---
# Each shape's lr written out in closed form, with get_lr's arithmetic in its order, so that equality is exact.


def warmup(step, max_lr, warmup_steps):
    return max_lr * (step + 1) / warmup_steps


def cosine(step, *, max_lr, warmup_steps, decay_steps, min_lr_ratio, cooldown_fraction):
    min_lr = max_lr * min_lr_ratio
    if step < warmup_steps:
        return warmup(step, max_lr, warmup_steps)
    if step >= decay_steps:
        return min_lr
    coeff = 0.5 * (1.0 + math.cos(math.pi * ((step - warmup_steps) / (decay_steps - warmup_steps))))
    return min_lr + coeff * (max_lr - min_lr)


def constant(step, *, max_lr, warmup_steps, decay_steps, min_lr_ratio, cooldown_fraction):
    return warmup(step, max_lr, warmup_steps) if step < warmup_steps else max_lr


def wsd(step, *, max_lr, warmup_steps, decay_steps, min_lr_ratio, cooldown_fraction):
    min_lr = max_lr * min_lr_ratio
    start = max(warmup_steps, decay_steps - round(cooldown_fraction * decay_steps))
    if step < warmup_steps:
        return warmup(step, max_lr, warmup_steps)
    if step >= decay_steps:
        return min_lr
    return max_lr if step < start else min_lr + (max_lr - min_lr) * (decay_steps - step) / (decay_steps - start)


def exponential(step, *, max_lr, warmup_steps, decay_steps, min_lr_ratio, cooldown_fraction):
    return max_lr * min_lr_ratio ** (1 - min(step / max(decay_steps - 1, 1), 1.0))


CLOSED_FORMS = {"cosine": cosine, "constant": constant, "wsd": wsd, "exponential": exponential}


def test_every_registered_shape_has_a_closed_form_here():
    assert set(SHAPES) == set(CLOSED_FORMS)


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("warmup_steps, cooldown_fraction", [(0, 0.2), (WARMUP, 0.2), (WARMUP, 0.5), (30, 1.0)])
def test_get_lr_is_its_shapes_closed_form_at_every_step(shape, warmup_steps, cooldown_fraction):
    values = dict(max_lr=MAX_LR, warmup_steps=warmup_steps, decay_steps=HORIZON, min_lr_ratio=MIN_RATIO,
                  cooldown_fraction=cooldown_fraction)
    for step in range(2 * HORIZON):
        assert get_lr(step, shape=shape, **values) == CLOSED_FORMS[shape](step, **values), step


@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
def test_every_registered_shape_has_a_one_line_description(shape):
    assert shape.description.strip() and "\n" not in shape.description


def test_sweeps_choose_among_every_shape_but_the_range_tests_ramp():
    assert sweep_shapes() == ("cosine", "constant", "wsd")


def test_only_wsd_has_a_branch_point_and_it_is_the_cool_down_start():
    assert SHAPES["wsd"].branch_point(warmup_steps=WARMUP, decay_steps=100, cooldown_fraction=0.2) == 80
    assert [name for name, shape in SHAPES.items() if shape.branch_point is not None] == ["wsd"]


def test_unknown_shape_is_refused_naming_the_registered_ones():
    with pytest.raises(ValueError, match="shape must be one of cosine, constant, wsd, exponential, got 'linear'"):
        lr(0, shape="linear")
