"""Shared prefixes between WSD trials of different lengths.

A WSD trial holds its peak LR until its cool-down starts, so with the same LR, warmup steps and seed, a 300-step
trial passes through the very state a 150-step trial had at its cool-down start (step 120). The store keeps that
state (the trainer's stable-phase checkpoint) and hands it to the longer trial, which then trains only from step 120:
`sweep horizon --schedule wsd` sweeps its horizons shortest first, so each one starts where the last one cooled down.
The trainer checks that the two schedules agree on every step before the branch point, so a branched trial ends
exactly where a trial trained from step 0 would.
"""

import hashlib
import json
import shutil
from pathlib import Path

from optuna.trial import TrialState

from sweep.record import TrialAttr
from train_core import CheckpointManager, TrainConfig


class BranchStore:
    """One stable-phase checkpoint per (model, data, batch, optimizer, seed, LR, warmup): the furthest seen."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def take(self, config: TrainConfig, out_dir: Path) -> int | None:
        """Put the furthest stored state this run passes through into out_dir; the step it is at, or None."""
        end = config.schedule.stable_end
        if end is None:
            return None
        usable = {s: p for s, p in self._stored(config).stable_files().items() if s <= end}
        if not usable:
            return None
        step = max(usable)
        CheckpointManager(out_dir).adopt(usable[step], step=step)
        return step

    def put(self, config: TrainConfig, out_dir: Path) -> None:
        """Keep the stable-phase checkpoint a finished (or pruned) run left in out_dir, if it goes further."""
        made = CheckpointManager(out_dir).stable_files()
        if not made:
            return
        step = max(made)
        stored = self._stored(config)
        older = stored.stable_files()
        if any(s >= step for s in older):
            return
        stored.folder.mkdir(parents=True, exist_ok=True)
        shutil.move(made[step], stored.folder / made[step].name)
        for path in older.values():
            path.unlink(missing_ok=True)

    def _stored(self, config: TrainConfig) -> CheckpointManager:
        """The folder of states shared by runs that differ only in length (and in eval and checkpoint settings)."""
        shared = config.to_dict()
        for key in ("eval", "checkpoint"):
            shared.pop(key)
        shared["schedule"] = {k: v for k, v in shared["schedule"].items() if k not in ("max_steps", "decay_steps")}
        digest = hashlib.sha256(json.dumps(shared, sort_keys=True).encode()).hexdigest()[:16]
        return CheckpointManager(self.folder / digest)


def shared_prefix_summary(studies) -> str:
    """How many steps the WSD trials of `studies` trained, against training each from step 0: one line."""
    trained = full = branched = 0
    for study in studies:
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
            if TrialAttr.DUPLICATE_OF in t.user_attrs or TrialAttr.STEPS_DONE not in t.user_attrs:
                continue
            start = t.user_attrs.get(TrialAttr.BRANCHED_FROM_STEP, 0)
            branched += start > 0
            trained += t.user_attrs[TrialAttr.STEPS_DONE] - start
            full += t.user_attrs[TrialAttr.STEPS_DONE]
    share = f" ({1 - trained / full:.0%} saved)" if full else ""
    return (f"shared prefix: {branched} trials started from a shorter trial's stable phase; trained {trained:,} of "
            f"{full:,} steps{share}")
