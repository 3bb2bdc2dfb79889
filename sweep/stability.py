"""Early detection of unstable training runs, each with a reason a person can read.

Rank-based pruners only compare a trial with its peers; a run that blew up needs no peers to be stopped. The guard
watches one run's per-step metrics and says why it must stop:

- non-finite loss or grad norm:                       "nan at step 41"
- after warmup, smoothed loss above the start + margin: "diverged: loss 11.90 > 11.32 at step 120"
- a loss far above its recent trend:                  "loss spike: 9.80 vs trend 5.10 at step 200"
- a grad norm far above its recent trend:             "grad norm exploded: 412.0 vs trend 1.9 at step 77"
"""

import math
from dataclasses import dataclass, field

from train_core.trainer import StepMetrics


@dataclass(kw_only=True)
class StabilityGuard:
    initial_loss: float  # loss of an untrained model, ln(vocab_size)
    warmup_steps: int
    divergence_margin: float = 0.5  # nats above the initial loss that count as diverged, once warmup is over
    spike_margin: float = 3.0  # nats above the smoothed loss that count as a spike
    grad_norm_factor: float = 100.0  # times the smoothed grad norm that count as exploding
    smoothing: float = 0.9  # EMA coefficient for the trends (about a 10-step window)
    min_steps: int = 10  # trends need this many steps before spikes are judged
    _loss_trend: float = field(default=0.0, init=False)
    _log_norm_trend: float = field(default=0.0, init=False)
    _seen: int = field(default=0, init=False)

    def check(self, metrics: StepMetrics) -> str | None:
        """The reason to stop this run now, or None. Call once per optimizer step, in order."""
        loss, norm, step = metrics.loss, metrics.grad_norm, metrics.step
        if not (math.isfinite(loss) and math.isfinite(norm)):
            return f"nan at step {step}"
        if self._seen >= self.min_steps:
            trend, norm_trend = self.smoothed_loss, math.exp(self._log_norm_trend / self._debias())
            if loss > trend + self.spike_margin:
                return f"loss spike: {loss:.2f} vs trend {trend:.2f} at step {step}"
            if norm > self.grad_norm_factor * norm_trend:
                return f"grad norm exploded: {norm:.1f} vs trend {norm_trend:.1f} at step {step}"
        self._seen += 1
        self._loss_trend = self.smoothing * self._loss_trend + (1 - self.smoothing) * loss
        self._log_norm_trend = self.smoothing * self._log_norm_trend + (1 - self.smoothing) * math.log(norm + 1e-12)
        limit = self.initial_loss + self.divergence_margin
        if step >= self.warmup_steps and self.smoothed_loss > limit:
            return f"diverged: loss {self.smoothed_loss:.2f} > {limit:.2f} at step {step}"
        return None

    @property
    def smoothed_loss(self) -> float:
        """Bias-corrected EMA of the train loss: what the sweep reports to Optuna each step."""
        return self._loss_trend / self._debias() if self._seen else math.nan

    def _debias(self) -> float:
        return 1 - self.smoothing**self._seen
