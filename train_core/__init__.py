"""GPT training shared by every sweep trial and every full run. Knows nothing of Optuna: `train`'s per-step
callback is its only seam to the outside.

The names below load on first use, so that importing one light module (train_core.errors, say) does not import
torch: `python -m sweep --help` stays fast.
"""

import importlib

_HOMES = {
    "CheckpointManager": "train_core.checkpoint",
    "GPT": "train_core.model",
    "GPTConfig": "train_core.model",
    "FaultError": "train_core.errors",
    "InputError": "train_core.errors",
    "StepMetrics": "train_core.trainer",
    "TrainConfig": "train_core.config",
    "TrainResult": "train_core.trainer",
    "get_lr": "train_core.schedule",
    "train": "train_core.trainer",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'train_core' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
