"""What the sweep's live view and final table claim: an ETA that says what it rests on, and labelled losses."""

import optuna
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial
from rich.console import Console

from sweep.report import trials_table
from sweep.view import LiveView, eta_basis

STEPS = 300
DISTS = {"lr": FloatDistribution(1e-4, 1e-1, log=True), "warmup": IntDistribution(0, 30)}


def finished(state: TrialState, *, steps: int, value: float) -> optuna.trial.FrozenTrial:
    return create_trial(
        state=state,
        value=value,
        params={"lr": 1e-3, "warmup": 30},
        distributions=DISTS,
        intermediate_values={s: 5.0 + (steps - s) / 100 for s in range(steps)},
        user_attrs={"steps_done": steps, **({"prune_reason": "median: behind"} if state == TrialState.PRUNED else {})},
    )


def study_with(*trials) -> optuna.Study:
    study = optuna.create_study(study_name="s")
    for trial in trials:
        study.add_trial(trial)
    return study


def test_before_any_trial_finished_the_eta_is_an_upper_bound():
    assert eta_basis([], steps=STEPS) == (300.0, "(an upper bound: every trial runs all 300 steps)")


def test_the_eta_counts_the_mean_steps_finished_trials_ran():
    study = study_with(finished(TrialState.COMPLETE, steps=STEPS, value=3.9),
                       finished(TrialState.PRUNED, steps=100, value=6.0))
    view = LiveView(Console(record=True, width=200))
    view.sweep_started(study, trials=8, steps=STEPS)
    task = view.overall.tasks[0]
    assert task.completed == 400
    assert task.total == 400 + 6 * 200  # six trials to go at the 200 steps the finished ones averaged, not 300
    assert task.fields["basis"] == "(finished trials ran 200 of 300 steps on average)"
    view.trial_started(2, lr=1e-2, warmup=30)
    view.rows[2]["step"] = 250  # a running trial past the mean counts as far as it got
    view._update_total()
    assert view.overall.tasks[0].total == 400 + 250 + 5 * 200


def test_live_and_final_tables_label_train_and_val_loss_apart():
    study = study_with(finished(TrialState.COMPLETE, steps=STEPS, value=3.9),
                       finished(TrialState.PRUNED, steps=100, value=6.0))
    console = Console(record=True, width=200)
    view = LiveView(console)
    view.sweep_started(study, trials=2, steps=STEPS)
    console.print(view._render())
    console.print(trials_table(study))
    live, final = console.export_text().split("best val loss 3.9000")
    for text in (live, final):
        assert "train loss" in text and "val loss" in text
        pruned_row = next(line for line in text.splitlines() if "PRUNED" in line)
        assert "6.0000" not in pruned_row  # a pruned trial's value is a train loss: never in the val loss column
        assert "7.0100" in pruned_row or "5.0100" in pruned_row  # its last smoothed train loss is shown
