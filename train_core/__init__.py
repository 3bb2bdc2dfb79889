"""GPT training shared by every sweep trial and every full run. Knows nothing of Optuna: `train`'s per-step
callback is its only seam to the outside."""

from train_core.checkpoint import CheckpointManager
from train_core.config import TrainConfig
from train_core.errors import FaultError, InputError
from train_core.model import GPT, GPTConfig
from train_core.schedule import get_lr
from train_core.trainer import StepMetrics, TrainResult, train

__all__ = [
    "CheckpointManager",
    "GPT",
    "GPTConfig",
    "FaultError",
    "InputError",
    "StepMetrics",
    "TrainConfig",
    "TrainResult",
    "get_lr",
    "train",
]
