"""One prediction proven end to end: the proxy's sweeps say the peak LR of a wider model trained longer; the wider
model's own sweep says whether they were right.

    python benchmarks/predict.py --out runs/predict                                     # 2 CPU cores: about an hour
    python benchmarks/predict.py --target-width 512 --proxy-steps 100,200,400 --out $OUT   # on a GPU: the recipe's device auto

1. The proxy (the recipe's model, e.g. mup-proxy at width 64) is swept on one LR grid at several horizons
   (`sweep horizon --steps 50,100,200`), which fits best lr ∝ tokens^b.
2. The prediction for the target (the recipe's model at --target-width, trained --horizon-factor x the longest
   proxy horizon) is what `promote --lr-from horizon --n-embd <width>` would run: the horizon fit's LR at the
   target's length, carried to the target's width by μP (kept) or SP's drift (`sweep transfer`'s fit, if stored).
3. The target is swept on the same grid at its own length (`sweep lr --sampler grid`): its best LR is the bottom of
   its loss-vs-LR curve (the parabola `horizon` and `transfer` use).
4. The target is trained at the predicted LR and at its own best grid LR over --seeds paired seeds (the grid's own
   run is the first seed of the latter): the loss difference with its 95% half-width is the target's noise band.

Reports predicted LR / target's best LR (within x/÷ √2 passes) and the target's loss at the predicted LR minus at
its best (inside the noise band passes). Every study lives in --out/predict.log (open it with optuna-dashboard);
results.json is rewritten after every step, so a run cut short keeps what it found.
"""

import argparse
import json
import math
import sys
from pathlib import Path

import optuna
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sweep.analysis import compare_paired  # noqa: E402
from sweep.cli import main as sweep  # noqa: E402
from sweep.plan import TrialPlan  # noqa: E402
from sweep.promote import peak_lr  # noqa: E402
from sweep.recipe import load_recipe, parse_recipe_text, study_file  # noqa: E402
from sweep.runs import sweep_study  # noqa: E402
from sweep.storage import open_storage  # noqa: E402
from sweep.trust import curve_bottom  # noqa: E402
from train_core import train  # noqa: E402

TRANSFER_TOLERANCE = math.sqrt(2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="mup-proxy", help="the proxy's recipe (a shipped name or a path)")
    parser.add_argument("--proxy-steps", default="50,100,200", help="the proxy's sweep horizons")
    parser.add_argument("--horizon-factor", type=int, default=4, help="the target trains this x the longest horizon")
    parser.add_argument("--target-width", type=int, default=256)
    parser.add_argument("--lr-min", default="5e-4")
    parser.add_argument("--lr-max", default="8e-3")
    parser.add_argument("--grid-points", default="5", help="LRs of every grid, log-spaced over [lr-min, lr-max]")
    parser.add_argument("--warmup", default="10", help="warmup steps of every run")
    parser.add_argument("--seeds", type=int, default=3, help="paired seeds of the noise band")
    parser.add_argument("--out", type=Path, default=Path("runs/predict"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    storage_url = str(args.out / "predict.log")
    grid = ["--storage", storage_url, "--runs-dir", str(args.out / "runs"), "--lr-min", args.lr_min, "--lr-max",
            args.lr_max, "--grid-points", args.grid_points, "--warmup", args.warmup, "-q"]
    results: dict = {"args": {k: str(v) for k, v in vars(args).items()}}

    def keep(key: str, value) -> None:
        results[key] = value
        (args.out / "results.json").write_text(json.dumps(results, indent=1))
        print(key, json.dumps(value), flush=True)

    proxy = load_recipe(args.study)
    target_steps = args.horizon_factor * max(int(s) for s in args.proxy_steps.split(","))
    if sweep(["horizon", "--study", args.study, "--steps", args.proxy_steps, "--max-steps", str(target_steps), *grid]):
        return 1
    keep("prediction", predict(proxy, storage_url=storage_url, steps=target_steps, width=args.target_width,
                               proxy_steps=max(int(s) for s in args.proxy_steps.split(","))))

    target_path = write_target_recipe(proxy.path, width=args.target_width, folder=args.out)
    if sweep(["lr", "--study", str(target_path), "--steps", str(target_steps), "--sampler", "grid", "--pruner", "none",
              *grid]):
        return 1
    target = load_recipe(target_path)
    target_study = optuna.load_study(study_name=sweep_study(target.name, target_steps),
                                     storage=open_storage(storage_url, create=False))
    bottom = curve_bottom(target_study)
    predicted = results["prediction"]["lr"]
    keep("target", {"best_lr": bottom.lr, "at_edge": bottom.at_edge, "curve": bottom.curve,
                    "predicted_over_best": predicted / bottom.lr,
                    "within_sqrt2": abs(math.log(predicted / bottom.lr)) <= math.log(TRANSFER_TOLERANCE) + 1e-12})
    keep("noise_band", noise_band(target_study, target, predicted=predicted, seeds=args.seeds, folder=args.out))
    t, n = results["target"], results["noise_band"]
    edge = " (at an end of the grid: a bound)" if t["at_edge"] else ""
    print(f"predicted lr {predicted:.3g} / target's best {t['best_lr']:.3g}{edge} = x{t['predicted_over_best']:.2f}: "
          f"{'within' if t['within_sqrt2'] else 'NOT within'} x/÷ √2\n"
          f"target's loss at the predicted lr minus at its best grid lr {n['best_grid_lr']:.3g}: "
          f"{n['predicted_minus_best']:+.4f} ± {n['half_width_95']:.4f} (95%, {args.seeds} paired seeds): "
          f"{'inside' if n['inside_band'] else 'OUTSIDE'} the noise band")
    return 0


def predict(proxy, *, storage_url: str, steps: int, width: int, proxy_steps: int) -> dict:
    """The LR `promote --lr-from horizon --n-embd width --max-steps steps` runs for the proxy's best trial."""
    storage = open_storage(storage_url, create=False)
    study = optuna.load_study(study_name=sweep_study(proxy.name, proxy_steps), storage=storage)
    lr, reason, lines = peak_lr(storage=storage, study=study, trial=study.best_trial, recipe=proxy, lr_from="horizon",
                                max_steps=steps, n_embd=width)
    return {"lr": lr, "reason": reason, "steps": steps, "width": width, "lines": lines,
            "proxy_best_lr_at_longest_horizon": study.best_trial.params["lr"]}


def write_target_recipe(proxy_path: Path, *, width: int, folder: Path) -> Path:
    """The proxy's recipe with the target's width (μP's base width stays the proxy's), under a name of its own."""
    values = parse_recipe_text(study_file(proxy_path).read_text())
    values["name"] = f"{values.get('name', Path(proxy_path).stem)}-w{width}"
    if values["model"].get("parametrization") == "mup":
        values["model"].setdefault("mup_base_width", values["model"]["n_embd"])
    values["model"]["n_embd"] = width
    path = folder / f"{values['name']}.yaml"
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


def noise_band(target_study, target, *, predicted: float, seeds: int, folder: Path) -> dict:
    """The target at the predicted LR and at its best grid LR over paired seeds (the grid's run is the first seed)."""
    best = target_study.best_trial
    plan = TrialPlan.from_study(target_study, recipe=target, study_dir=folder / "noise")
    warmup = int(best.params["warmup"])
    first = plan.seed

    def loss(lr: float, seed: int) -> float:
        value = train(plan.trial_config(lr=lr, warmup_steps=warmup, seed=seed)).final_val_loss
        print(json.dumps({"lr": lr, "seed": seed, "val_loss": value}), flush=True)
        return value

    own = [best.value] + [loss(best.params["lr"], s) for s in range(first + 1, first + seeds)]
    at_predicted = [loss(predicted, s) for s in range(first, first + seeds)]
    c = compare_paired(own, at_predicted)  # at the predicted LR minus at the best, per seed
    return {"best_grid_lr": best.params["lr"], "losses_at_best": own, "losses_at_predicted": at_predicted,
            "predicted_minus_best": c.mean_difference, "half_width_95": c.half_width,
            "inside_band": not c.distinguishable or c.mean_difference <= 0}


if __name__ == "__main__":
    raise SystemExit(main())
