"""Decisions from sweep results, as pure functions: where the loss-vs-LR curve bottoms out, how the best LR moves
with the training horizon, whether two settings differ by more than seed noise, and what an LR range test says."""

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from train_core import InputError


def t95(df: int) -> float:
    """The two-sided 95% quantile of Student's t with `df` degrees of freedom (inf without any)."""
    if df < 1:
        return math.inf
    return float(stats.t.ppf(0.975, df))


def best_lr(points: list[tuple[float, float]]) -> float:
    """The LR at the bottom of a loss-vs-LR curve given as (lr, loss) points.

    A parabola in log(lr) through the lowest point and up to two neighbours on each side; its vertex when the
    parabola opens upwards and the vertex lies inside those points, else the lowest point itself (a minimum at the
    edge of the searched range, where the curve has not turned yet).
    """
    finite = sorted((lr, loss) for lr, loss in points if math.isfinite(loss))
    if not finite:
        raise InputError("no trial reached a finite loss: nothing to find the best LR from (lower --lr-max)")
    i = min(range(len(finite)), key=lambda k: finite[k][1])
    window = finite[max(0, i - 2) : i + 3]
    if len(window) < 3:
        return finite[i][0]
    x = np.log([lr for lr, _ in window])
    y = np.array([loss for _, loss in window])
    a, b, _ = np.polyfit(x, y, 2)
    if a <= 0:
        return finite[i][0]
    vertex = -b / (2 * a)
    return float(math.exp(vertex)) if x.min() <= vertex <= x.max() else finite[i][0]


def curve_noise(points: list[tuple[float, float]]) -> float | None:
    """The scatter of a sweep's final losses around its loss-vs-LR curve: the residual sd of a parabola in log(lr)
    through the lowest point and up to three neighbours on each side. A misfit of the parabola counts as noise, so
    this errs high. None with fewer than 4 points (a parabola through 3 has no residual)."""
    finite = sorted((lr, loss) for lr, loss in points if math.isfinite(loss))
    if len(finite) < 4:
        return None
    i = min(range(len(finite)), key=lambda k: finite[k][1])
    window = finite[max(0, i - 3) : i + 4]
    if len(window) < 4:
        return None
    x, y = np.log([lr for lr, _ in window]), np.array([loss for _, loss in window])
    residuals = y - np.polyval(np.polyfit(x, y, 2), x)
    return float(math.sqrt((residuals**2).sum() / (len(window) - 3)))


def seeds_needed(gap: float, sd_difference: float, *, most: int = 50) -> int | None:
    """Paired seeds for the 95% interval of a mean difference to exclude zero, when the true difference is `gap` and
    one seed's difference has sd `sd_difference`: the smallest n >= 2 with t95(n-1) * sd / sqrt(n) < |gap|. None when
    more than `most` would be needed (as good as equal)."""
    for n in range(2, most + 1):
        if t95(n - 1) * sd_difference / math.sqrt(n) < abs(gap):
            return n
    return None


@dataclass(frozen=True)
class PowerLaw:
    """lr = coefficient * tokens ** exponent, fitted in log-log space."""

    coefficient: float
    exponent: float
    residual_sd: float  # of log(lr) around the line; 0 with only two points
    n: int
    mean_log_tokens: float
    sxx: float

    def predict(self, tokens: float) -> float:
        return self.coefficient * tokens**self.exponent

    @property
    def exponent_standard_error(self) -> float:
        """One standard error of the fitted exponent (the slope in log-log); nan with only two points."""
        return self.residual_sd / math.sqrt(self.sxx) if self.n > 2 else math.nan

    def describe(self, variable: str) -> str:
        """'best lr ∝ width^0.512 ± 0.030 (one standard error)': the law in words, `variable` its x."""
        se = self.exponent_standard_error
        error = f" ± {se:.3f} (one standard error)" if math.isfinite(se) else f" ({self.n} points: no standard error)"
        return f"best lr ∝ {variable}^{self.exponent:.3f}{error}"

    def uncertainty_factor(self, tokens: float) -> float:
        """One standard error of the prediction at `tokens`, as a multiplicative factor (lr x/÷ factor)."""
        if self.n <= 2:
            return math.nan
        x = math.log(tokens)
        se = self.residual_sd * math.sqrt(1 + 1 / self.n + (x - self.mean_log_tokens) ** 2 / self.sxx)
        return math.exp(se)


def fit_power_law(tokens: list[float], lrs: list[float]) -> PowerLaw:
    """Least squares of log(lr) on log(tokens); needs at least two distinct horizons."""
    if len(set(tokens)) < 2:
        raise ValueError("a power law needs best LRs at two or more horizons")
    x, y = np.log(tokens), np.log(lrs)
    slope, intercept = np.polyfit(x, y, 1)
    residuals = y - (intercept + slope * x)
    dof = len(x) - 2
    return PowerLaw(
        coefficient=float(math.exp(intercept)),
        exponent=float(slope),
        residual_sd=float(math.sqrt((residuals**2).sum() / dof)) if dof > 0 else 0.0,
        n=len(x),
        mean_log_tokens=float(x.mean()),
        sxx=float(((x - x.mean()) ** 2).sum()),
    )


@dataclass(frozen=True)
class Comparison:
    """Paired comparison of two settings over the same seeds: b - a per seed."""

    mean_difference: float  # positive: a is better (lower loss)
    half_width: float  # of the 95% confidence interval of the mean difference
    seeds: int

    @property
    def distinguishable(self) -> bool:
        return self.mean_difference - self.half_width > 0 or self.mean_difference + self.half_width < 0


def compare_paired(a: list[float], b: list[float]) -> Comparison:
    """Seed i of a and b shared data order and init, so their difference cancels most seed noise."""
    if len(a) != len(b) or not a:
        raise ValueError("paired comparison needs the same seeds for both settings")
    d = np.array(b) - np.array(a)
    half = t95(len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d)) if len(d) > 1 else math.inf
    return Comparison(mean_difference=float(d.mean()), half_width=float(half), seeds=len(d))


@dataclass(frozen=True)
class RangeTestResult:
    steepest_lr: float  # where the smoothed loss falls fastest per unit of log(lr)
    diverged_lr: float | None  # where it blew up (None: it never did within the range)
    min_loss_lr: float  # where the smoothed loss was lowest

    def bounds(self) -> tuple[float, float]:
        """Search bounds for a sweep: from a quarter of the steepest LR to half of where training diverged (or the
        lowest-loss LR when it never did)."""
        top = self.diverged_lr / 2 if self.diverged_lr is not None else self.min_loss_lr
        return self.steepest_lr / 4, max(top, self.steepest_lr * 2)


RANGE_TEST_BLOWUP = 2.0  # a raw loss this many times the lowest so far: the range test has diverged


def range_test_diverged(loss: float, lowest: float) -> bool:
    return not math.isfinite(loss) or loss > RANGE_TEST_BLOWUP * lowest


def analyse_range_test(lrs: list[float], losses: list[float], *, smoothing: float = 0.9, blowup: float = 1.5) -> RangeTestResult:
    """Read an LR range test (Smith 2017; fastai's LR finder): losses of one run whose LR grows geometrically.

    Training diverged at the first step whose loss is non-finite or RANGE_TEST_BLOWUP times the lowest raw loss so
    far, or whose smoothed loss exceeds `blowup` times its lowest so far.
    """
    smoothed, ema, best, lowest = [], 0.0, math.inf, math.inf
    diverged_at = None
    for i, loss in enumerate(losses):
        if range_test_diverged(loss, lowest):
            diverged_at = i
            break
        lowest = min(lowest, loss)
        ema = smoothing * ema + (1 - smoothing) * loss
        value = ema / (1 - smoothing ** (i + 1))
        smoothed.append(value)
        best = min(best, value)
        if value > blowup * best:
            diverged_at = i
            break
    usable = len(smoothed) if diverged_at is None else diverged_at
    if usable < 3:
        raise InputError("the LR range test diverged before it could be read: start it at a lower LR "
                         "(--lr-start, or --range-lr-start with lr --lr-range auto)")
    log_lr = np.log(lrs[:usable])
    slope = np.gradient(np.array(smoothed[:usable]), log_lr)
    return RangeTestResult(
        steepest_lr=float(lrs[int(np.argmin(slope))]),
        diverged_lr=float(lrs[diverged_at]) if diverged_at is not None else None,
        min_loss_lr=float(lrs[int(np.argmin(smoothed[:usable]))]),
    )
