"""The sweep's plots: final loss against peak LR (one study, or a curve per study of a family), and the LR range
test's loss against LR.

Both show the region a person decides in: the loss-vs-LR plot clips its y-axis to the basin (a trial pruned early
has a train loss far above it) and draws points beyond the edge on the edge, as open triangles with their value.
"""

import math
from dataclasses import dataclass
from pathlib import Path

from sweep.targets import check_plot
from train_core import atomic_write

BASIN_SPAN = 1.0  # nats above the best val loss the loss-vs-LR plot shows; a 2x LR change moves val loss ~0.1


@dataclass(frozen=True, kw_only=True)
class LrPoint:
    lr: float
    warmup: int
    loss: float
    pruned: bool  # a pruned trial's loss is its last smoothed train loss, not a val loss
    anchor: bool = False


def y_range(points: list[LrPoint]) -> tuple[float, float]:
    """The basin: from just below the best val loss to the worst val loss, at most BASIN_SPAN above the best. Pruned
    trials' train losses do not widen it."""
    vals = [p.loss for p in points if not p.pruned and math.isfinite(p.loss)]
    finite = vals or [p.loss for p in points if math.isfinite(p.loss)] or [0.0]
    best = min(finite)
    top = min(max(finite), best + BASIN_SPAN)
    span = max(top - best, 0.05)
    return best - 0.08 * span, top + 0.12 * span


def draw_lr_plot(points: list[LrPoint], *, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    low, high = y_range(points)
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    warmups = sorted({p.warmup for p in points})
    colors = plt.cm.viridis([i / max(len(warmups) - 1, 1) * 0.85 for i in range(len(warmups))])
    edge = high - 0.03 * (high - low)
    off_label = "beyond the axis (value written)"
    for warmup, color in zip(warmups, colors):
        done = sorted((p for p in points if p.warmup == warmup and not p.pruned), key=lambda p: p.lr)
        pruned = [p for p in points if p.warmup == warmup and p.pruned]
        ax.plot([p.lr for p in done], [min(p.loss, edge) for p in done], "-", color=color, alpha=0.6)
        ax.plot([p.lr for p in done if p.loss <= high], [p.loss for p in done if p.loss <= high], "o", color=color,
                label=f"warmup {warmup}: final val loss")
        shown = [p for p in pruned if math.isfinite(p.loss) and p.loss <= high]
        ax.scatter([p.lr for p in shown], [p.loss for p in shown], marker="x", color=color, s=40,
                   label=f"warmup {warmup}: pruned, last train loss" if pruned else None)
        for p in [*done, *pruned]:
            if not (math.isfinite(p.loss) and p.loss <= high):
                ax.scatter([p.lr], [edge], marker="^", facecolors="none", edgecolors=color, s=50, label=off_label)
                off_label = None
                text = f"{p.loss:.2f}" if math.isfinite(p.loss) else "nan"
                ax.annotate(text + (" (pruned)" if p.pruned else ""), (p.lr, edge), textcoords="offset points",
                            xytext=(0, -12), ha="center", fontsize=7, color=color)
    vals = [p for p in points if not p.pruned and math.isfinite(p.loss)]
    if vals:
        best = min(vals, key=lambda p: p.loss)
        ax.scatter([best.lr], [best.loss], marker="*", s=260, color="crimson", zorder=5,
                   label=f"best: lr {best.lr:.3g}, val {best.loss:.4f}")
    for p in points:
        if p.anchor:
            ax.axvline(p.lr, color="grey", linestyle=":")
            ax.annotate(f"anchor lr {p.lr:.3g}", (p.lr, low), textcoords="offset points", xytext=(3, 4), fontsize=8,
                        color="dimgrey")
    ax.set_ylim(low, high)
    ax.set_xscale("log")
    if len({p.lr for p in points}) == 1:  # one LR: give the log axis a width
        ax.set_xlim(points[0].lr / 2, points[0].lr * 2)
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel("loss at the trial's end")
    _finish(fig, ax, title=title, path=path)


def draw_range_plot(lrs: list[float], losses: list[float], *, steepest: float, lowest: float, diverged: float | None,
                    bounds: tuple[float, float], title: str, path: Path) -> None:
    """Loss against LR on a log axis, with where it falls fastest, where it is lowest, where it diverged, and the
    suggested sweep bounds shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finite = [(lr, loss) for lr, loss in zip(lrs, losses) if math.isfinite(loss)]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    ax.plot([lr for lr, _ in finite], [loss for _, loss in finite], color="tab:blue", lw=1.2, label="train loss")
    ax.axvspan(*bounds, color="tab:green", alpha=0.12,
               label=f"suggested sweep bounds {bounds[0]:.3g}–{bounds[1]:.3g}")
    ax.axvline(steepest, color="tab:green", linestyle="--", label=f"falls fastest at {steepest:.3g}")
    ax.axvline(lowest, color="tab:orange", linestyle="--", label=f"lowest at {lowest:.3g}")
    if diverged is not None:
        ax.axvline(diverged, color="tab:red", linestyle=":", label=f"diverged at {diverged:.3g}")
    if finite:
        values = sorted(loss for _, loss in finite)
        ax.set_ylim(values[0] - 0.3, min(values[-1], values[0] + 3 * (values[len(values) // 2] - values[0]) + 1) + 0.3)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (grows geometrically, one step each)")
    ax.set_ylabel("train loss")
    _finish(fig, ax, title=title, path=path)


def _finish(fig, ax, *, title: str, path: Path) -> None:
    """Title, grid and legend, then the PNG written."""
    ax.set_title(title)
    ax.grid(alpha=0.25, which="both")
    ax.legend(fontsize="small")
    save_figure(fig, path)


def save_figure(fig, path: Path, *, dpi: int = 120) -> Path:
    """The figure laid out and written as a PNG at path, then freed (pyplot keeps every open figure). A file at path
    that is not a plot this tool wrote is refused, and left as it is."""
    import matplotlib.pyplot as plt

    check_plot(path, name=f"plot {path}")
    fig.tight_layout()
    # Atomically: a worker killed mid-write, or two workers plotting one study, never leave a torn PNG behind.
    atomic_write(path, lambda f: fig.savefig(f, dpi=dpi, format="png"))
    plt.close(fig)
    return path


def draw_curves(bottoms: dict, *, path: Path, title: str, ylabel: str) -> Path:
    """Final val loss vs peak LR (log axis), one curve per study of a family (widths, batch sizes), each study's best LR
    marked: dashed, or dotted where it lies at an end of the range. `bottoms`: label -> trust.CurveBottom."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    colors = plt.cm.viridis([i / max(len(bottoms) - 1, 1) for i in range(len(bottoms))])
    for (label, bottom), color in zip(bottoms.items(), colors):
        lrs, losses = zip(*bottom.curve)
        ax.plot(lrs, losses, "o-", color=color, markersize=3, label=f"{label}: best {bottom.lr:.3g}")
        ax.axvline(bottom.lr, color=color, linestyle=":" if bottom.at_edge else "--", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize="small")
    return save_figure(fig, path)
