"""The pruning audit: real Optuna pruners replayed over complete curves, in the order a one-worker sweep finishes them.

Synthetic curves pin down what the replay decides; a real tiny grid sweep run with --pruner none --guard nonfinite
checks the command end to end.
"""

import math

import pytest

from sweep.audit import Audit, AuditRow, Curve, orders, replay, summary
from sweep.cli import main
from sweep_fixtures import STEPS, load, run_lr

STEPS_SYNTH = 100
INITIAL = math.log(512)


def cosine_curve(*, floor: float, lag: float) -> list[float]:
    """A loss from INITIAL down to `floor`; `lag` > 0 keeps it high mid-run and lets it catch up by the end, as a high
    peak LR does under a cosine compressed to the trial."""
    out = []
    for step in range(STEPS_SYNTH):
        progress = step / (STEPS_SYNTH - 1)
        out.append(floor + (INITIAL - floor) * math.exp(-step / 10) + lag * math.sin(math.pi * progress))
    return out


def curve(number: int, lr: float, *, floor: float, lag: float = 0.0, anchor: bool = False) -> Curve:
    loss = cosine_curve(floor=floor, lag=lag)
    return Curve(number=number, lr=lr, warmup=0, anchor=anchor, val_loss=loss[-1], loss=loss,
                 grad_norm=[1.0] * STEPS_SYNTH)


# The anchor and two low LRs lead mid-run; the highest LR is behind mid-run but ends best.
CURVES = [
    curve(0, 1e-3, floor=3.30, anchor=True),
    curve(1, 5e-4, floor=3.40),
    curve(2, 2e-3, floor=3.20),
    curve(3, 8e-3, floor=3.00, lag=0.8),
]


def run(order, pruner="median", guard="windowed", curves=CURVES):
    return replay(curves, order=order, pruner=pruner, guard=guard, steps=STEPS_SYNTH, initial_loss=INITIAL,
                  name="t")


def test_a_trial_behind_mid_run_is_stopped_only_once_enough_peers_finished():
    late = run([0, 1, 2, 3])  # two completed peers before it: the median pruner compares
    assert 3 in late.stops and late.stops[3].reason.startswith("median at step ")
    early = run([0, 3, 1, 2])  # one completed peer: too few for the median pruner, the winner survives
    assert 3 not in early.stops
    assert early.steps_run == 4 * STEPS_SYNTH - sum(STEPS_SYNTH - 1 - s.step for s in early.stops.values())


def test_the_summary_counts_the_winner_stopped_and_what_was_found_instead():
    replays = [run([0, 1, 2, 3]), run([0, 3, 1, 2])]
    audit = Audit(study_name="s", steps=STEPS_SYNTH, curves=CURVES, band=0.05,
                  rows=[AuditRow(pruner="median", guard="windowed", prune_from=0.25, replays=replays)])
    s = summary(audit, audit.rows[0])
    assert audit.best.number == 3 and [c.number for c in audit.in_band] == [3]
    assert (s["best_stopped"], s["band_stopped"], s["orders"]) == (1, 1, 2)
    assert s["regret_max"] == pytest.approx(CURVES[2].val_loss - CURVES[3].val_loss)
    assert s["lr_ratio_max"] == pytest.approx(4.0)
    assert 0 < s["saved_min"] <= s["saved_max"] < 1


def test_no_pruner_and_a_calm_run_stop_nothing():
    result = run([0, 1, 2, 3], pruner="none")
    assert result.stops == {} and result.steps_run == 4 * STEPS_SYNTH


def test_the_one_step_guard_stops_a_recovering_spike_and_the_windowed_one_does_not():
    loss = cosine_curve(floor=3.1, lag=0.0)
    loss[50] += 5.0
    spiky = Curve(number=4, lr=4e-3, warmup=0, anchor=False, val_loss=loss[-1], loss=loss,
                  grad_norm=[1.0] * STEPS_SYNTH)
    curves = [*CURVES, spiky]
    assert run([0, 4], pruner="none", guard="one-step", curves=curves).stops[4].step == 50
    assert run([0, 4], pruner="none", guard="windowed", curves=curves).stops == {}


def test_orders_put_the_anchor_first_and_differ():
    shuffles = orders(CURVES, count=6, seed=1)
    assert all(o[0] == 0 and sorted(o) == [0, 1, 2, 3] for o in shuffles)
    assert len({tuple(o) for o in shuffles}) > 1


def test_sweeps_of_fewer_trials_are_judged_against_the_best_they_ran():
    shuffles = orders(CURVES, count=8, seed=2, trials=3)
    assert all(len(o) == 3 and o[0] == 0 for o in shuffles)
    without_winner = [o for o in shuffles if 3 not in o]
    assert without_winner  # some draws leave the grid's best out
    replays = [run(o) for o in without_winner]
    audit = Audit(study_name="s", steps=STEPS_SYNTH, curves=CURVES, band=0.05,
                  rows=[AuditRow(pruner="median", guard="windowed", prune_from=0.5, replays=replays)])
    s = summary(audit, audit.rows[0])
    assert (s["best_stopped"], s["regret_max"]) == (0, 0.0)  # the draw's own best kept: pruning cost nothing


@pytest.mark.slow
def test_audit_command_over_a_real_grid_sweep(study, tmp_path, capsys):
    storage = f"sqlite:///{tmp_path}/a.db"
    assert run_lr(study, storage, "--sampler", "grid", "--grid-points", "3", "--pruner", "none",
                  "--guard", "nonfinite") == 0
    capsys.readouterr()
    assert main(["audit", "--study-name", f"tiny-{STEPS}", "--storage", storage, "--orders", "3", "--markdown"]) == 0
    out = capsys.readouterr().out
    assert f"audit of tiny-{STEPS}: " in out and "3 orders, anchor first" in out
    for pruner in ("median", "asha", "hyperband"):
        assert f"| {pruner} " in out
    assert "| none      | windowed |      |    0% (0%–0%) |" in out  # the guard alone stops none of these healthy trials


def test_a_later_start_keeps_the_late_catching_winner(tmp_path):
    """The winner is behind mid-run (its sine bump peaks at half the run) and its smoothed loss is ahead only near the
    end: compared from 98% of the run, the median pruner no longer stops it."""
    assert 3 in run([0, 1, 2, 3]).stops
    late = replay(CURVES, order=[0, 1, 2, 3], pruner="median", guard="windowed", steps=STEPS_SYNTH,
                  initial_loss=INITIAL, name="t", prune_from=0.98)
    assert 3 not in late.stops


@pytest.mark.parametrize("bad", ["1.5", "x", ""])
def test_audit_refuses_prune_from_outside_the_run(bad, capsys):
    assert main(["audit", "--study-name", "s", "--prune-from", bad]) == 2
    err = capsys.readouterr().err
    assert "expected fractions of the run in [0, 1) like 0.25,0.67" in err and err.count("\n") == 1


def test_audit_refuses_a_study_whose_curves_were_cut(study, tmp_path, capsys):
    storage = f"sqlite:///{tmp_path}/a.db"
    assert run_lr(study, storage, "--trials", "1") == 0
    capsys.readouterr()
    assert main(["audit", "--study-name", f"tiny-{STEPS}", "--storage", storage]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: study tiny-{STEPS} ran with --pruner median --guard all: the audit needs every curve "
                   "complete; sweep with --pruner none --guard nonfinite (e.g. --sampler grid --grid-points 9)"]
    assert load(storage).user_attrs["pruner"] == "median"
