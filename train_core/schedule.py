"""The learning-rate schedule: a linear warmup, then one of the shapes registered in SHAPES.

Adding a shape is one entry in SHAPES: its lr function, a one-line description, and whether sweeps may choose it and
where longer runs share its state. Other code asks the entry rather than comparing shape names.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class Shape:
    """One schedule shape. Its functions take the schedule's values as keywords: `lr(step, *, max_lr, warmup_steps,
    decay_steps, min_lr_ratio, cooldown_fraction)` and `branch_point(*, warmup_steps, decay_steps, cooldown_fraction)`.
    """

    name: str
    description: str  # one line for --help and plans: what the lr does after the warmup
    # How a run's plan says it, after the warmup: {floor} (the floor LR and the step it is reached at) and
    # {stable_end} (the branch point) filled in.
    plan: str = "then {floor}"
    lr: Callable[..., float]  # the lr at a step past the warmup (at every step when warmup is False)
    warmup: bool = True  # False: no warmup; lr covers every step and warmup_steps is ignored
    sweepable: bool = True  # False: not a sweep's choice (a tool's ramp, say)
    # After this many steps a run's state is that of every longer run with the same values (the horizon aside), so a
    # longer run can start from it. None: runs of other lengths differ from their first step.
    branch_point: Callable[..., int] | None = None


def cooldown_start(*, warmup_steps: int, decay_steps: int, cooldown_fraction: float) -> int:
    """The first step of a WSD schedule's cool-down (never inside the warmup)."""
    return max(warmup_steps, decay_steps - round(cooldown_fraction * decay_steps))


def _cosine(step: int, *, max_lr: float, warmup_steps: int, decay_steps: int, min_lr_ratio: float, **_) -> float:
    min_lr = max_lr * min_lr_ratio
    # 2) past the decay horizon, hold min_lr
    if step >= decay_steps:
        return min_lr
    # 3) in between, cosine from max_lr down to min_lr
    decay_ratio = (step - warmup_steps) / (decay_steps - warmup_steps)
    assert 0 <= decay_ratio <= 1
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))  # goes 1 -> 0
    return min_lr + coeff * (max_lr - min_lr)


def _constant(step: int, *, max_lr: float, **_) -> float:
    return max_lr


def _wsd(
    step: int, *, max_lr: float, warmup_steps: int, decay_steps: int, min_lr_ratio: float, cooldown_fraction: float
) -> float:
    min_lr = max_lr * min_lr_ratio
    if step >= decay_steps:
        return min_lr
    start = cooldown_start(warmup_steps=warmup_steps, decay_steps=decay_steps, cooldown_fraction=cooldown_fraction)
    return max_lr if step < start else min_lr + (max_lr - min_lr) * (decay_steps - step) / (decay_steps - start)


def _exponential(step: int, *, max_lr: float, decay_steps: int, min_lr_ratio: float, **_) -> float:
    return max_lr * min_lr_ratio ** (1 - min(step / max(decay_steps - 1, 1), 1.0))


SHAPES: dict[str, Shape] = {
    shape.name: shape
    for shape in (
        Shape(
            name="cosine",
            description="cosine decay to the floor (max_lr x min_lr_ratio) at the decay horizon, the floor after it",
            lr=_cosine,
            plan="cosine to {floor}",
        ),
        Shape(name="constant", description="flat at max_lr, past the decay horizon too", lr=_constant, plan="then flat"),
        Shape(
            name="wsd",
            description="warmup-stable-decay: flat at max_lr, then a linear cool-down to the floor over the last "
            "cooldown_fraction of the decay horizon; a longer run branches from a shorter one's cool-down start",
            lr=_wsd,
            plan="flat to step {stable_end}, then linear to {floor}",
            branch_point=cooldown_start,
        ),
        Shape(
            name="exponential",
            description="the LR range test's ramp: no warmup, geometric from the floor up to max_lr at the last step",
            lr=_exponential,
            plan="geometric up to max_lr from {floor}",
            warmup=False,
            sweepable=False,
        ),
    )
}


def sweep_shapes() -> tuple[str, ...]:
    """The names of the shapes a sweep may choose, in registration order (the first is the default)."""
    return tuple(name for name, shape in SHAPES.items() if shape.sweepable)


def get_lr(
    step: int,
    *,
    max_lr: float,
    warmup_steps: int,
    decay_steps: int,
    min_lr_ratio: float = 0.1,
    shape: str = "cosine",
    cooldown_fraction: float = 0.2,
) -> float:
    """Learning rate for optimizer step `step` (0-based) under the registered shape `shape`.

    decay_steps is the horizon where the decay reaches min_lr = max_lr * min_lr_ratio; it is max_steps for a full
    run and the trial length for a sweep trial, so that every trial ends annealed.
    """
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {', '.join(SHAPES)}, got {shape!r}")
    registered = SHAPES[shape]
    if registered.warmup:
        assert 0 <= warmup_steps <= decay_steps, (
            f"need 0 <= warmup_steps <= decay_steps, got {warmup_steps}, {decay_steps}"
        )
        # 1) linear warmup for warmup_steps steps (the seed's formula: step 0 already trains at max_lr / warmup_steps)
        if step < warmup_steps:
            return max_lr * (step + 1) / warmup_steps
    return registered.lr(
        step,
        max_lr=max_lr,
        warmup_steps=warmup_steps,
        decay_steps=decay_steps,
        min_lr_ratio=min_lr_ratio,
        cooldown_fraction=cooldown_fraction,
    )
