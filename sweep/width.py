"""--- μP --- The recipe's model at other widths: the one rule `coord-check`, `transfer` and `promote --n-embd` share.

The head count stays the recipe's, so the head size grows with width (what μP's 1/d_head attention scale assumes), and
μP's base width stays the recipe's (its own n_embd unless it names another): the recipe's model is the proxy.
"""

import dataclasses
from typing import TYPE_CHECKING

from train_core import InputError

if TYPE_CHECKING:  # torch (behind the config) loads only when a command runs
    from train_core import TrainConfig


def at_width(train: "TrainConfig", *, n_embd: int, parametrization: str | None = None, flag: str = "--n-embd") -> "TrainConfig":
    """`train` with the model n_embd wide, under `parametrization` (default: the recipe's)."""
    model = train.model
    if n_embd % model.n_head:
        raise InputError(f"{flag} {n_embd} must be a multiple of model.n_head={model.n_head} (the head count stays fixed)")
    parametrization = parametrization or model.parametrization
    base = (model.mup_base_width or model.n_embd) if parametrization == "mup" else None
    widened = dataclasses.replace(model, n_embd=n_embd, parametrization=parametrization, mup_base_width=base)
    return dataclasses.replace(train, model=widened)

