"""The gradient noise scale: the estimator against a problem whose answer is known."""

import json
import math

import pytest
import torch

from train_core.noise import NoiseScale, unbiased_estimates


# --- the estimator ----------------------------------------------------------------------------------------------


def test_norms_at_their_expected_values_give_back_the_gradient_and_the_trace_exactly():
    grad_sq, trace_sigma = 2.0, 300.0
    expected = {batch: grad_sq + trace_sigma / batch for batch in (64, 256)}  # E|G_B|² = |G|² + tr(Σ)/B
    got = unbiased_estimates(small_sq_norm=expected[64], small_batch=64, big_sq_norm=expected[256], big_batch=256)
    assert got == pytest.approx((grad_sq, trace_sigma), rel=1e-12)


def test_the_batch_sizes_must_be_positive_and_in_order():
    with pytest.raises(ValueError, match="small_batch=256, big_batch=64"):
        NoiseScale(small_batch=256, big_batch=64)
    with pytest.raises(ValueError, match="small_batch=0"):
        unbiased_estimates(small_sq_norm=1.0, small_batch=0, big_sq_norm=1.0, big_batch=64)


class LinearRegression:
    """Least squares on x ~ N(0, I_d), y = w*·x + ε with ε ~ N(0, σ²), looked at from a fixed w = w* + r.

    One example's gradient of ½(w·x − y)² is g = x (x·r − ε), so G = E[g] = r and (x Gaussian) E[g gᵀ] = |r|² I +
    2 r rᵀ + σ² I: Σ = (|r|² + σ²) I + r rᵀ. Hence |G|² = |r|², tr(Σ) = d (|r|² + σ²) + |r|², and with d = 50,
    |r| = σ = 1, B_noise = 101 examples.
    """

    d, sigma = 50, 1.0
    grad_sq = 1.0
    trace_sigma = d * (1.0 + sigma**2) + 1.0
    noise_scale = trace_sigma / grad_sq

    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(seed)
        self.r = torch.ones(self.d, dtype=torch.float64) / math.sqrt(self.d)  # |r| = 1

    def squared_norms(self, *, small: int, big: int) -> tuple[float, float]:
        """|G_B|² of the mean gradient over the first `small` examples of a batch of `big`, and over all of it: a
        micro-batch and its step, as the trainer has them."""
        x = torch.randn(big, self.d, generator=self.generator, dtype=torch.float64)
        noise = self.sigma * torch.randn(big, generator=self.generator, dtype=torch.float64)
        per_example = x * (x @ self.r - noise)[:, None]  # (big, d)
        small_mean, big_mean = per_example[:small].mean(0), per_example.mean(0)
        return float(small_mean @ small_mean), float(big_mean @ big_mean)


def test_on_linear_regression_the_estimates_average_to_the_true_gradient_and_trace():
    """Unbiased: over 2,000 draws (a micro-batch of 32 inside a step of 128) the mean estimates land within 5% of
    |G|² = 1 and tr(Σ) = 101 (their spread across seeds here: about 1.5%)."""
    problem = LinearRegression(seed=0)
    estimates = []
    for _ in range(2000):
        small_sq_norm, big_sq_norm = problem.squared_norms(small=32, big=128)
        estimates.append(unbiased_estimates(small_sq_norm=small_sq_norm, small_batch=32, big_sq_norm=big_sq_norm,
                                            big_batch=128))
    grad_sq, trace_sigma = (sum(column) / len(estimates) for column in zip(*estimates))
    assert grad_sq == pytest.approx(LinearRegression.grad_sq, rel=0.05)
    assert trace_sigma == pytest.approx(LinearRegression.trace_sigma, rel=0.05)
    assert min(e[0] for e in estimates) < 0  # single draws do come out negative: why the averages are kept


def test_on_linear_regression_b_simple_converges_to_the_true_noise_scale():
    """At the default decay (0.99, about 200 steps' worth of averaging) b_simple after 1,000 steps is within 20% of
    B_noise = 101 (its spread across seeds here: about 6%)."""
    problem = LinearRegression(seed=1)
    noise = NoiseScale(small_batch=32, big_batch=128)
    for _ in range(1000):
        small_sq_norm, big_sq_norm = problem.squared_norms(small=32, big=128)
        noise.update(small_sq_norm=small_sq_norm, big_sq_norm=big_sq_norm)
    assert noise.b_simple == pytest.approx(LinearRegression.noise_scale, rel=0.2)
    assert noise.grad_sq == pytest.approx(LinearRegression.grad_sq, rel=0.2)
    assert noise.trace_sigma == pytest.approx(LinearRegression.trace_sigma, rel=0.2)


def test_negative_estimates_are_averaged_as_they_are_and_b_simple_waits_for_positive_averages():
    noise = NoiseScale(small_batch=1, big_batch=4, decay=0.5)
    assert noise.b_simple is None and noise.grad_sq is None
    noise.update(small_sq_norm=10.0, big_sq_norm=1.0)  # |G|² = (4·1 − 1·10)/3 = −2, tr(Σ) = 9/(3/4) = 12
    assert (noise.grad_sq, noise.trace_sigma) == pytest.approx((-2.0, 12.0))
    assert noise.b_simple is None  # not 0, not a negative batch size: not resolved from the noise yet
    noise.update(small_sq_norm=8.0, big_sq_norm=8.0)  # |G|² = 8, tr(Σ) = 0
    # Bias-corrected: (0.25·(−2) + 0.5·8) / (1 − 0.5²); clamping the first estimate at 0 would have given 16/3.
    assert noise.grad_sq == pytest.approx(14 / 3)
    assert noise.trace_sigma == pytest.approx(4.0)
    assert noise.b_simple == pytest.approx(4.0 / (14 / 3))


def test_the_averages_resume_from_their_state_exactly():
    problem = LinearRegression(seed=2)
    draws = [problem.squared_norms(small=32, big=128) for _ in range(10)]
    whole, first = NoiseScale(small_batch=32, big_batch=128), NoiseScale(small_batch=32, big_batch=128)
    for small_sq_norm, big_sq_norm in draws:
        whole.update(small_sq_norm=small_sq_norm, big_sq_norm=big_sq_norm)
    for small_sq_norm, big_sq_norm in draws[:4]:
        first.update(small_sq_norm=small_sq_norm, big_sq_norm=big_sq_norm)
    resumed = NoiseScale(small_batch=32, big_batch=128)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))  # plain values
    for small_sq_norm, big_sq_norm in draws[4:]:
        resumed.update(small_sq_norm=small_sq_norm, big_sq_norm=big_sq_norm)
    assert (resumed.grad_sq, resumed.trace_sigma, resumed.b_simple) == (whole.grad_sq, whole.trace_sigma,
                                                                         whole.b_simple)  # bitwise
