"""--- μP --- `python -m sweep coord-check`: the coordinate check of microsoft/mup, the standard test that a μP
implementation is right.

At each width, under SP and under μP, the recipe's model trains a few steps at the recipe's peak LR (held constant,
no warmup) while forward hooks record the mean |activation| of the embedding output (the first block's input), of
each block's attention and MLP outputs, and of the logits, at every training forward pass (step t's value is the
model after t - 1 updates). Under μP these stay flat as the width grows; under SP they grow, the logits fastest:
Adam moves every weight by about the LR whatever the width, and the output sums over n_embd of those moves.
"""

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.table import Table

from sweep.plots import save_figure
from sweep.width import at_width
from train_core import GPT, TrainConfig, train

PARAMETRIZATIONS = ("sp", "mup")
FLAT = 2.0  # an activation whose scale changes by less than this factor from the narrowest to the widest is flat
LOGIT_ROWS = 256  # token positions whose logits are measured: the full (tokens x vocab) tensor never exists


@dataclass(frozen=True)
class CoordCheck:
    widths: list[int]
    steps: int
    scales: dict[str, dict[int, dict[str, list[float]]]]  # [parametrization][width][activation]: one per step

    @property
    def activations(self) -> list[str]:
        first = next(iter(self.scales.values()))
        return list(first[self.widths[0]])

    def growth(self, parametrization: str, activation: str, *, step: int = -1) -> float:
        """The activation's scale at the widest width over the narrowest's, at `step` (default the last)."""
        runs = self.scales[parametrization]
        return runs[self.widths[-1]][activation][step] / runs[self.widths[0]][activation][step]

    def spread(self, parametrization: str, activation: str, *, step: int = -1) -> float:
        """The activation's largest scale over its smallest, across all widths, at `step` (default the last)."""
        values = [self.scales[parametrization][w][activation][step] for w in self.widths]
        return max(values) / min(values)


def run_coord_check(train_config: TrainConfig, *, widths: list[int], steps: int, on_run=None) -> CoordCheck:
    """Train `steps` steps at every width under SP and μP; `on_run(parametrization, width)` is told before each."""
    sched = train_config.schedule
    short = dataclasses.replace(
        train_config,
        schedule=dataclasses.replace(sched, shape="constant", warmup_steps=0, max_steps=steps, decay_steps=None),
        eval=dataclasses.replace(train_config.eval, interval=steps, iters=1),
    )
    configs = {  # every width checked before any trains
        (parametrization, width): at_width(short, n_embd=width, parametrization=parametrization, flag="--widths")
        for parametrization in PARAMETRIZATIONS
        for width in widths
    }
    scales: dict[str, dict[int, dict[str, list[float]]]] = {p: {} for p in PARAMETRIZATIONS}
    for (parametrization, width), config in configs.items():
        if on_run:
            on_run(parametrization, width)
        with _ActivationRecorder(micro_steps=config.grad_accum_steps(world_size=1)) as recorder:
            train(config)
        scales[parametrization][width] = recorder.per_step()
    return CoordCheck(widths=list(widths), steps=steps, scales=scales)


class _ActivationRecorder:
    """Mean |activation| of the GPT that trains inside the with-block, at each training (grad-enabled) forward pass.

    train() builds its model itself, so a global forward pre-hook finds the model at its first forward and hooks its
    modules; evaluation forwards (no grad) are not recorded. With gradient accumulation a step's first micro-batch
    stands for the step.
    """

    def __init__(self, *, micro_steps: int):
        self.micro_steps = micro_steps
        self.values: dict[str, list[float]] = {}
        self.handles = []
        self.model: GPT | None = None

    def __enter__(self) -> "_ActivationRecorder":
        self.handles.append(torch.nn.modules.module.register_module_forward_pre_hook(self._find_model))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()

    def per_step(self) -> dict[str, list[float]]:
        return {name: values[:: self.micro_steps] for name, values in self.values.items()}

    def _find_model(self, module: torch.nn.Module, args) -> None:
        if self.model is not None or not isinstance(module, GPT):
            return
        self.model = module
        blocks = module.transformer.h
        self._record("embedding", blocks[0], lambda args, out: args[0], pre=True)
        for i, block in enumerate(blocks):
            self._record(f"attn.{i}", block.attn, lambda args, out: out)
            self._record(f"mlp.{i}", block.mlp, lambda args, out: out)
        self._record("logits", module.transformer.ln_f, self._logits)

    def _logits(self, args, hidden: torch.Tensor) -> torch.Tensor:
        rows = hidden.reshape(-1, hidden.size(-1))[:LOGIT_ROWS].float()
        return rows @ self.model.transformer.wte.weight.float().T * self.model.output_multiplier

    def _record(self, name: str, module: torch.nn.Module, pick, *, pre: bool = False) -> None:
        self.values[name] = []

        def hook(module, args, out=None):
            if torch.is_grad_enabled():
                with torch.no_grad():
                    self.values[name].append(pick(args, out).float().abs().mean().item())

        register = module.register_forward_pre_hook if pre else module.register_forward_hook
        self.handles.append(register(hook))


def verdict(growth: float) -> str:
    if growth >= FLAT:
        return "grows"
    return "shrinks" if growth <= 1 / FLAT else "flat"


def coord_table(check: CoordCheck) -> Table:
    narrow, wide = check.widths[0], check.widths[-1]
    table = Table(title=f"mean |activation| at step {check.steps}, width {wide} over width {narrow}", header_style="bold")
    table.add_column("activation")
    for name in ("SP", "max/min", "", "μP", "max/min", ""):
        table.add_column(name, justify="right")
    for activation in check.activations:
        row = [activation]
        for parametrization in PARAMETRIZATIONS:
            growth = check.growth(parametrization, activation)
            row += [f"x{growth:.2f}", f"{check.spread(parametrization, activation):.2f}", verdict(growth)]
        table.add_row(*row)
    return table


def save_coord_plot(check: CoordCheck, path: Path, *, title: str) -> Path:
    """One row of panels per activation, SP left and μP right (shared y), width on a log x-axis, a line per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    activations = check.activations
    fig, axes = plt.subplots(len(activations), 2, figsize=(7, 1.7 * len(activations)), sharex=True, sharey="row",
                             squeeze=False)
    colors = plt.cm.viridis([i / max(check.steps - 1, 1) for i in range(check.steps)])
    for row, activation in enumerate(activations):
        for col, parametrization in enumerate(PARAMETRIZATIONS):
            ax = axes[row][col]
            runs = check.scales[parametrization]
            for step, color in enumerate(colors):
                ax.plot(check.widths, [runs[w][activation][step] for w in check.widths], "o-", color=color,
                        markersize=2.5, linewidth=1, label=f"step {step + 1}" if step in (0, check.steps - 1) else None)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_title(f"{'SP' if parametrization == 'sp' else 'μP'}: {activation}", fontsize=8)
            ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=6)
    for ax in axes[-1]:
        ax.set_xlabel("width (n_embd)", fontsize=8)
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path, dpi=72)


def run_and_save(recipe, *, widths: list[int], steps: int, out: Path, on_run) -> tuple[CoordCheck, Path, Path]:
    """The check on the recipe's model at `widths`, its plot at `out` and its scales beside it as JSON."""
    check = run_coord_check(recipe.train, widths=widths, steps=steps, on_run=on_run)
    plot = save_coord_plot(check, out, title=f"{recipe.name}: mean |activation| vs width, lr {recipe.train.schedule.max_lr:g}")
    scales = plot.with_suffix(".json")
    scales.write_text(json.dumps(dataclasses.asdict(check)))
    return check, plot, scales
