"""Early detection of unstable training runs, each with a reason a person can read.

Rank-based pruners only compare a trial with its peers; a run that blew up needs no peers to be stopped. The guard
watches one run's per-step metrics and says why it must stop:

- non-finite loss or grad norm:                                 "nan at step 41"
- after warmup, smoothed loss above the start + margin for `recovery_steps` steps in a row:
                                                                "diverged: loss 11.90 > 11.32 for 20 steps at step 120"
- a loss far above its trend that is still there `recovery_steps` later:
                                                                "loss spike not recovered: 9.80 vs trend 5.10 at step
                                                                 200, still 9.10 at step 220"
- the same for a grad norm far above its trend:                 "grad norm exploded, not recovered: ..."

One bad step is not instability: a spike that comes back within the window is skipped, as llm.c skips outlier steps,
and left out of the trends so the next steps are judged against the level before it. `rules="nonfinite"` keeps only
the first rule, for studies whose complete curves `sweep audit` replays offline; the trends are the same either way,
so the losses reported to the pruner do not depend on the rules.
"""

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # the CLI reads GUARD_RULES for its flags without importing torch
    from train_core import StepMetrics

GUARD_RULES = ("all", "nonfinite")
RECOVERY_STEPS = 20  # llm.c's spikes come back within a few steps; the default study's worst took about ten


def recovery_window(*, steps: int) -> int:
    """Steps a spike or a divergence may last in a run of `steps` steps: RECOVERY_STEPS, less in short runs (a tenth
    of the run, at least 2), which would otherwise end before anything unstable could be stopped."""
    return min(RECOVERY_STEPS, max(2, steps // 10))


@dataclass(kw_only=True)
class _Excursion:
    """A run of steps above a limit: where it started and what it looked like there."""

    step: int
    value: float
    trend: float


@dataclass(kw_only=True)
class StabilityGuard:
    initial_loss: float  # loss of an untrained model, ln(vocab_size)
    warmup_steps: int
    rules: Literal["all", "nonfinite"] = "all"
    divergence_margin: float = 0.5  # nats above the initial loss that count as diverged, once warmup is over
    spike_margin: float = 3.0  # nats above the smoothed loss that count as a spike
    grad_norm_factor: float = 100.0  # times the smoothed grad norm that count as exploding
    recovery_steps: int = RECOVERY_STEPS  # a spike or a divergence that lasts this many steps stops the run
    smoothing: float = 0.9  # EMA coefficient for the trends (about a 10-step window)
    min_steps: int = 10  # trends need this many steps before spikes are judged
    _loss_trend: float = field(default=0.0, init=False)
    _log_norm_trend: float = field(default=0.0, init=False)
    _seen: int = field(default=0, init=False)
    _loss_spike: _Excursion | None = field(default=None, init=False)
    _norm_spike: _Excursion | None = field(default=None, init=False)
    _diverged_since: int | None = field(default=None, init=False)

    def __post_init__(self):
        if self.rules not in GUARD_RULES:
            raise ValueError(f"rules must be one of {', '.join(GUARD_RULES)}, got {self.rules!r}")

    def state_dict(self) -> dict:
        """What the guard has seen, as plain values: a resumed trial's checkpoint restores it (load_state_dict), so
        that the trial reports the smoothed loss the uninterrupted trial would have reported."""
        state = {name: getattr(self, name) for name in _STATE}
        return state | {name: dataclasses.asdict(state[name]) for name in _EXCURSIONS if state[name] is not None}

    def load_state_dict(self, state: dict) -> None:
        for name in _STATE:
            value = state[name]
            setattr(self, name, _Excursion(**value) if name in _EXCURSIONS and value is not None else value)

    def check(self, metrics: "StepMetrics") -> str | None:
        """The reason to stop this run now, or None. Call once per optimizer step, in order."""
        loss, norm, step = metrics.loss, metrics.grad_norm, metrics.step
        if not (math.isfinite(loss) and math.isfinite(norm)):
            return f"nan at step {step}"
        reason = None
        loss_outlier = norm_outlier = False
        if self._seen >= self.min_steps:
            trend, norm_trend = self.smoothed_loss, math.exp(self._log_norm_trend / self._debias())
            self._loss_spike = _follow(self._loss_spike, step, loss, trend, loss > trend + self.spike_margin)
            self._norm_spike = _follow(self._norm_spike, step, norm, norm_trend, norm > self.grad_norm_factor * norm_trend)
            loss_outlier, norm_outlier = self._pending(self._loss_spike, step), self._pending(self._norm_spike, step)
            if (spike := self._unrecovered(self._loss_spike, step)) is not None:
                reason = (f"loss spike not recovered: {spike.value:.2f} vs trend {spike.trend:.2f} at step {spike.step}, "
                          f"still {loss:.2f} at step {step}")
            elif (spike := self._unrecovered(self._norm_spike, step)) is not None:
                reason = (f"grad norm exploded, not recovered: {spike.value:.1f} vs trend {spike.trend:.1f} at step "
                          f"{spike.step}, still {norm:.1f} at step {step}")
        # Outliers stay out of the trends while they may still recover; past the window they are the run's new level.
        if not loss_outlier:
            self._seen += 1
            self._loss_trend = self.smoothing * self._loss_trend + (1 - self.smoothing) * loss
        if not norm_outlier:
            self._log_norm_trend = self.smoothing * self._log_norm_trend + (1 - self.smoothing) * math.log(norm + 1e-12)
        limit = self.initial_loss + self.divergence_margin
        if step >= self.warmup_steps and self.smoothed_loss > limit:
            self._diverged_since = step if self._diverged_since is None else self._diverged_since
            if reason is None and step - self._diverged_since + 1 >= self.recovery_steps:
                reason = (f"diverged: loss {self.smoothed_loss:.2f} > {limit:.2f} for {self.recovery_steps} steps "
                          f"at step {step}")
        else:
            self._diverged_since = None
        return reason if self.rules == "all" else None

    def _pending(self, spike: _Excursion | None, step: int) -> bool:
        return spike is not None and step - spike.step < self.recovery_steps

    def _unrecovered(self, spike: _Excursion | None, step: int) -> _Excursion | None:
        return spike if spike is not None and step - spike.step >= self.recovery_steps else None

    @property
    def smoothed_loss(self) -> float:
        """Bias-corrected EMA of the train loss without pending spikes: what the sweep reports to Optuna each step."""
        return self._loss_trend / self._debias() if self._seen else math.nan

    def _debias(self) -> float:
        return 1 - self.smoothing**self._seen


_EXCURSIONS = ("_loss_spike", "_norm_spike")
_STATE = ("_loss_trend", "_log_norm_trend", "_seen", *_EXCURSIONS, "_diverged_since")


def _follow(spike: _Excursion | None, step: int, value: float, trend: float, above: bool) -> _Excursion | None:
    """The spike still open after this step: the one before, a new one, or none once the value is back."""
    if not above:
        return None
    return spike if spike is not None else _Excursion(step=step, value=value, trend=trend)
