"""Stacked trials (train_core/stacked.py, sweep --stack): K runs of one study trained as one stacked model.

A member must follow its unstacked twin: the same weights, batches and AdamW, only the forward and backward batched
over the members (vmap), which sums in another order. Tolerances, measured on the default study's model (8 steps,
LRs 1e-3, 4e-3 and 1.6e-2, the top of its search range):
- float32: every step's loss within 1e-4 nats of the twin's: a few float32 ulps of a loss of 10.8, grown through 8
  steps, stay far below it, and it is 100x below the 0.01-0.1 nats the LRs of a sweep differ by at step 8.
- bfloat16: bf16 keeps 3 significant digits, so reordered sums differ by ~1e-3 per op. At 1e-3 and 4e-3 the largest
  difference measured was 3e-4 nats: the bound is 5e-3. At 1.6e-2 the run is spiky in its first steps and rounding
  alone moves it by up to 1.9 nats: the unstacked run with its loss computed another, equally valid way (the full
  cross-entropy instead of the chunked one) is that far from the twin, while the stacked member was 0.86 away. So
  in bf16 a member's bound is 5e-3 or its twin's own rounding spread (the full-loss run's distance), the larger.
"""

import math
import signal
import sysconfig

import numpy as np
import optuna
import pytest
import torch

import train_core.stacked
from sweep.cli import main
from sweep.objective import Objective, StepReporter, TrialRun
from sweep.plan import TrialPlan
from sweep.recipe import load_recipe
from sweep.runs import Runs
from sweep.workers import enqueue_retry
from sweep_fixtures import STEPS, load, run_lr, study_values, write_study
from train_core import InputError, StackMember, TrainConfig, resolve_dtype, train, train_stacked
from train_core.data import write_nanogpt_bin
from train_core.tokenizer import gpt2_encoding

TOLERANCE = {"float32": 1e-4, "bfloat16": 5e-3}  # nats: see the module docstring
TINY_TOLERANCE = 1e-5  # the tiny test model in float32: measured differences were below 1e-6


def schedule(lr: float, warmup: int) -> dict:
    return {"schedule": {"max_lr": lr, "warmup_steps": warmup}}


def stacked_losses(configs: list[TrainConfig], *, stack: int) -> list[list[float]]:
    results = {id(member.config): result for member, result in
               train_stacked([StackMember(config=c) for c in configs], stack=stack)}
    return [results[id(c)].losses for c in configs]


def max_difference(a: list[float], b: list[float]) -> float:
    assert len(a) == len(b)
    return max(abs(x - y) for x, y in zip(a, b))


# --- train_core: a member and its twin --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def default_study_tokens(tmp_path_factory):
    """Real text (the Python standard library) as GPT-2 tokens, for the default study's 50k-vocabulary model."""
    folder = tmp_path_factory.mktemp("gpt2-tokens")
    root = sysconfig.get_paths()["stdlib"]
    text = "".join(open(f"{root}/{name}", encoding="utf-8").read() for name in ("argparse.py", "dataclasses.py"))
    ids = np.array(gpt2_encoding().encode_ordinary(text))
    write_nanogpt_bin(folder / "train.bin", ids[:-5_000])
    write_nanogpt_bin(folder / "val.bin", ids[-5_000:])
    return folder


# Emulated bf16 is ~100x slower (trainer.resolve_dtype): the default study's model in bf16 would take the suite's
# whole budget on a CPU without it, where `dtype: auto` never trains in bf16 anyway.
NATIVE_BF16 = resolve_dtype("auto", torch.device("cpu")) == torch.bfloat16


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", pytest.param("bfloat16", marks=pytest.mark.skipif(
    not NATIVE_BF16, reason="this CPU runs bf16 only emulated, ~100x slower"))])
def test_stacked_members_follow_their_unstacked_twins_on_the_default_study(default_study_tokens, dtype):
    recipe = load_recipe("default")
    base = recipe.train.to_dict() | {
        "data": {"train": str(default_study_tokens / "train.bin"), "val": str(default_study_tokens / "val.bin"),
                 "corpus": None},
        "eval": {"interval": 8, "iters": 2}, "dtype": dtype, "device": "cpu", "peak_flops": 1e11,
    }
    configs = [TrainConfig.from_dict(base | {"schedule": base["schedule"] | {"max_lr": lr, "warmup_steps": warmup,
                                                                             "max_steps": 8}})
               for lr, warmup in ((1e-3, 2), (4e-3, 0), (1.6e-2, 4))]
    twins = [train(c) for c in configs]
    results = {id(m.config): r for m, r in train_stacked([StackMember(config=c) for c in configs], stack=3)}
    for config, twin in zip(configs, twins):
        member = results[id(config)]
        assert member.status == "completed" and member.steps_done == 8
        bound = TOLERANCE[dtype]
        if dtype == "bfloat16":
            full_loss = TrainConfig.from_dict(config.to_dict() | {"model": config.to_dict()["model"] | {"loss": "full"}})
            bound = max(bound, max_difference(train(full_loss).losses, twin.losses))
        assert max_difference(member.losses, twin.losses) < bound, (member.losses, twin.losses, bound)
        assert abs(member.final_val_loss - twin.final_val_loss) < bound
    # The LRs differ by far more than the tolerance: the comparison could tell members apart.
    finals = sorted(t.losses[-1] for t in twins)
    assert min(b - a for a, b in zip(finals, finals[1:])) > 2 * TOLERANCE[dtype], finals


def test_a_stopped_member_leaves_and_the_next_takes_its_place(make_config):
    configs = [make_config(**schedule(lr, warmup)) for lr, warmup in ((1e-2, 2), (3e-3, 0), (3e-2, 4))]
    first, second, third = (StackMember(config=c) for c in configs)
    seen = {0: [], 2: []}
    first.callback = lambda m: seen[0].append(m.step) or m.step == 3  # stops after its 4th step
    third.callback = lambda m: seen[2].append(m.step)
    order, results = [], {}
    for member, result in train_stacked([first, second, third], stack=2):
        order.append(member)
        results[id(member)] = result
    assert order == [first, second, third]  # the third joined when the first left, and ended after the second
    assert results[id(first)].status == "stopped" and results[id(first)].steps_done == 4 and seen[0] == [0, 1, 2, 3]
    assert seen[2] == list(range(10)), "the third member starts at its own step 0 beside a member at step 4"
    for config, member in zip(configs[1:], (second, third)):
        assert results[id(member)].status == "completed"
        assert max_difference(results[id(member)].losses, train(config).losses) < TINY_TOLERANCE


def test_a_member_resumes_from_its_checkpoint_stacked_or_not(make_config, tmp_path):
    """A member's checkpoints are the trainer's: a stopped member resumes in a stack, and an unstacked run resumes
    from a member's folder; both continue the uninterrupted run's curve."""
    config, other = make_config(**schedule(1e-2, 2)), make_config(**schedule(3e-3, 0))
    uninterrupted = train(config).losses
    for resume_stacked, folder in ((True, tmp_path / "a"), (False, tmp_path / "b")):
        stopping = StackMember(config=config, out_dir=folder, callback=lambda m: m.step == 5)
        list(train_stacked([stopping, StackMember(config=other)], stack=2))  # checkpoints every 4 steps: one at 4
        steps = []
        resumed = StackMember(config=config, out_dir=folder, callback=lambda m: steps.append(m.step))
        if resume_stacked:
            ((_, result),) = [(m, r) for m, r in train_stacked([resumed, StackMember(config=other)], stack=2)
                              if m is resumed]
        else:
            result = train(config, out_dir=folder, callback=resumed.callback)
        assert steps[0] == 4 and result.status == "completed"
        assert max_difference(result.losses, uninterrupted[4:]) < TINY_TOLERANCE
    # A finished member's folder says so: joining again trains nothing.
    ((_, again),) = train_stacked([StackMember(config=config, out_dir=tmp_path / "a")], stack=2)
    assert again.steps_done == 10 and again.losses == []


def test_members_of_one_stack_share_everything_but_their_schedule(make_config):
    with pytest.raises(InputError, match="must share seed"):
        list(train_stacked([StackMember(config=make_config()), StackMember(config=make_config(seed=1))], stack=2))


def test_a_non_finite_member_ends_alone(make_config):
    blowing_up, steady = make_config(**schedule(1e6, 0)), make_config(**schedule(1e-2, 2))
    results = {id(m.config): r for m, r in
               train_stacked([StackMember(config=blowing_up), StackMember(config=steady)], stack=2)}
    assert results[id(blowing_up)].status == "nonfinite"
    assert results[id(steady)].status == "completed" and math.isfinite(results[id(steady)].final_val_loss)
    assert max_difference(results[id(steady)].losses, train(steady).losses) < TINY_TOLERANCE


def test_members_of_a_compiled_recipe_train_their_own_models_uncompiled(make_config):
    """A process compiles one model per model config (trainer.build_model): stacked members would share it."""
    configs = [make_config(compile=True, **schedule(lr, 0)) for lr in (3e-3, 3e-2)]
    for config, losses in zip(configs, stacked_losses(configs, stack=2)):
        twin = train(TrainConfig.from_dict(config.to_dict() | {"compile": False}))
        assert max_difference(losses, twin.losses) < TINY_TOLERANCE


# --- the sweep: trials as always ----------------------------------------------------------------------------------


@pytest.fixture
def fp32_study(data, tmp_path, monkeypatch):
    """The tiny study in float32 (auto is bfloat16 on a CPU that has it), so that members match to TINY_TOLERANCE."""
    monkeypatch.chdir(tmp_path)
    return write_study(tmp_path / "tiny.yaml", study_values(data) | {"dtype": "float32"})


@pytest.mark.slow
def test_a_stacked_sweep_prunes_and_completes_trials_as_the_unstacked_one(fp32_study, tmp_path):
    study = fp32_study
    code = run_lr(study, str(tmp_path / "s.log"), "--sampler", "random", "--pruner", "median", "--trials", "6",
                  "--stack", "3")
    assert code == 0
    trials = load(str(tmp_path / "s.log")).get_trials()
    states = [t.state for t in trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) + states.count(optuna.trial.TrialState.PRUNED) == 6
    assert optuna.trial.TrialState.PRUNED in states, "the median pruner stopped none of 6 trials"
    for t in trials:
        assert len(t.intermediate_values) == (STEPS if t.state == optuna.trial.TrialState.COMPLETE else
                                              t.user_attrs["steps_done"]), "a trial reports every step"
        assert "wall_s" in t.user_attrs and "tokens_per_s" in t.user_attrs
    unstacked = main(["lr", "--study", str(study), "--steps", str(STEPS), "--storage", str(tmp_path / "u.log"), "-q",
                      "--sampler", "random", "--pruner", "none", "--trials", "1"])
    assert unstacked == 0
    anchor = load(str(tmp_path / "u.log")).get_trials()[0]
    assert abs(trials[0].value - anchor.value) < TINY_TOLERANCE, "the anchor's val loss, stacked and not"


@pytest.mark.slow
def test_a_stacked_sweep_retries_a_dead_trial_from_its_checkpoint(fp32_study, tmp_path):
    study = fp32_study
    storage = str(tmp_path / "s.log")
    assert run_lr(study, storage, "--pruner", "none", "--trials", "1") == 0
    optuna_study = load(storage)
    plan = TrialPlan.from_study(optuna_study, recipe=load_recipe(study), study_dir=Runs(tmp_path / "runs").study(
        optuna_study.study_name))
    params = {"lr": 5e-3, "warmup": 2}
    config = plan.trial_config(lr=params["lr"], warmup_steps=params["warmup"])
    # A trial whose worker died after step 12, leaving its checkpoint at step 10 in its folder.
    optuna_study.enqueue_trial(params)
    dead = optuna_study.ask()
    train(config.__class__.from_dict(config.to_dict() | {"checkpoint": {"interval": 10, "keep_last": 1}}),
          out_dir=plan.study_dir / f"trial-{dead.number}", callback=lambda m: m.step == 11)
    optuna_study.tell(dead, state=optuna.trial.TrialState.FAIL)
    enqueue_retry(optuna_study, number=dead.number, params=params, user_attrs={}, counts=True)

    assert run_lr(study, storage, "--pruner", "none", "--trials", "3", "--stack", "2") == 0
    (retry,) = [t for t in load(storage).get_trials() if t.user_attrs.get("retry_of") == dead.number]
    assert retry.state == optuna.trial.TrialState.COMPLETE and retry.user_attrs["resumed_at_step"] == 10
    assert abs(retry.value - train(config).final_val_loss) < TINY_TOLERANCE


@pytest.mark.slow
def test_an_interrupted_stack_fails_every_member_and_the_same_command_continues_them(fp32_study, tmp_path, monkeypatch):
    """A SIGTERM at step 7, taken by the sweep's Interrupts in the second member's report: the first member reported
    that step, the last two had not. Each ends as an unstacked interrupted trial: FAIL, interrupted, a retry queued
    that does not count towards --max-retries, and the same command continues all four from their step-5 checkpoints."""
    storage = str(tmp_path / "s.log")
    args = ("--pruner", "none", "--trials", "4", "--stack", "4", "--ckpt-every", "5")
    report = StepReporter.__call__

    def sigterm_at_step_7_of_trial_1(reporter: StepReporter, metrics) -> bool:
        if reporter.trial.number == 1 and metrics.step == 7:
            signal.raise_signal(signal.SIGTERM)  # as a scheduler sends it
        return report(reporter, metrics)

    with monkeypatch.context() as patch:
        patch.setattr(StepReporter, "__call__", sigterm_at_step_7_of_trial_1)
        assert run_lr(fp32_study, storage, *args) == 130
    trials = load(storage).get_trials()
    assert [(t.number, t.state, t.user_attrs.get("fail_reason")) for t in trials[:4]] == [
        (n, optuna.trial.TrialState.FAIL, "interrupted") for n in range(4)]
    retries = trials[4:]
    assert [(t.state, t.user_attrs["retry_of"], t.user_attrs["retries"]) for t in retries] == [
        (optuna.trial.TrialState.WAITING, n, 0) for n in range(4)]

    assert run_lr(fp32_study, storage, *args) == 0
    retries = load(storage).get_trials()[4:]
    assert [(t.state, t.user_attrs["resumed_at_step"]) for t in retries] == [
        (optuna.trial.TrialState.COMPLETE, 5)] * 4


@pytest.mark.slow
@pytest.mark.parametrize(("stack", "code", "completed"), [(2, 0, 3), (3, 1, 0)])
def test_a_stack_whose_step_fails_fails_every_member_and_the_sweep_goes_on(fp32_study, tmp_path, monkeypatch, capsys,
                                                                           stack, code, completed):
    """An error inside the stacked step fails each of its members with the reason, as study.optimize's catch does for
    one trial, and the next stack trains the trials the budget still asks for; unless those were the third failure in
    a row, which stops a sweep stacked or not (exit 1)."""
    calls = []
    step = train_core.stacked.stacked_step

    def fails_at_the_third_step(slots):
        calls.append(len(slots))
        if len(calls) == 3:
            raise RuntimeError("the device fell over")
        return step(slots)

    monkeypatch.setattr(train_core.stacked, "stacked_step", fails_at_the_third_step)
    storage = str(tmp_path / "s.log")
    assert run_lr(fp32_study, storage, "--pruner", "none", "--trials", "3", "--stack", str(stack)) == code
    assert "warning: a stack of trials failed: RuntimeError: the device fell over" in capsys.readouterr().err
    trials = load(storage).get_trials()
    assert [(t.state, t.user_attrs.get("fail_reason")) for t in trials[:stack]] == [
        (optuna.trial.TrialState.FAIL, "RuntimeError: the device fell over")] * stack
    assert [t.state for t in trials[stack:]] == [optuna.trial.TrialState.COMPLETE] * completed


@pytest.mark.slow
@pytest.mark.parametrize(("owner", "stage", "trial_of"), [
    (Objective, "begin", lambda objective, trial: trial),
    (TrialRun, "finish", lambda run, result: run.trial),
])
def test_a_trial_that_fails_to_start_or_to_finish_fails_alone(fp32_study, tmp_path, monkeypatch, owner, stage,
                                                              trial_of):
    """Readying a trial and recording its result happen outside the stacked step: a failure there is that trial's
    alone, as unstacked, and the stack goes on."""
    original = getattr(owner, stage)

    def fails_for_trial_1(self, arg):
        if trial_of(self, arg).number == 1:
            raise RuntimeError("no room left")
        return original(self, arg)

    monkeypatch.setattr(owner, stage, fails_for_trial_1)
    storage = str(tmp_path / "s.log")
    assert run_lr(fp32_study, storage, "--pruner", "none", "--trials", "3", "--stack", "2") == 0
    trials = load(storage).get_trials()
    assert [(t.state, t.user_attrs.get("fail_reason")) for t in trials] == [
        (optuna.trial.TrialState.FAIL, "RuntimeError: no room left") if t.number == 1 else
        (optuna.trial.TrialState.COMPLETE, None) for t in trials] and len(trials) == 4


# --- bad input: exit 2, one line, nothing written -----------------------------------------------------------------


@pytest.mark.parametrize(("flags", "says"), [
    (["--stack", "0"], "--stack: must be a positive number of trials or auto, got '0'"),
    (["--stack", "8", "--sampler", "grid", "--grid-points", "2"], "the grid sampler has 6 points"),
    (["--stack", "auto", "--param", "optimizer.weight_decay=0:0.2"],
     "--stack auto trains trials that differ only in schedule, eval, checkpoint, but this sweep varies "
     "optimizer.weight_decay from trial to trial"),
])
def test_bad_stacks_exit_2_in_one_line(study, tmp_path, capsys, flags, says):
    code = main(["lr", "--study", str(study), "--steps", str(STEPS), "--storage", str(tmp_path / "s.log"), *flags])
    err = capsys.readouterr().err
    assert code == 2 and says in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "s.log").exists()


def test_a_stack_that_cannot_fit_exits_2_in_one_line(study, tmp_path, capsys):
    """The tiny model needs ~0.2 MB: 10^8 of them at once fit no machine's memory."""
    code = main(["lr", "--study", str(study), "--steps", str(STEPS), "--storage", str(tmp_path / "s.log"),
                 "--stack", "100000000"])
    err = capsys.readouterr().err
    assert code == 2 and "for each of 100000000 stacked trials" in err and "smaller --stack" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "s.log").exists()
