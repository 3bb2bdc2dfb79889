"""Will a run fit? A rough estimate of a training run's memory, made before anything is allocated or created.

A model too big for the machine is otherwise found only when an allocation fails: a traceback, and a sweep that has
already created its study and failed its first trials. The estimate counts what cannot be avoided, so it errs low:
- weights, gradients and AdamW's two moments: 16 bytes per parameter (fp32);
- activations kept for the backward pass of one micro-batch: about 34·B·T·d bytes per layer in 16-bit (Korthikanti
  et al. 2022, "Reducing activation recomputation", without the attention-score term, which flash attention avoids),
  twice that in fp32;
- where the loss is not chunked (`model.loss`; `auto` on a GPU or compiled), the micro-batch's logits and the fp32
  log-probabilities kept for their gradient: 6 bytes per token and vocabulary entry in 16-bit, 8 in fp32 (4.6 GiB at
  micro batch 16 of 1,024 tokens and GPT-2's vocabulary);
- and all of it once per process training on the same device (`--workers` sharing a CPU or a GPU), and once per
  member of a process's stack (`--stack`).
"""

import os

import torch

from train_core.config import TrainConfig
from train_core.errors import InputError
from train_core.model import chunked_loss

GIB = 1024**3


def parameter_count(config: TrainConfig) -> int:
    """Parameters of the GPT the config describes, without building it (tied input and output embedding)."""
    m = config.model
    d, bias = m.n_embd, int(m.bias)
    norm = (1 + bias) * d  # a LayerNorm: weight, and bias
    per_layer = 12 * d * d + bias * 9 * d + 2 * norm  # qkv, proj, a 4x MLP (and their biases); two LayerNorms
    return m.n_layer * per_layer + m.padded_vocab_size * d + m.block_size * d + norm


def training_bytes(config: TrainConfig, *, device: torch.device) -> tuple[int, int]:
    """(state bytes, activation bytes) of one process training `config` on `device`: see the module docstring."""
    m, b = config.model, config.batch
    half = config.dtype in ("bfloat16", "auto")  # auto picks bf16 where the hardware has it: count the smaller
    activations = 34 * b.micro_batch_size * m.block_size * m.n_embd * m.n_layer * (1 if half else 2)
    if not chunked_loss(m, device_type=device.type, compiled=config.compiled(device.type)):
        activations += b.micro_batch_size * m.block_size * m.padded_vocab_size * (6 if half else 8)
    return 16 * parameter_count(config), activations


def device_memory(device: torch.device) -> tuple[int, str] | None:
    """(bytes, what) of the memory a run on `device` can use; None where it cannot be read."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory, f"{torch.cuda.get_device_name(device)}'s memory"
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine's RAM"
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(config: TrainConfig, *, device: torch.device, processes: int = 1, stack: int = 1) -> None:
    """InputError in one line, with the estimate and the memory, when `processes` runs of `config` at once (workers
    sharing the device), each training `stack` members at once (train_core/stacked.py), cannot fit on `device`."""
    available = device_memory(device)
    if available is None:
        return
    state, activations = training_bytes(config, device=device)
    memory, what = available
    if processes * stack * (state + activations) <= memory:
        return
    m = config.model
    runs = [f"{stack} stacked trials"] * (stack > 1) + [f"{processes} workers"] * (processes > 1)
    each = f", for each of {' in each of '.join(runs)}," if runs else ""
    fewer = [", or fewer workers"] * (processes > 1) + [", or a smaller --stack"] * (stack > 1)
    raise InputError(
        f"model n_layer={m.n_layer} n_embd={m.n_embd} (vocab {m.vocab_size}, context {m.block_size}) cannot fit: "
        f"{parameter_count(config) / 1e6:,.0f}M parameters need{each} {state / GIB:,.1f} GiB for weights, gradients "
        f"and AdamW state, plus {activations / GIB:,.1f} GiB of activations at micro batch "
        f"{config.batch.micro_batch_size}, more than {what} ({memory / GIB:,.1f} GiB); use a smaller model or micro "
        f"batch{''.join(fewer)}"
    )
