"""sweep/record.py owns what a study stores: no other module spells an attr key, what it writes reads back, and a
study's record version decides whether this code reads it."""

import ast
import dataclasses
import inspect
from pathlib import Path

import optuna
import pytest

from sweep import record
from sweep.lr import open_study
from sweep.plan import TrialPlan
from sweep.recipe import load_recipe
from sweep.runs import horizon_study, transfer_study
from sweep.transfer import width_lr
from sweep.trust import horizon_lr
from sweep.record import (
    RECORD_VERSION,
    PromoteRun,
    SearchSpace,
    check_version,
    load_study_checked,
    promote_runs,
    search_space,
    swept_model,
    swept_recipe,
)
from train_core.errors import InputError

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "studies" / "default.yaml"
# The key argument of the calls that write an attr: study or trial, and the storage's own.
SETTERS = {"set_user_attr": 0, "set_system_attr": 0, "set_trial_user_attr": 1, "set_trial_system_attr": 1,
           "set_study_user_attr": 1, "set_study_system_attr": 1}
ATTRS = ("user_attrs", "system_attrs")


def known_keys() -> set[str]:
    """Every key sweep/record.py names: its classes' string constants, the fields it stores, the promoted runs' prefix.
    Read from the module, so a key added there is known here."""
    keys = {record.PROMOTE_PREFIX}
    for _, cls in inspect.getmembers(record, inspect.isclass):
        if cls.__module__ == record.__name__:
            keys |= {v for k, v in vars(cls).items() if not k.startswith("_") and isinstance(v, str)}
            keys |= {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    return keys


def _is_attrs(node: ast.expr) -> bool:
    """An expression ending in user_attrs or system_attrs (`trial.user_attrs`, a parameter named user_attrs)."""
    return (isinstance(node, ast.Attribute) and node.attr in ATTRS) or (isinstance(node, ast.Name) and node.id in ATTRS)


def _key_nodes(node: ast.AST) -> list[ast.expr]:
    """The expressions that `node` uses as attr keys."""
    keys = []
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        index = SETTERS.get(node.func.attr)
        if index is not None and len(node.args) > index:
            keys.append(node.args[index])
        if node.func.attr in ("get", "pop", "setdefault") and _is_attrs(node.func.value) and node.args:
            keys.append(node.args[0])
    if isinstance(node, ast.Call):
        keys += [k for kw in node.keywords if kw.arg in ATTRS and isinstance(kw.value, ast.Dict) for k in kw.value.keys]
    if isinstance(node, ast.Subscript) and _is_attrs(node.value):
        keys.append(node.slice)
    if isinstance(node, ast.Compare):
        operands = [node.left, *node.comparators]
        keys += [operands[i] for i, op in enumerate(node.ops)
                 if isinstance(op, (ast.In, ast.NotIn)) and _is_attrs(operands[i + 1])]
    return keys


def spelled_keys(source: str) -> list[tuple[int, str]]:
    """(line, text) of every string literal used as an attr key, and of every literal naming a promoted run."""
    found = []
    for node in ast.walk(ast.parse(source)):
        found += [(key.lineno, key.value) for key in _key_nodes(node)
                  if isinstance(key, ast.Constant) and isinstance(key.value, str)]
        is_text = isinstance(node, ast.Constant) and isinstance(node.value, str)
        if is_text and node.value.startswith(record.PROMOTE_PREFIX):
            found.append((node.lineno, node.value))
    return found


def test_no_module_but_record_spells_an_attr_key():
    known = known_keys()
    files = [p for folder in ("sweep", "benchmarks") for p in sorted((ROOT / folder).rglob("*.py"))
             if p != ROOT / "sweep" / "record.py"]
    assert len(files) > 20
    problems = []
    for path in files:
        for line, key in spelled_keys(path.read_text()):
            where = f"{path.relative_to(ROOT)}:{line}"
            problems.append(f"{where}: {key!r} is spelled here; use its name in sweep/record.py" if key in known else
                            f"{where}: {key!r} is not a key of sweep/record.py; add it there and use its name")
    assert not problems, "\n".join(problems)


def test_the_check_finds_a_literal_key_wherever_a_key_goes():
    source = "\n".join([
        'trial.set_user_attr("anchor", True)',
        'storage.set_trial_user_attr(trial_id, "fail_reason", reason)',
        'study.enqueue_trial(params, user_attrs={"retry_of": 3})',
        'x = trial.user_attrs["steps_done"]',
        'y = t.user_attrs.get("new_key", 0)',
        'z = "duplicate_of" not in trial.user_attrs',
        'w = trial.system_attrs.get("fixed_params", {})',
        'run_dir = folder / "promote-3"',
        'fine = trial.params["lr"], trial.user_attrs.get(TrialAttr.ANCHOR), {"lr": 1}',
    ])
    assert spelled_keys(source) == [(1, "anchor"), (2, "fail_reason"), (3, "retry_of"), (4, "steps_done"),
                                    (5, "new_key"), (6, "duplicate_of"), (7, "fixed_params"), (8, "promote-3")]


def test_a_key_added_to_record_is_known(monkeypatch):
    assert {"anchor", "fail_reason", "recipe", "search_space", "record_version", "promoted_trial"} <= known_keys()
    monkeypatch.setattr(record.TrialAttr, "NEW_KEY", "new_key", raising=False)
    assert "new_key" in known_keys()


# --- what is written reads back ------------------------------------------------------------------------------------


def _plan(tmp_path) -> TrialPlan:
    return TrialPlan.from_flags(recipe=load_recipe(RECIPE), steps=20, schedule="wsd", lr_min=None, lr_max=None,
                                warmup=None, seed=None, pruner_name="none", study_dir=tmp_path, checkpoint_every=20)


def _open(plan: TrialPlan, storage, name: str = "s") -> optuna.Study:
    return open_study(plan, storage=storage, storage_url="sqlite:///memory", study_name=name, trials=3,
                      sampler="random", grid_points=3)


def test_a_study_written_now_carries_the_version_and_reads_back(tmp_path):
    plan, storage = _plan(tmp_path), optuna.storages.InMemoryStorage()
    study = _open(plan, storage)
    assert study.user_attrs["record_version"] == RECORD_VERSION and check_version(study) == RECORD_VERSION
    assert search_space(study) == plan.search_space() and search_space(study).schedule == "wsd"
    assert swept_recipe(study)["search"]["anchor_lr"] == plan.recipe.search.anchor_lr
    assert swept_model(study) == plan.recipe.train.model
    assert load_study_checked(storage=storage, study_name="s").study_name == "s"


def test_a_study_without_a_version_is_version_0_and_reads_the_same(tmp_path):
    """As the code before record_version wrote it (sweep/lr.py at f8c4528)."""
    plan = _plan(tmp_path)
    study = optuna.create_study(study_name="old", storage=optuna.storages.InMemoryStorage())
    study.set_user_attr("search_space", {"lr": [plan.lr_min, plan.lr_max], "warmup": list(plan.warmups.values),
                                         "warmup_is_range": plan.warmups.is_range, "steps": 20, "schedule": "wsd",
                                         "seed": plan.seed})
    study.set_user_attr("recipe", plan.recipe.text)
    assert check_version(study) == 0
    assert search_space(study) == plan.search_space()
    assert swept_recipe(study)["search"]["anchor_lr"] == plan.recipe.search.anchor_lr
    assert swept_model(study) is None  # made before the model was kept: it trained its recipe's
    assert TrialPlan.from_study(study, recipe=plan.recipe, study_dir=tmp_path).steps == 20


def test_a_study_of_a_newer_version_is_refused_in_one_line(tmp_path):
    storage = optuna.storages.InMemoryStorage()
    study = _open(_plan(tmp_path), storage, name="future")
    study.set_user_attr("record_version", 999)
    for read in (lambda: load_study_checked(storage=storage, study_name="future"),
                 lambda: _open(_plan(tmp_path), storage, name="future")):  # `sweep lr` continuing it
        with pytest.raises(InputError) as refused:
            read()
        message = str(refused.value)
        assert "\n" not in message and "future" in message and "999" in message, message
        assert f"up to {RECORD_VERSION}" in message, message


def test_a_promoted_run_keeps_its_stored_form():
    """The attr promote-<trial> as promote has always written it: the optional fields only once known."""
    running = {"status": "running", "run_dir": "runs/s/promote-0", "trial": 0, "lr": 1e-3, "warmup": 2,
               "max_steps": 10, "steps_done": 4, "tokens": 256, "final_val_loss": None, "best_val_loss": None}
    started = running | {"started_at": "2026-01-01T00:00:00", "promoted_trial": 0}
    done = started | {"status": "completed", "wall_s": 1.5, "tokens_per_s": 100.0}
    for attr in (running, started, done):
        assert PromoteRun.from_attr(attr).to_attr() == attr
        assert list(PromoteRun.from_attr(attr).to_attr()) == list(attr)  # in the same order
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    study.set_user_attr("promote-0", done)
    study.set_user_attr("recipe", "name: x")
    assert promote_runs(study) == {"promote-0": PromoteRun.from_attr(done)}


def test_the_search_space_keeps_its_stored_form(tmp_path):
    attr = _plan(tmp_path).search_space().to_attr()
    assert list(attr) == ["lr", "warmup", "warmup_is_range", "steps", "schedule", "seed"]
    assert SearchSpace.from_attr(attr).to_attr() == attr
    del attr["warmup_is_range"]
    assert not SearchSpace.from_attr(attr).warmup_is_range  # read as TrialPlan.from_study always read it


def test_the_horizon_and_transfer_fits_of_a_newer_version_are_refused(tmp_path):
    """`promote --lr-from horizon` and `promote --n-embd` read these summaries."""
    recipe, storage = load_recipe(RECIPE), optuna.storages.InMemoryStorage()
    law = {"exponent": -0.5}  # never read: the version is checked first
    for name in (horizon_study(recipe.name), transfer_study(recipe.name, "sp")):
        summary = optuna.create_study(study_name=name, storage=storage)
        summary.set_user_attr("law", law)
        summary.set_user_attr("record_version", 999)
    sweep = optuna.create_study(study_name="s", storage=storage)
    for read in (lambda: horizon_lr(storage=storage, recipe=recipe, steps=100),
                 lambda: width_lr(storage=storage, study=sweep, recipe=recipe, lr=1e-3, source="the trial's lr",
                                  n_embd=128)):
        with pytest.raises(InputError, match=f"version 999, but this code reads versions up to {RECORD_VERSION}"):
            read()
