"""The learning-rate schedule: linear warmup, then cosine decay to a floor (or a constant plateau)."""

import math
from typing import Literal

ScheduleShape = Literal["cosine", "constant", "exponential"]


def get_lr(
    step: int,
    *,
    max_lr: float,
    warmup_steps: int,
    decay_steps: int,
    min_lr_ratio: float = 0.1,
    shape: ScheduleShape = "cosine",
) -> float:
    """Learning rate for optimizer step `step` (0-based).

    decay_steps is the horizon where the cosine reaches min_lr = max_lr * min_lr_ratio; it is max_steps for a full
    run and the trial length for a sweep trial, so that every trial ends annealed. `exponential` is the LR range
    test's ramp instead: from min_lr up to max_lr at decay_steps - 1, geometrically, with no warmup.
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
    # 3) in between, cosine from max_lr down to min_lr
    decay_ratio = (step - warmup_steps) / (decay_steps - warmup_steps)
    assert 0 <= decay_ratio <= 1
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))  # goes 1 -> 0
    return min_lr + coeff * (max_lr - min_lr)
