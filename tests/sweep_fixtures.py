"""Helpers for the sweep tests: a small real corpus, a tiny study file, and the CLI run in-process.

The study is sized so that a 20-step trial takes a fraction of a second on 2 CPU cores: one layer of width 16, 128
tokens per step, over a 512-token vocabulary. The tokens are real text (Python sources tokenized with GPT-2's BPE)
with the 511 most frequent GPT-2 ids renumbered 0..510 and every other id mapped to 511: the model learns real
structure, and its output layer is 100x smaller than GPT-2's, which made each trial ~30x faster.
"""

import copy
import sysconfig
from pathlib import Path

import numpy as np
import optuna
import yaml

from sweep.cli import main
from sweep.storage import open_storage
from train_core.data import write_nanogpt_bin
from train_core.tokenizer import gpt2_encoding

STEPS = 20  # optimizer steps per trial in these tests
ANCHOR_LR = 1e-2  # a good peak LR for the tiny model: its val loss falls from ln(512) = 6.2 to about 4.3 in 20 steps
VOCAB = 512
STDLIB_MODULES = ("argparse.py", "dataclasses.py", "textwrap.py", "pathlib.py")


def write_token_files(folder: Path, *, tokens: int = 60_000, val_tokens: int = 6_000) -> tuple[Path, Path]:
    """train.bin and val.bin (nanoGPT format): real Python source as GPT-2 tokens, folded into VOCAB ids."""
    root = Path(sysconfig.get_paths()["stdlib"])
    text = "".join((root / name).read_text(encoding="utf-8") for name in STDLIB_MODULES)
    gpt2_ids = np.array(gpt2_encoding().encode_ordinary(text)[:tokens])
    assert len(gpt2_ids) == tokens, f"the stdlib modules gave only {len(gpt2_ids)} tokens"
    values, counts = np.unique(gpt2_ids, return_counts=True)
    fold = np.full(values.max() + 1, VOCAB - 1)  # rare ids -> the last id
    fold[values[np.argsort(-counts, kind="stable")[: VOCAB - 1]]] = np.arange(VOCAB - 1)
    ids = fold[gpt2_ids]
    folder.mkdir(parents=True, exist_ok=True)
    train, val = folder / "train.bin", folder / "val.bin"
    write_nanogpt_bin(train, ids[:-val_tokens])
    write_nanogpt_bin(val, ids[-val_tokens:])
    return train, val


def tiny_recipe(data: tuple[Path, Path], *, vocab: int, **sections) -> dict:
    """The one tiny recipe every test builds on, as plain values: a 1-layer, 16-wide GPT over `vocab` tokens of the
    token files `data`; `sections` override it (a dict updates that section key by key, e.g. schedule={...})."""
    train, val = data
    base = {
        "model": {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16, "vocab_size": vocab},
        "data": {"train": str(train), "val": str(val)},
        "schedule": {"max_lr": ANCHOR_LR, "warmup_steps": 2},
        "eval": {"iters": 2},
        "peak_flops": 1.0e11,  # fixed, so that no run spends time measuring the machine
    }
    return merge(base, sections)


def merge(base: dict, overrides: dict) -> dict:
    """base with overrides applied; a dict override updates that section key by key."""
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def study_values(data: tuple[Path, Path], **search) -> dict:
    """The tiny sweep study; `search` overrides keys of its search section."""
    return tiny_recipe(
        data,
        vocab=VOCAB,
        name="tiny",
        batch={"total_batch_size": 128, "micro_batch_size": 8},
        schedule={"max_steps": 100},
        checkpoint={"interval": 100},
        seed=7,
        search={"anchor_lr": ANCHOR_LR, "lr_min": 3e-3, "lr_max": 3e-2, "warmup": [0, 2], "trials": 4} | search,
    )


def write_study(path: Path, values: dict) -> Path:
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


def run_lr(study: Path, storage: str, *args: str, steps: int = STEPS) -> int:
    """`python -m sweep lr` in this process, quiet; returns its exit code."""
    return main(["lr", "--study", str(study), "--steps", str(steps), "--storage", storage, "-q", *args])


def load(storage: str, name: str = f"tiny-{STEPS}") -> optuna.Study:
    """The study as Optuna sees it, through the storage the CLI opens (a journal path is no URL for load_study)."""
    return optuna.load_study(study_name=name, storage=open_storage(storage, create=False))
