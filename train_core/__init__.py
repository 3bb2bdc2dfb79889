"""GPT training shared by every sweep trial and every full run. Knows nothing of Optuna: `train`'s per-step
callback is its only seam to the outside.

train_core's public face is the list below: every name sweep/ and benchmarks/ need, imported from `train_core`
rather than from its submodules. The names load on first use, so that importing train_core (for its errors or its
schedule shapes, say) does not import torch: `python -m sweep --help` stays fast.
"""

import importlib

_HOMES = {
    # errors: the two the command line turns into one line
    "FaultError": "train_core.errors",
    "InputError": "train_core.errors",
    # config
    "ScheduleConfig": "train_core.config",
    "TrainConfig": "train_core.config",
    # schedule
    "SHAPES": "train_core.schedule",
    "get_lr": "train_core.schedule",
    "sweep_shapes": "train_core.schedule",
    # training
    "StepMetrics": "train_core.trainer",
    "TrainResult": "train_core.trainer",
    "check_resumable": "train_core.trainer",
    "check_same_parametrization": "train_core.trainer",
    "device_label": "train_core.trainer",
    "make_optimizer": "train_core.trainer",
    "open_data": "train_core.trainer",
    "resolve_device": "train_core.trainer",
    "resolve_dtype": "train_core.trainer",
    "train": "train_core.trainer",
    # stacked training: several runs of one study at once
    "MEMBER_SECTIONS": "train_core.stacked",
    "StackMember": "train_core.stacked",
    "stack_that_fits": "train_core.stacked",
    "train_stacked": "train_core.stacked",
    # model
    "GPT": "train_core.model",
    "GPTConfig": "train_core.model",
    # checkpoints
    "CheckpointManager": "train_core.checkpoint",
    # tokens
    "EOT_TOKEN": "train_core.tokenizer",
    "VOCAB_SIZE": "train_core.tokenizer",
    "gpt2_encoding": "train_core.tokenizer",
    # data
    "TokenData": "train_core.data",
    "ensure_corpus": "train_core.data",
    "prepare": "train_core.data",
    "to_device": "train_core.data",
    "write_llmc_shard": "train_core.data",
    "write_nanogpt_bin": "train_core.data",
    # run folders
    "exclusive": "train_core.locks",
    "hold_run_folder": "train_core.locks",
    "this_process": "train_core.locks",
    # memory
    "check_fits": "train_core.memory",
    # peak
    "MachinePeak": "train_core.peak",
    "measure_peak_flops": "train_core.peak",
    # files
    "atomic_write": "train_core.files",
    # targets: what a run folder, a prepare folder and the files beside them look like
    "PNG_SIGNATURE": "train_core.targets",
    "RUN_FILES_SAID": "train_core.targets",
    "SQLITE_HEADER": "train_core.targets",
    "STABLE_NAME": "train_core.targets",
    "TEMPORARY_NAME": "train_core.targets",
    "check_folder_place": "train_core.targets",
    "check_run_folder": "train_core.targets",
    "clear_run_folder": "train_core.targets",
    "describe_path": "train_core.targets",
    "foreign_entries": "train_core.targets",
    "listing": "train_core.targets",
    "run_folder_strays": "train_core.targets",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'train_core' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
