"""The simple gradient noise scale B_simple = tr(Σ) / |G|²: roughly the batch size past which a bigger batch stops
buying a proportionally bigger step (McCandlish et al. 2018, "An Empirical Model of Large-Batch Training").

G is the true gradient of the loss and Σ the covariance of one example's gradient. The mean gradient G_B over B
examples has E|G_B|² = |G|² + tr(Σ)/B, so squared gradient norms at two batch sizes give unbiased estimates of both
(the paper's appendix A; `unbiased_estimates`). An optimizer step already has two: its first micro-batch's gradient and
the accumulated step's. One step's estimates are very noisy (early in training |G|² often comes out negative, the
signal being small next to the noise), so `NoiseScale` keeps a moving average of each and reports the ratio of the
averages, never an average of noisy ratios.

The trainer counts batch sizes in tokens, so its B_simple is in tokens.
"""



def unbiased_estimates(*, small_sq_norm: float, small_batch: float, big_sq_norm: float,
                       big_batch: float) -> tuple[float, float]:
    """(|G|², tr(Σ)) from the squared norms |G_B|² of mean gradients over small_batch and big_batch examples.

    Unbiased, not positive: either can come out negative when the two norms are close next to their noise.
    """
    if not 0 < small_batch < big_batch:
        raise ValueError(f"need 0 < small_batch < big_batch, got small_batch={small_batch}, big_batch={big_batch}")
    grad_sq = (big_batch * big_sq_norm - small_batch * small_sq_norm) / (big_batch - small_batch)
    trace_sigma = (small_sq_norm - big_sq_norm) / (1 / small_batch - 1 / big_batch)
    return grad_sq, trace_sigma


class NoiseScale:
    """Moving averages of the per-step estimates of |G|² and tr(Σ), and B_simple, their ratio.

        noise = NoiseScale(small_batch=1024, big_batch=4096)  # tokens of a micro-batch and of the step
        noise.update(small_sq_norm=..., big_sq_norm=...)  # once per optimizer step
        noise.b_simple  # tokens, or None

    The averages are exponential with `decay`, bias-corrected as Adam's moments are, so after one update they are that
    step's estimates. Negative estimates go into the averages as they are: clamping them at 0 would bias both averages
    upward. `b_simple` is None while either average is not positive: the measurement has not yet told the signal from
    its noise, and the ratio would mean nothing. `grad_sq` and `trace_sigma` show how far off that is.
    """

    def __init__(self, *, small_batch: float, big_batch: float, decay: float = 0.99):
        unbiased_estimates(small_sq_norm=0.0, small_batch=small_batch, big_sq_norm=0.0, big_batch=big_batch)
        if not 0 <= decay < 1:
            raise ValueError(f"decay must be in [0, 1), got decay={decay}")
        self.small_batch, self.big_batch, self.decay = small_batch, big_batch, decay
        self.updates = 0
        self._grad_sq_avg = 0.0  # the averages before bias correction
        self._trace_sigma_avg = 0.0

    def update(self, *, small_sq_norm: float, big_sq_norm: float) -> None:
        """Fold in one step's squared gradient norms (finite) at small_batch and at big_batch."""
        grad_sq, trace_sigma = unbiased_estimates(small_sq_norm=small_sq_norm, small_batch=self.small_batch,
                                                  big_sq_norm=big_sq_norm, big_batch=self.big_batch)
        self._grad_sq_avg = self.decay * self._grad_sq_avg + (1 - self.decay) * grad_sq
        self._trace_sigma_avg = self.decay * self._trace_sigma_avg + (1 - self.decay) * trace_sigma
        self.updates += 1

    @property
    def grad_sq(self) -> float | None:
        """The moving average of |G|²; None before the first update."""
        return self._grad_sq_avg / self._correction if self.updates else None

    @property
    def trace_sigma(self) -> float | None:
        """The moving average of tr(Σ); None before the first update."""
        return self._trace_sigma_avg / self._correction if self.updates else None

    @property
    def b_simple(self) -> float | None:
        """tr(Σ) / |G|² in the batch sizes' unit; None until both averages are positive."""
        if not self.updates or self._grad_sq_avg <= 0 or self._trace_sigma_avg <= 0:
            return None
        return self._trace_sigma_avg / self._grad_sq_avg  # the bias corrections cancel

    @property
    def _correction(self) -> float:
        return 1 - self.decay**self.updates

    def state_dict(self) -> dict:
        return {"updates": self.updates, "grad_sq_avg": self._grad_sq_avg, "trace_sigma_avg": self._trace_sigma_avg}

    def load_state_dict(self, state: dict) -> None:
        self.updates = state["updates"]
        self._grad_sq_avg, self._trace_sigma_avg = state["grad_sq_avg"], state["trace_sigma_avg"]
