"""Does `sweep batch`'s fit predict the best LR at a batch it never saw? Fit best lr ∝ batch^b on some batch sizes of a
finished `sweep batch`, predict the peak LR of a larger batch, and compare with that batch's own grid bottom.

    python -m sweep batch --batch-tokens 1024,2048,4096,8192 --steps 320 --grid-points 5 --warmup 0
    python benchmarks/batch_prediction.py --fit 1024,2048 --target 8192 --steps 320

Prints the fit, the predicted LR, the target's bottom, their ratio and whether it is within x/÷ √2, and the target's
val loss at the grid point nearest the prediction against its best. Reads the studies `<recipe>-b<tokens>-<steps>`
from the storage (the default one of --runs-dir unless --storage names another).
"""

import argparse
import math
from pathlib import Path

import optuna
from optuna.trial import TrialState

from sweep.batch import fit_batch
from sweep.recipe import load_recipe
from sweep.runs import Runs, batch_recipe_name, sweep_study
from sweep.storage import open_storage
from sweep.trust import curve_bottom

TOLERANCE = math.sqrt(2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="default", help="the recipe `sweep batch` ran (default: default)")
    parser.add_argument("--fit", required=True, help="batch sizes to fit on, e.g. 1024,2048")
    parser.add_argument("--target", type=int, required=True, help="the batch size to predict, e.g. 8192")
    parser.add_argument("--steps", type=int, default=300, help="the sweep's --steps (default 300)")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"))
    parser.add_argument("--storage", help="default: sqlite:///<runs-dir>/sweep.db")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    recipe = load_recipe(args.study)
    storage = open_storage(args.storage or Runs(args.runs_dir).default_storage(), create=False)
    base = recipe.train.batch.total_batch_size
    trial_tokens = args.steps * base

    def study(tokens: int) -> optuna.Study:
        name = sweep_study(batch_recipe_name(recipe.name, tokens), trial_tokens // tokens)
        return optuna.load_study(study_name=name, storage=storage)

    fitted = [int(t) for t in args.fit.split(",")]
    fit = fit_batch({t: study(t) for t in fitted}, trial_tokens=trial_tokens)
    for tokens, bottom in fit.bottoms.items():
        edge = " (at an end of the grid)" if bottom.at_edge else ""
        print(f"fit on batch {tokens:,}: best lr {bottom.lr:.4g}{edge}")
    if fit.law is None:
        print("no fit: fewer than two fitted batches have their bottom inside the grid")
        return
    predicted = fit.law.predict(args.target)
    target = study(args.target)
    bottom = curve_bottom(target)
    ratio = predicted / bottom.lr
    print(f"{fit.law.describe('batch')}; predicted lr at batch {args.target:,} ({args.target // max(fitted)}x the "
          f"largest fitted): {predicted:.4g}")
    within = "within" if abs(math.log(ratio)) <= math.log(TOLERANCE) else "NOT within"
    edge = ", an end of its grid: only a bound" if bottom.at_edge else ""
    print(f"batch {args.target:,}'s own bottom: {bottom.lr:.4g}{edge}; predicted / bottom = {ratio:.3f}, {within} x/÷ √2")
    complete = target.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    nearest = min(complete, key=lambda t: abs(math.log(t.params["lr"] / predicted)))
    best = min(t.value for t in complete)
    print(f"its val loss at the grid lr nearest the prediction ({nearest.params['lr']:.4g}): {nearest.value:.4f}, "
          f"{nearest.value - best:+.4f} from its best {best:.4f}")


if __name__ == "__main__":
    main()
