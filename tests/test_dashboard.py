"""What a person sees in optuna-dashboard after a sweep and a promote: the real dashboard app, served over real HTTP
on a free local port, read through the JSON API its web page uses.

The sweep has three trials of 10 steps: the anchor, a queued trial with a peak LR of 20 that the stability guard
prunes within a few steps, and a queued sane one; then its best trial is promoted to the recipe's 30 steps.
"""

import json
import threading
import urllib.error
import urllib.request
from wsgiref.simple_server import WSGIRequestHandler, make_server

import optuna_dashboard
import pytest
from optuna.artifacts import FileSystemArtifactStore

from promote_fixtures import (
    MAX_STEPS,
    STUDY,
    load,
    promote_args,
    recipe_values,
    run_sweep,
    working_dir,
    write_recipe,
    write_tokens,
)
from sweep.cli import main

HUGE_LR = 20.0
CURVE_HEADER = b"step,loss,"  # both the sweep's curve CSV and the promoted run's metrics.csv start so


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A sweep (one trial pruned as unstable) and a promote of its best trial, in the default storage."""
    root = tmp_path_factory.mktemp("dashboard")
    data = write_tokens(root / "tokens")
    write_recipe(root / "tiny.yaml", recipe_values(data, lr_max=30.0))
    with working_dir(root):
        assert run_sweep("--trials", "1") == 0  # the anchor
        queued = load(root)
        queued.enqueue_trial({"lr": HUGE_LR, "warmup": 0})
        queued.enqueue_trial({"lr": 2e-2, "warmup": 2})
        assert run_sweep("--trials", "3") == 0
        assert main(promote_args("best")) == 0
    return root


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # one stderr line per request otherwise
        pass


@pytest.fixture(scope="module")
def dashboard(folder):
    """The base URL of optuna-dashboard serving the sweep's storage and artifacts; shut down after the module."""
    app = optuna_dashboard.wsgi(
        f"sqlite:///{folder}/runs/sweep.db", artifact_store=FileSystemArtifactStore(folder / "runs" / "artifacts")
    )
    server = make_server("127.0.0.1", 0, app, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="dashboard", daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def _get(base: str, path: str) -> tuple[bytes, str]:
    with urllib.request.urlopen(base + path, timeout=30) as response:
        assert response.status == 200, path
        return response.read(), response.headers.get("Content-Type", "")


def _json(base: str, path: str) -> dict:
    body, _ = _get(base, path)
    return json.loads(body)


def _study_ids(base: str) -> dict[str, int]:
    return {s["study_name"]: s["study_id"] for s in _json(base, "/api/studies")["study_summaries"]}


def _detail(base: str, name: str) -> dict:
    return _json(base, f"/api/studies/{_study_ids(base)[name]}")


def _attrs(trial_or_study: dict) -> dict[str, str]:
    return {a["key"]: a["value"] for a in trial_or_study["user_attrs"]}


def test_studies_lists_the_sweep_and_the_promoted_study(dashboard):
    assert set(_study_ids(dashboard)) == {STUDY, f"{STUDY}-promoted"}


def test_the_objective_is_named_val_loss_and_the_recipe_reads_as_yaml(dashboard, folder):
    for name in (STUDY, f"{STUDY}-promoted"):
        assert _detail(dashboard, name)["objective_names"] == ["val_loss"], name
    note = optuna_dashboard.get_note(load(folder))
    recipe = (folder / "tiny.yaml").read_text().rstrip()
    assert f"## Recipe\n\n```yaml\n{recipe}\n```" in note and "## Promoted runs" in note


def test_every_sweep_trial_shows_state_params_loss_curve_and_note(dashboard):
    trials = _detail(dashboard, STUDY)["trials"]
    assert [t["state"] for t in trials] == ["Complete", "Pruned", "Complete"]
    for trial in trials:
        params = {p["name"]: p["param_external_value"] for p in trial["params"]}
        assert set(params) == {"lr", "warmup"}
        curve = trial["intermediate_values"]
        assert curve and curve[0]["step"] == 0, trial["number"]
        assert all(isinstance(v["value"], float) for v in curve)
        assert f"**peak lr** {float(params['lr']):.3g}" in trial["note"]["body"]
        assert "**val loss**" in trial["note"]["body"]
    assert {p["name"]: float(p["param_external_value"]) for p in trials[1]["params"]}["lr"] == HUGE_LR


def test_completed_trials_show_their_val_loss_and_cost(dashboard):
    for trial in _detail(dashboard, STUDY)["trials"]:
        if trial["state"] != "Complete":
            continue
        attrs = _attrs(trial)
        assert float(attrs["val_loss"]) == trial["values"][0]
        assert f"**val loss** {float(attrs['val_loss']):.4f}" in trial["note"]["body"]
        assert float(attrs["tokens_per_s"]) > 0
        for key in ("tokens_seen", "flops", "mfu", "wall_s", "seed", "config_hash", "recipe_digest"):
            assert key in attrs, key
        # The curve goes down: the smoothed train loss ends below where it started.
        curve = trial["intermediate_values"]
        assert curve[-1]["value"] < curve[0]["value"]


def test_the_pruned_trial_says_why(dashboard):
    pruned = next(t for t in _detail(dashboard, STUDY)["trials"] if t["state"] == "Pruned")
    reason = _attrs(pruned)["prune_reason"]
    assert reason.startswith(("nan at step", "diverged", "loss spike", "grad norm exploded")), reason
    assert f"**pruned** {reason}" in pruned["note"]["body"]
    assert int(_attrs(pruned)["steps_done"]) < 10


def test_each_trial_has_its_curve_csv_downloadable_over_http(dashboard):
    detail = _detail(dashboard, STUDY)
    study_id = _study_ids(dashboard)[STUDY]
    for trial in detail["trials"]:
        (meta,) = trial["artifacts"]
        assert meta["filename"] == f"trial-{trial['number']}-curve.csv"
        assert meta["mimetype"] == "text/csv"
        body, content_type = _get(dashboard, f"/artifacts/{study_id}/{trial['trial_id']}/{meta['artifact_id']}")
        assert content_type.startswith("text/csv")
        assert body.startswith(CURVE_HEADER), body[:80]
        assert len(body.splitlines()) - 1 == int(_attrs(trial)["steps_done"])  # one row per step run


def test_the_sweep_study_shows_its_recipe_lr_plot_and_promoted_run(dashboard):
    detail = _detail(dashboard, STUDY)
    attrs = _attrs(detail)
    assert "anchor_lr: 0.01" in attrs["recipe"]
    best = min((t for t in detail["trials"] if t["state"] == "Complete"), key=lambda t: t["values"][0])
    promoted = json.loads(attrs[f"promote-{best['number']}"])
    assert (promoted["status"], promoted["steps_done"]) == ("completed", MAX_STEPS)
    assert "Promoted runs" in detail["note"]["body"]
    # The loss-vs-LR plot; each `sweep lr` command attaches the plot as it ends (two commands here).
    plots = detail["artifacts"]
    assert plots and {(p["filename"], p["mimetype"]) for p in plots} == {(f"{STUDY}-lr.png", "image/png")}
    for plot in plots:
        body, content_type = _get(dashboard, f"/artifacts/{_study_ids(dashboard)[STUDY]}/{plot['artifact_id']}")
        assert content_type == "image/png" and body.startswith(b"\x89PNG\r\n\x1a\n")


def test_the_promoted_trial_shows_the_full_run(dashboard, folder):
    study_id = _study_ids(dashboard)[f"{STUDY}-promoted"]
    (trial,) = _json(dashboard, f"/api/studies/{study_id}")["trials"]
    assert trial["state"] == "Complete"
    source = load(folder).best_trial
    params = {p["name"]: float(p["param_external_value"]) for p in trial["params"]}
    assert params == {"lr": source.params["lr"], "warmup": source.params["warmup"]}
    assert [v["step"] for v in trial["intermediate_values"]] == [9, 19, 29]  # evaluations, every 10 steps
    assert trial["values"] == [trial["intermediate_values"][-1]["value"]]
    attrs = _attrs(trial)
    assert (attrs["source_study"], attrs["status"], attrs["steps_done"]) == (STUDY, "completed", str(MAX_STEPS))
    assert f"full run of trial {source.number}" in trial["note"]["body"]
    (meta,) = trial["artifacts"]
    assert meta["filename"] == "metrics.csv"
    body, _ = _get(dashboard, f"/artifacts/{study_id}/{trial['trial_id']}/{meta['artifact_id']}")
    run_dir = folder / "runs" / STUDY / f"promote-{source.number}"
    assert body.startswith(CURVE_HEADER) and body == (run_dir / "metrics.csv").read_bytes()


def test_unknown_study_is_a_404(dashboard):
    with pytest.raises(urllib.error.HTTPError) as error:
        _get(dashboard, "/api/studies/9999")
    assert error.value.code == 404
