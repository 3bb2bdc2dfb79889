"""Text from a trained run's checkpoint, as nanoGPT's sample.py: after the full run, see what the model writes.

    python -m sweep sample                      # the promoted run of the default study's best trial
    python -m sweep sample runs/mine --prompt "def main(" --tokens 200 --temperature 0.8 --top-k 200 --seed 1

Each token is drawn from the softmax of the logits divided by the temperature, restricted to the top-k most likely
tokens; the seed makes the text the same on every run on the same device.
"""

from dataclasses import dataclass
from pathlib import Path

import optuna
import torch

from sweep.record import promote_runs
from train_core import (
    EOT_TOKEN, GPT, CheckpointManager, InputError, TrainConfig, gpt2_encoding, resolve_device, resolve_dtype,
)


@dataclass(frozen=True, kw_only=True)
class Sampling:
    """How to draw tokens; checked on construction."""

    tokens: int = 200  # new tokens per sample
    temperature: float = 0.8  # < 1 sharpens the distribution, > 1 flattens it
    top_k: int | None = 200  # draw among the k most likely tokens only; None: among all
    seed: int = 1337

    def __post_init__(self):
        if self.tokens < 1:
            raise InputError(f"--tokens must be a positive number of tokens, got {self.tokens}")
        if not self.temperature > 0:
            raise InputError(f"--temperature must be > 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise InputError(f"--top-k must be a positive integer, got {self.top_k}")


def promoted_run(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> Path:
    """The folder of the trial's promoted run (the last `promote` of it to start), from the study's user attrs: one per
    run, `promote-<trial>` with a suffix for another --max-steps or LR."""
    runs = [run for run in promote_runs(study).values() if run.trial == trial.number]
    status = max(runs, key=lambda run: run.started_at or "", default=None)
    if status is None:
        raise InputError(f"trial {trial.number} of study {study.study_name} has not been promoted: run "
                         f"`python -m sweep promote {trial.number}` first, or give a run folder")
    return Path(status.run_dir)


def load_run(run_dir: Path, *, device: torch.device) -> tuple[GPT, dict]:
    """The model of the run's newest checkpoint (its best-val one when no step checkpoint is left), and that
    checkpoint (its config and step)."""
    checkpoints = CheckpointManager(run_dir)
    state = checkpoints.load_latest(map_location=device) or checkpoints.load_best(map_location=device)
    if state is None:
        raise InputError(f"{run_dir} holds no checkpoint (step-*.pt or best.pt); give the folder of a training run")
    config = TrainConfig.from_dict(state["config"])
    if config.data.top_tokens is not None:
        raise InputError(f"{run_dir} was trained on a folded vocabulary (data.top_tokens={config.data.top_tokens}): its "
                         "ids are not GPT-2 tokens, so it cannot write text; sample a run of the full vocabulary")
    model = GPT(config.model).to(device)
    model.load_state_dict(state["model"])
    model.eval()
    return model, state


def encode_prompt(prompt: str, *, vocab_size: int) -> list[int]:
    """GPT-2 ids of the prompt (`<|endoftext|>` allowed, as nanoGPT); an empty prompt starts from end-of-text."""
    ids = gpt2_encoding().encode(prompt, allowed_special={"<|endoftext|>"}) or [EOT_TOKEN]
    if max(ids) >= vocab_size:
        raise InputError(f"the prompt holds GPT-2 token {max(ids)}, outside this model's vocabulary of {vocab_size} "
                         "ids; use a prompt of the model's vocabulary")
    return ids


def sample(model: GPT, prompt_ids: list[int], *, sampling: Sampling, device: torch.device) -> list[int]:
    """prompt_ids followed by sampling.tokens drawn tokens."""
    generator = torch.Generator(device=device).manual_seed(sampling.seed)
    dtype = resolve_dtype("auto", device) if device.type == "cuda" else torch.float32  # exact on the CPU
    idx = torch.tensor([prompt_ids], dtype=torch.long, device=device)  # (1, T)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        for _ in range(sampling.tokens):
            logits = model.next_token_logits(idx).float() / sampling.temperature  # (1, V)
            if sampling.top_k is not None and sampling.top_k < logits.size(-1):
                kth = torch.topk(logits, sampling.top_k).values[:, -1:]  # (1, 1)
                logits = logits.masked_fill(logits < kth, -float("inf"))
            probs = torch.softmax(logits, dim=-1)
            idx = torch.cat([idx, torch.multinomial(probs, 1, generator=generator)], dim=1)
    return idx[0].tolist()


def sample_text(run_dir: Path, *, prompt: str, sampling: Sampling, device_name: str = "auto") -> tuple[str, dict]:
    """The prompt and its continuation as text, and the checkpoint it came from."""
    device = resolve_device(device_name)
    model, state = load_run(run_dir, device=device)
    ids = sample(model, encode_prompt(prompt, vocab_size=model.config.vocab_size), sampling=sampling, device=device)
    return gpt2_encoding().decode(ids), state


def best_promoted_run(*, study: str, study_name: str | None, steps: int, storage_url: str) -> Path:
    """The folder of the promoted run of the best trial of a sweep (--study-name, or <study>-<steps>)."""
    from sweep.promote import pick_trial
    from sweep.recipe import load_recipe
    from sweep.runs import sweep_study
    from sweep.storage import open_study

    _, swept = open_study(storage_url, study_name or sweep_study(load_recipe(study).name, steps))
    return promoted_run(swept, pick_trial(swept, "best"))
