"""The learning-rate schedule: linear warmup, then cosine decay to a floor (or a constant plateau, or WSD)."""

import math
from typing import Literal

ScheduleShape = Literal["cosine", "constant", "wsd", "exponential"]


def get_lr(
    step: int,
    *,
    max_lr: float,
    warmup_steps: int,
    decay_steps: int,
    min_lr_ratio: float = 0.1,
    shape: ScheduleShape = "cosine",
    cooldown_fraction: float = 0.2,
) -> float:
    """Learning rate for optimizer step `step` (0-based).

    decay_steps is the horizon where the cosine reaches min_lr = max_lr * min_lr_ratio; it is max_steps for a full
    run and the trial length for a sweep trial, so that every trial ends annealed. `exponential` is the LR range
    test's ramp instead: from min_lr up to max_lr at decay_steps - 1, geometrically, with no warmup. `wsd`
    (warmup-stable-decay) holds max_lr after warmup and cools down linearly to min_lr over the last cooldown_fraction
    of decay_steps: every step before the cool-down is the same whatever the horizon, so a longer run can start from
    a shorter run's state at its cool-down start.
    """
    if shape == "exponential":
        return max_lr * min_lr_ratio ** (1 - min(step / max(decay_steps - 1, 1), 1.0))
    assert 0 <= warmup_steps <= decay_steps, f"need 0 <= warmup_steps <= decay_steps, got {warmup_steps}, {decay_steps}"
    # 1) linear warmup for warmup_steps steps (the seed's formula: step 0 already trains at max_lr / warmup_steps)
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if shape == "constant":
        return max_lr
    min_lr = max_lr * min_lr_ratio
    # 2) past the decay horizon, hold min_lr
    if step >= decay_steps:
        return min_lr
    if shape == "wsd":
        start = cooldown_start(warmup_steps=warmup_steps, decay_steps=decay_steps, cooldown_fraction=cooldown_fraction)
        return max_lr if step < start else min_lr + (max_lr - min_lr) * (decay_steps - step) / (decay_steps - start)
    # 3) in between, cosine from max_lr down to min_lr
    decay_ratio = (step - warmup_steps) / (decay_steps - warmup_steps)
    assert 0 <= decay_ratio <= 1
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))  # goes 1 -> 0
    return min_lr + coeff * (max_lr - min_lr)


def cooldown_start(*, warmup_steps: int, decay_steps: int, cooldown_fraction: float) -> int:
    """The first step of a WSD schedule's cool-down (never inside the warmup)."""
    return max(warmup_steps, decay_steps - round(cooldown_fraction * decay_steps))
