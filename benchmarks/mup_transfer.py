"""--- μP --- Does the best peak LR transfer across width? The μTransfer experiment, in one process, on any device.

    python benchmarks/mup_transfer.py --study mup-proxy --widths 64,128,256 --steps 80 --out runs/mup-transfer
    python benchmarks/mup_transfer.py --widths 64,128,256,512 --steps 300 --batch-tokens 4096 --device cuda --out $OUT

For μP and for SP: the recipe's model at every width (head count fixed, μP's base width the recipe's), each trained on
the same LR grid (--lrs: 7 LRs x2 apart by default) for the same steps of the same batch, so the same tokens per
trial, with the same seed; then each width's best LR (the parabola in log LR that `horizon` and `transfer` use), the
drift of log(best LR) on log(width) with its standard error, and for μP the check that matters: the narrowest
width's winning LR trained at the widest width against the widest width's own best, both over --seeds seeds
(paired, as `confirm` pairs them), which says whether the difference is beyond seed noise.

It is `python -m sweep transfer` without Optuna (so it runs where only torch is installed, e.g. a rented GPU), and
it writes results.json after every run, so a run cut short keeps what it finished, and mup-transfer.png at the end.
"""

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sweep.analysis import best_lr, compare_paired, fit_power_law  # noqa: E402
from sweep.params import apply_values  # noqa: E402
from sweep.recipe import load_recipe  # noqa: E402
from sweep.width import at_width  # noqa: E402
from train_core import TrainConfig, train  # noqa: E402

STUDIES = Path(__file__).resolve().parent.parent / "studies"


def trial_config(base: TrainConfig, *, width: int, parametrization: str, lr: float, steps: int, warmup: int,
                 seed: int, batch_tokens: int | None, device: str) -> TrainConfig:
    config = at_width(base, n_embd=width, parametrization=parametrization, flag="--widths")
    batch = config.batch
    if batch_tokens is not None:
        batch = dataclasses.replace(batch, total_batch_size=batch_tokens,
                                    micro_batch_size=min(batch_tokens // config.model.block_size, 64))
    return dataclasses.replace(
        config,
        batch=batch,
        schedule=dataclasses.replace(config.schedule, max_lr=lr, warmup_steps=warmup, max_steps=steps, decay_steps=None),
        eval=dataclasses.replace(config.eval, interval=steps),
        seed=seed,
        device=device,
    )


def bottom(curve: dict[float, float]) -> tuple[float, bool]:
    """(best lr, at an end of the grid) of a loss-by-lr curve."""
    finite = {lr: loss for lr, loss in curve.items() if math.isfinite(loss)}
    winner = min(finite, key=finite.get)
    at_edge = winner in (min(curve), max(curve))
    return (winner if at_edge else best_lr(list(finite.items()))), at_edge


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="mup-proxy")
    parser.add_argument("--widths", default="64,128,256")
    parser.add_argument("--lrs", default=",".join(f"{5e-4 * 2**k:g}" for k in range(7)))
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the widest width's promote check (1: skip it)")
    parser.add_argument("--batch-tokens", type=int, help="tokens per step (default: the recipe's)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--parametrizations", default="mup,sp")
    parser.add_argument("--base-width", type=int, help="μP's base width (default: the recipe's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a swept recipe key set for every run (sweep/params.py), e.g. model.mup_output_alpha=1")
    parser.add_argument("--seed", type=int, help="the grid's seed (default: the recipe's)")
    parser.add_argument("--out", type=Path, default=Path("runs/mup-transfer"))
    args = parser.parse_args()
    recipe = load_recipe(STUDIES / f"{args.study}.yaml" if not args.study.endswith(".yaml") else args.study)
    if args.base_width is not None:  # where μP equals SP: the proxy's width, or e.g. the target's
        model = dataclasses.replace(recipe.train.model, mup_base_width=args.base_width)
        recipe = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, model=model))
    values = {key: float(value) for key, _, value in (text.partition("=") for text in args.set)}
    recipe = dataclasses.replace(recipe, train=apply_values(recipe.train, values))
    if args.seed is not None:
        recipe = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, seed=args.seed))
    widths = [int(w) for w in args.widths.split(",")]
    lrs = [float(x) for x in args.lrs.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "runs": [], "fits": {}}

    def run(parametrization: str, width: int, lr: float, seed: int) -> float:
        config = trial_config(recipe.train, width=width, parametrization=parametrization, lr=lr, steps=args.steps,
                              warmup=args.warmup, seed=seed, batch_tokens=args.batch_tokens, device=args.device)
        started = time.perf_counter()
        result = train(config)
        loss = result.final_val_loss if result.final_val_loss is not None else math.nan
        row = {"parametrization": parametrization, "width": width, "lr": lr, "seed": seed, "val_loss": loss,
               "tokens": result.tokens_seen, "params": result.num_params, "wall_s": round(time.perf_counter() - started, 1)}
        results["runs"].append(row)
        (args.out / "results.json").write_text(json.dumps(results, indent=1))
        print(json.dumps(row), flush=True)
        return loss

    curves: dict[str, dict[int, dict[float, float]]] = {}
    for parametrization in args.parametrizations.split(","):
        curves[parametrization] = {w: {lr: run(parametrization, w, lr, recipe.train.seed) for lr in lrs} for w in widths}
        bottoms = {w: bottom(curve) for w, curve in curves[parametrization].items()}
        inside = [(w, lr) for w, (lr, edge) in bottoms.items() if not edge]
        law = fit_power_law([w for w, _ in inside], [lr for _, lr in inside]) if len(inside) >= 2 else None
        fit = {
            "best_lr": {w: lr for w, (lr, _) in bottoms.items()},
            "at_edge": [w for w, (_, edge) in bottoms.items() if edge],
            "log2_ratio_to_narrowest": {w: math.log2(lr / bottoms[widths[0]][0]) for w, (lr, _) in bottoms.items()},
            "slope": law.exponent if law else None,
            "slope_standard_error": law.exponent_standard_error if law else None,
        }
        if args.seeds > 1:
            fit["promote_check"] = promote_check(curves[parametrization], widths, seeds=args.seeds,
                                                 first_seed=recipe.train.seed, run=lambda w, lr, s: run(parametrization, w, lr, s))
        results["fits"][parametrization] = fit
        (args.out / "results.json").write_text(json.dumps(results, indent=1))
        print(parametrization, json.dumps(fit), flush=True)
    save_plot(curves, results["fits"], args.out / "mup-transfer.png", steps=args.steps)
    return 0


def promote_check(curves: dict[int, dict[float, float]], widths: list[int], *, seeds: int, first_seed: int, run) -> dict:
    """The narrowest width's winning grid LR at the widest width, against the widest width's own best grid LR, over
    `seeds` paired seeds (the grid's own run is the first)."""
    narrow, wide = curves[widths[0]], curves[widths[-1]]
    proxy_lr, own_lr = (min((lr for lr in c if math.isfinite(c[lr])), key=c.get) for c in (narrow, wide))
    if proxy_lr == own_lr:
        return {"proxy_lr": proxy_lr, "own_best_lr": own_lr, "same_lr": True}
    losses = {lr: [wide[lr]] + [run(widths[-1], lr, seed) for seed in range(first_seed + 1, first_seed + seeds)]
              for lr in (proxy_lr, own_lr)}
    c = compare_paired(losses[own_lr], losses[proxy_lr])
    return {"proxy_lr": proxy_lr, "own_best_lr": own_lr, "same_lr": False, "losses": {str(k): v for k, v in losses.items()},
            "proxy_minus_own": c.mean_difference, "half_width_95": c.half_width, "distinguishable": c.distinguishable}


def save_plot(curves, fits, path: Path, *, steps: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(5.5 * len(curves), 4), sharey=True, squeeze=False)
    for ax, (parametrization, by_width) in zip(axes[0], curves.items()):
        colors = plt.cm.viridis([i / max(len(by_width) - 1, 1) for i in range(len(by_width))])
        for (width, curve), color in zip(by_width.items(), colors):
            lrs = sorted(curve)
            best = fits[parametrization]["best_lr"][width]
            ax.plot(lrs, [curve[lr] for lr in lrs], "o-", color=color, markersize=3, label=f"width {width}: {best:.3g}")
            ax.axvline(best, color=color, linestyle="--", linewidth=1)
        slope = fits[parametrization]["slope"]
        ax.set_title(f"{'μP' if parametrization == 'mup' else 'SP'}" + (f": best lr ∝ width^{slope:.2f}" if slope is not None else ""))
        ax.set_xscale("log")
        ax.set_xlabel("peak learning rate")
        ax.legend(fontsize="small")
    axes[0][0].set_ylabel(f"val loss after {steps} steps")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
