"""The gradient noise scale: the estimator against a problem whose answer is known, and the trainer measuring it
without changing a loss, from the right gradients, across a resume and across processes."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from train_core.checkpoint import CheckpointManager
from train_core.data import TokenData
from train_core.errors import InputError
from train_core.noise import NoiseScale, unbiased_estimates
from train_core.trainer import NOISE_SCALE_KEY, build_model, finish_step, setup_run, train, train_step

CPU = torch.device("cpu")


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


# --- in the trainer ---------------------------------------------------------------------------------------------

ACCUMULATED = {"batch": {"total_batch_size": 8 * 16, "micro_batch_size": 4}}  # 2 micro-steps of 4 x 16 tokens


def test_with_gradient_accumulation_the_noise_scale_is_measured_and_no_loss_changes(make_config):
    runs = {}
    for mode in ("on", "off"):
        seen = []
        result = train(make_config(noise_scale=mode, schedule={"max_steps": 12}, **ACCUMULATED), callback=seen.append)
        runs[mode] = (result, seen)
    (on, on_steps), (off, off_steps) = runs["on"], runs["off"]
    assert on.losses == off.losses  # bitwise
    assert [m.grad_norm for m in on_steps] == [m.grad_norm for m in off_steps]
    assert on.final_val_loss == off.final_val_loss
    assert all(m.noise_scale_tokens is None for m in off_steps) and off.noise_scale_tokens is None
    measured = [m.noise_scale_tokens for m in on_steps[4:]]
    assert all(b is not None and math.isfinite(b) and b > 0 for b in measured), measured
    assert on.noise_scale_tokens == measured[-1]


def test_with_one_micro_step_the_noise_scale_is_measured_only_when_split(make_config):
    one = {"batch": {"total_batch_size": 4 * 16, "micro_batch_size": 4}, "schedule": {"max_steps": 12}}
    plain, split = [], []
    default = train(make_config(**one), callback=plain.append)
    halves = train(make_config(noise_scale="split", **one), callback=split.append)
    assert all(m.noise_scale_tokens is None for m in plain)  # no second batch size to compare with
    assert split[-1].noise_scale_tokens is not None and split[-1].noise_scale_tokens > 0
    # The same sequences and the same mean loss, summed in two halves: equal up to rounding.
    assert halves.losses == pytest.approx(default.losses, rel=1e-5)


@pytest.mark.parametrize("mode, batch, small_tokens", [
    ("on", {"total_batch_size": 8 * 16, "micro_batch_size": 4}, 4 * 16),  # the first of two micro-batches
    ("split", {"total_batch_size": 4 * 16, "micro_batch_size": 4}, 2 * 16),  # the first half of the only one
])
def test_the_trainer_reads_the_first_passs_own_gradient(make_config, mode, batch, small_tokens):
    """One step's estimates are those computed from a separate forward/backward of the first pass's sequences."""
    config = make_config(noise_scale=mode, batch=batch)
    run = setup_run(config, checkpoints=None, rank=0, world_size=1)
    taken = finish_step(run, train_step(run, 0))

    data = TokenData.open(config.data.train, vocab_size=config.model.vocab_size)
    x, y = data.get_batch(seed=config.seed, step=0, micro_step=0, rank=0, batch_size=4, block_size=16)
    model, _ = build_model(config, CPU)
    model(x[: small_tokens // 16], y[: small_tokens // 16]).backward()
    small_sq_norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).item() ** 2
    expected = unbiased_estimates(small_sq_norm=small_sq_norm, small_batch=small_tokens,
                                  big_sq_norm=taken.grad_norm**2, big_batch=config.batch.total_batch_size)
    assert (run.noise_scale.small_batch, run.noise_scale.big_batch) == (small_tokens, config.batch.total_batch_size)
    assert (run.noise_scale.grad_sq, run.noise_scale.trace_sigma) == pytest.approx(expected, rel=1e-4)


def test_a_resumed_run_continues_the_uninterrupted_runs_noise_scale(make_config, tmp_path):
    config = make_config(schedule={"max_steps": 10}, checkpoint={"interval": 4}, **ACCUMULATED)
    whole = []
    train(config, callback=lambda m: whole.append(m.noise_scale_tokens))
    first, resumed = [], []
    train(config, out_dir=tmp_path / "run", callback=lambda m: first.append(m.noise_scale_tokens) or m.step == 3)
    assert NOISE_SCALE_KEY in CheckpointManager(tmp_path / "run").load_latest()
    train(config, out_dir=tmp_path / "run", callback=lambda m: resumed.append(m.noise_scale_tokens))
    assert whole[-1] is not None
    assert first + resumed == whole  # bitwise, step for step


def test_split_needs_an_even_micro_batch_and_the_mode_must_be_known(make_config):
    with pytest.raises(InputError, match=r"batch.micro_batch_size must be even when noise_scale is 'split'.*got 3"):
        make_config(noise_scale="split", batch={"total_batch_size": 3 * 16, "micro_batch_size": 3})
    with pytest.raises(InputError, match="noise_scale must be one of 'on', 'split', 'off', got 'yes'"):
        make_config(noise_scale="yes")


# --- across processes -------------------------------------------------------------------------------------------

TRAIN_ONE_STEP = """
import json, sys
from pathlib import Path
from train_core.config import TrainConfig
from train_core.trainer import train
train(TrainConfig.from_dict(json.loads(Path(sys.argv[1]).read_text())), out_dir=Path(sys.argv[2]))
"""


@pytest.mark.slow
def test_under_torchrun_each_process_reads_its_own_first_micro_batch(make_config, tmp_path):
    """Two gloo processes, each 2 micro-batches of a 4-micro-batch step: the small batch is a process's own first
    micro-batch (global micro-batches 0 and 2), read before DDP averages the gradients, its |G_B|² averaged over the
    processes."""
    config = make_config(schedule={"max_steps": 1, "warmup_steps": 0}, checkpoint={"interval": 1},
                         batch={"total_batch_size": 16 * 16, "micro_batch_size": 4})
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
    (tmp_path / "train_one_step.py").write_text(TRAIN_ONE_STEP)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(tmp_path / "train_one_step.py"), str(tmp_path / "config.json"), str(tmp_path / "run")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    saved = NoiseScale(small_batch=64, big_batch=256)
    saved.load_state_dict(CheckpointManager(tmp_path / "run").load_latest()[NOISE_SCALE_KEY])

    data = TokenData.open(config.data.train, vocab_size=config.model.vocab_size)
    model, _ = build_model(config, CPU)
    micro_grads = []  # each micro-batch's own mean gradient, from the initial weights
    for micro_step in range(4):  # process 0's pair, then process 1's
        x, y = data.get_batch(seed=config.seed, step=0, micro_step=micro_step, rank=0, batch_size=4, block_size=16)
        model.zero_grad(set_to_none=True)
        model(x, y).backward()
        micro_grads.append([p.grad.clone() for p in model.parameters()])
    step_grad = [sum(grads) / 4 for grads in zip(*micro_grads)]
    first_sq_norms = [torch.nn.utils.get_total_norm(micro_grads[i]).item() ** 2 for i in (0, 2)]
    expected = unbiased_estimates(small_sq_norm=sum(first_sq_norms) / 2, small_batch=64,
                                  big_sq_norm=torch.nn.utils.get_total_norm(step_grad).item() ** 2, big_batch=256)
    assert (saved.grad_sq, saved.trace_sigma) == pytest.approx(expected, rel=1e-3)
