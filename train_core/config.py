"""Training configuration: one small dataclass per concern, validated on construction.

`TrainConfig.from_dict` builds the whole tree from plain values (a YAML recipe), rejecting unknown keys and wrong
types by name. Every problem is an `InputError` whose one line names the key, the value and what is allowed.
"""

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from train_core.errors import InputError
from train_core.model import GPTConfig
from train_core.schedule import SHAPES, get_lr

Dtype = Literal["auto", "float32", "bfloat16"]
Device = Literal["auto", "cpu", "cuda", "mps"]
NoiseScaleMode = Literal["on", "split", "off"]


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise InputError(f"{key} must be {allowed}, got {value!r}")


@dataclass(kw_only=True)
class DataConfig:
    """Where tokens come from: an embedded corpus by name, or token files (nanoGPT .bin or llm.c shard globs)."""

    corpus: str | None = None  # e.g. "python-stdlib": prepared into data/<corpus>/ on first use
    train: str | None = None  # path or glob of token files
    val: str | None = None
    # Fold the vocabulary: the train split's top_tokens - 1 most frequent ids keep ids 0.. in order of frequency and
    # every other id reads as top_tokens - 1, so that a small proxy is not mostly an embedding table (model.vocab_size
    # must equal it). None: the tokens as they are.
    top_tokens: int | None = None

    def __post_init__(self):
        if self.top_tokens is not None:
            _check(self.top_tokens >= 2, "data.top_tokens", self.top_tokens, ">= 2 (the kept ids and one for the rest), or null")
        files_given = self.train is not None or self.val is not None
        if self.corpus is not None and files_given:
            raise InputError("data: give either data.corpus or data.train and data.val, not both")
        if self.corpus is None and (self.train is None or self.val is None):
            raise InputError("data: give data.corpus (an embedded corpus) or both data.train and data.val (token files)")


@dataclass(kw_only=True)
class BatchConfig:
    total_batch_size: int = 2048  # tokens per optimizer step, across all micro-steps and processes
    micro_batch_size: int = 16  # sequences per forward/backward

    def __post_init__(self):
        _check(self.total_batch_size >= 1, "batch.total_batch_size", self.total_batch_size, "a positive token count")
        _check(self.micro_batch_size >= 1, "batch.micro_batch_size", self.micro_batch_size, "a positive integer")


@dataclass(kw_only=True)
class ScheduleConfig:
    max_lr: float = 6e-4  # peak learning rate
    min_lr_ratio: float = 0.1  # cosine floor = max_lr * min_lr_ratio
    warmup_steps: int = 200
    max_steps: int = 4768
    decay_steps: int | None = None  # where the cosine reaches its floor; None means max_steps
    shape: str = "cosine"  # a name in train_core.schedule.SHAPES
    cooldown_fraction: float = 0.2  # wsd only: share of the decay horizon spent cooling down to the floor

    def __post_init__(self):
        _check(self.shape in SHAPES, "schedule.shape", self.shape, "one of " + ", ".join(repr(s) for s in SHAPES))
        _check(self.max_lr > 0, "schedule.max_lr", self.max_lr, "> 0")
        _check(0 <= self.min_lr_ratio <= 1, "schedule.min_lr_ratio", self.min_lr_ratio, "in [0, 1]")
        _check(self.max_steps >= 1, "schedule.max_steps", self.max_steps, "a positive integer")
        _check(0 < self.cooldown_fraction <= 1, "schedule.cooldown_fraction", self.cooldown_fraction, "in (0, 1]")
        _check(
            0 <= self.warmup_steps <= self.max_steps,
            "schedule.warmup_steps",
            self.warmup_steps,
            f"in [0, max_steps={self.max_steps}]",
        )
        if self.decay_steps is not None:
            _check(
                self.decay_steps >= self.warmup_steps,
                "schedule.decay_steps",
                self.decay_steps,
                f">= warmup_steps={self.warmup_steps}",
            )

    @property
    def decay_horizon(self) -> int:
        return self.max_steps if self.decay_steps is None else self.decay_steps

    def lr(self, step: int) -> float:
        return get_lr(
            step,
            max_lr=self.max_lr,
            warmup_steps=self.warmup_steps,
            decay_steps=self.decay_horizon,
            min_lr_ratio=self.min_lr_ratio,
            shape=self.shape,
            cooldown_fraction=self.cooldown_fraction,
        )

    @property
    def stable_end(self) -> int | None:
        """The shape's branch point (wsd: where its cool-down starts), the state there being every longer run's state
        too; None for a shape without one."""
        branch_point = SHAPES[self.shape].branch_point
        if branch_point is None:
            return None
        return branch_point(
            warmup_steps=self.warmup_steps, decay_steps=self.decay_horizon, cooldown_fraction=self.cooldown_fraction
        )


@dataclass(kw_only=True)
class OptimizerConfig:
    """AdamW; weight decay applies to weights with 2 or more dimensions only (not biases or LayerNorms)."""

    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping

    def __post_init__(self):
        _check(self.weight_decay >= 0, "optimizer.weight_decay", self.weight_decay, ">= 0")
        _check(0 <= self.beta1 < 1, "optimizer.beta1", self.beta1, "in [0, 1)")
        _check(0 <= self.beta2 < 1, "optimizer.beta2", self.beta2, "in [0, 1)")
        _check(self.eps > 0, "optimizer.eps", self.eps, "> 0")
        _check(self.grad_clip >= 0, "optimizer.grad_clip", self.grad_clip, ">= 0 (0 disables clipping)")


@dataclass(kw_only=True)
class EvalConfig:
    interval: int = 200  # evaluate every this many steps, and at the end
    iters: int = 20  # fixed validation batches per evaluation

    def __post_init__(self):
        _check(self.interval >= 1, "eval.interval", self.interval, "a positive integer")
        _check(self.iters >= 1, "eval.iters", self.iters, "a positive integer")


@dataclass(kw_only=True)
class CheckpointConfig:
    interval: int = 200  # save every this many steps (and at the end, and on each new best val loss)
    keep_last: int = 1  # step checkpoints kept besides best.pt: what resume needs (train_core/checkpoint.py); more on request

    def __post_init__(self):
        _check(self.interval >= 1, "checkpoint.interval", self.interval, "a positive integer")
        _check(self.keep_last >= 1, "checkpoint.keep_last", self.keep_last, ">= 1")


@dataclass(kw_only=True)
class TrainConfig:
    model: GPTConfig = field(default_factory=GPTConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(corpus="python-stdlib"))
    batch: BatchConfig = field(default_factory=BatchConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    seed: int = 1337  # initial weights and data order; trials of one study share it (paired comparison)
    dtype: Dtype = "auto"  # auto: bfloat16 autocast where the device supports it, else float32
    device: Device = "auto"  # auto: cuda > mps > cpu
    compile: bool | Literal["auto"] = False  # torch.compile the model; auto: on CUDA only (see `compiled`)
    peak_flops: float | None = None  # FLOP/s the MFU is measured against; None: measured once on this machine
    # The gradient noise scale B_simple (train_core/noise.py), from the first forward/backward pass of each step and
    # the whole step. "on": where a step has 2 or more passes per process (gradient accumulation), losses unchanged;
    # "split": also where it has one, by running that micro-batch as two halves (the same loss, rounded differently).
    noise_scale: NoiseScaleMode = "on"

    def __post_init__(self):
        m = self.model
        for key in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd", "pad_vocab_to"):
            _check(getattr(m, key) >= 1, f"model.{key}", getattr(m, key), "a positive integer")
        _check(m.n_embd % m.n_head == 0, "model.n_embd", m.n_embd, f"a multiple of model.n_head={m.n_head}")
        _check(0 <= m.dropout < 1, "model.dropout", m.dropout, "in [0, 1)")
        _check(m.init_std > 0, "model.init_std", m.init_std, "> 0")
        # --- μP ---
        if m.parametrization == "mup":
            _check(m.mup_base_width >= 1, "model.mup_base_width", m.mup_base_width, "a positive width (the proxy's n_embd)")
        else:
            _check(m.mup_base_width is None, "model.mup_base_width", m.mup_base_width, "unset unless model.parametrization is mup")
        for key in ("mup_input_alpha", "mup_output_alpha"):
            _check(getattr(m, key) > 0, f"model.{key}", getattr(m, key), "> 0")
        if self.data.top_tokens is not None:
            _check(m.vocab_size == self.data.top_tokens, "model.vocab_size", m.vocab_size,
                   f"data.top_tokens={self.data.top_tokens} when the data's vocabulary is folded to it")
        if self.peak_flops is not None:
            _check(self.peak_flops > 0, "peak_flops", self.peak_flops, "> 0 FLOP/s, or null to measure")
        if self.noise_scale == "split":
            _check(self.batch.micro_batch_size % 2 == 0, "batch.micro_batch_size", self.batch.micro_batch_size,
                   "even when noise_scale is 'split' (a micro-batch may run as two equal halves)")
        self.grad_accum_steps(world_size=1)

    def compiled(self, device_type: str) -> bool:
        """Whether the model runs under torch.compile on this kind of device. `auto` (the GPU recipes) compiles on CUDA
        only, so that the same recipe runs eagerly on a CPU, with the chunked loss measured fastest there."""
        return self.compile is True or (self.compile == "auto" and device_type == "cuda")

    def grad_accum_steps(self, *, world_size: int) -> int:
        """Micro-steps per optimizer step on each of world_size processes; the token budget must split evenly."""
        tokens_per_micro_step = self.batch.micro_batch_size * self.model.block_size * world_size
        if self.batch.total_batch_size % tokens_per_micro_step:
            raise InputError(
                f"batch.total_batch_size must be a multiple of micro_batch_size x block_size x processes = "
                f"{self.batch.micro_batch_size} x {self.model.block_size} x {world_size} = {tokens_per_micro_step}, "
                f"got {self.batch.total_batch_size}"
            )
        return self.batch.total_batch_size // tokens_per_micro_step

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        return _build(cls, values, prefix="")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _build(cls: type, values: Any, *, prefix: str) -> Any:
    """Build dataclass cls from a mapping, checking keys and value types; nested dataclasses recurse."""
    where = prefix.rstrip(".") or "the recipe"
    if not isinstance(values, dict):
        raise InputError(f"{where} must be a mapping of keys to values, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise InputError(f"unknown key {prefix}{unknown[0]!s} (allowed in {where}: {', '.join(fields)})")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, prefix=f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, hint, key=f"{prefix}{name}")
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, *, key: str) -> Any:
    """Check value against a plain type hint (int, float, str, bool, Literal, X | None); ints widen to float."""
    if value is None and _allows_none(hint):
        return None
    options = [h for h in typing.get_args(hint) if h is not type(None)] if _is_union(hint) else [hint]
    for option in options:
        if typing.get_origin(option) is Literal:
            if value in typing.get_args(option):
                return value
        elif option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        elif option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        elif option in (str, bool) and type(value) is option:
            return value
    raise InputError(f"{key} must be {_describe(hint)}, got {value!r}")


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _allows_none(hint: Any) -> bool:
    return _is_union(hint) and type(None) in typing.get_args(hint)


def _describe(hint: Any) -> str:
    if _is_union(hint):
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(hint))
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "null"}
    return names.get(hint, str(hint))
