"""Storage faults: a torn journal, a dropped PostgreSQL connection, a damaged or read-only SQLite file, a Redis that
lost the study, an unreachable storage found before any work. Each is survived, or refused with one line that says
what happened (exit 1), never a traceback or a silently wrong result."""

import contextlib
import json
import sqlite3
import subprocess
import uuid

import optuna
import pytest
from optuna.trial import TrialState
from sweep_fixtures import load, run_lr, study_values, write_study
from worker_fixtures import (  # noqa: F401 (no_stray_workers: an autouse fixture)
    POSTGRES_URL,
    load_study,
    no_stray_workers,
    redis_db,
    require_postgres,
    start,
    sweep_command,
    tail,
    unique_name,
    wait_exit,
    wait_until,
)

from sweep.cli import main
from sweep.journal import find_damage, tail_damage
from sweep.storage import mark_study, open_storage, study_is_present
from train_core.memory import parameter_count
from train_core.model import GPT

TINY_STEPS = 5


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# --- journal file ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tail_bytes",
    [b'{"op_code":4,"worker_id":"ab', b"\x00\x00\x00\x00\n", b"not json\n[1]\n"],
    ids=["torn-record", "zeros", "garbage-lines"],
)
def test_a_journal_with_a_bad_tail_is_refused_until_repaired_and_never_appended_to(tail_bytes, study, tmp_path, capsys):
    journal = tmp_path / "store" / "sweep.log"
    assert run_lr(study, str(journal), "--trials", "1", "--pruner", "none", steps=TINY_STEPS) == 0
    good = journal.read_bytes()
    journal.write_bytes(good + tail_bytes)
    capsys.readouterr()
    bad_at = len(good)

    for argv in (["status"], ["lr", "--study", str(study), "--steps", str(TINY_STEPS), "--trials", "2", "-q"]):
        code = main([*argv, "--storage", str(journal)])
        line = one_error_line(capsys.readouterr().err)
        assert code == 1, line
        assert f"the last {len(good) + len(tail_bytes) - bad_at} bytes (from offset {bad_at}" in line, line
        assert f"python -m sweep repair-journal {journal}" in line
        assert journal.read_bytes() == good + tail_bytes  # nothing appended after the bad tail

    assert main(["repair-journal", str(journal)]) == 0
    assert "backup" in capsys.readouterr().out
    assert journal.read_bytes() == good  # every whole record kept
    backups = list(journal.parent.glob("sweep.log.*.bak"))
    assert [b.read_bytes() for b in backups] == [good + tail_bytes]
    assert run_lr(study, str(journal), "--trials", "2", "--pruner", "none", steps=TINY_STEPS) == 0
    assert [t.state for t in load(str(journal), f"tiny-{TINY_STEPS}").trials] == [TrialState.COMPLETE] * 2


def test_the_tail_check_before_each_append_finds_what_the_full_scan_finds(tmp_path):
    journal = tmp_path / "j.log"
    records = b"".join(b'{"op_code":%d,"pad":"%s"}\n' % (i, b"x" * 900) for i in range(200))  # > the 64 KiB window
    for tail_bytes in (b"", b'{"op_code":4,', b"\n", b'{"op":1}\n{"op":2', b"y" * 70_000):
        journal.write_bytes(records + tail_bytes)
        full, fast = find_damage(journal), tail_damage(journal)
        assert (full is None) == (fast is None), tail_bytes[:20]
        if full is not None:
            assert (fast.offset, fast.bad_bytes) == (full.offset, full.bad_bytes), tail_bytes[:20]


# --- SQLite ---------------------------------------------------------------------------------------------------------


def test_a_read_only_sqlite_database_fails_with_its_real_cause_in_one_line(study, tmp_path, capsys):
    db = tmp_path / "store" / "sweep.db"
    assert run_lr(study, f"sqlite:///{db}", "--trials", "1", "--pruner", "none", steps=TINY_STEPS) == 0
    capsys.readouterr()

    code = run_lr(study, f"sqlite:///file:{db}?mode=ro&uri=true", "--trials", "2", steps=TINY_STEPS)

    line = one_error_line(capsys.readouterr().err)
    assert code == 1
    assert "attempt to write a readonly database" in line
    assert "exceeding max length" not in line


@contextlib.contextmanager
def immutable(path):
    """The file made immutable (chattr +i): writes fail even for root, as they would on a read-only mount."""
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip(f"chattr +i is not available for {path} here (root ignores file permissions)")
    try:
        yield path
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_a_read_only_journal_fails_with_its_real_cause_in_one_line(study, tmp_path, capsys):
    journal = tmp_path / "sweep.log"
    assert run_lr(study, str(journal), "--trials", "1", "--pruner", "none", steps=TINY_STEPS) == 0
    capsys.readouterr()
    before = journal.read_bytes()

    with immutable(journal):
        code = run_lr(study, str(journal), "--trials", "2", steps=TINY_STEPS)

    line = one_error_line(capsys.readouterr().err)
    assert code == 1
    assert "Operation not permitted" in line or "Permission denied" in line, line
    assert journal.read_bytes() == before


def test_a_malformed_sqlite_database_is_refused_with_its_real_cause_in_one_line(study, tmp_path, capsys):
    db = tmp_path / "sweep.db"
    assert run_lr(study, f"sqlite:///{db}", "--trials", "1", "--pruner", "none", steps=TINY_STEPS) == 0
    capsys.readouterr()
    data = bytearray(db.read_bytes())
    page = sqlite3.connect(db).execute("pragma page_size").fetchone()[0]
    for offset in range(3 * page, len(data), page):  # wreck every b-tree page header after the schema
        data[offset:offset + 16] = b"\x07" * 16
    db.write_bytes(bytes(data))

    code = main(["status", "--storage", f"sqlite:///{db}"])

    line = one_error_line(capsys.readouterr().err)
    assert code == 1
    assert "database disk image is malformed" in line and "(sqlite3" not in line


# --- PostgreSQL -----------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def scratch_postgres_database():
    """postgresql://.../<new database>, dropped afterwards: a test that installs triggers must not touch the shared one."""
    require_postgres()
    import psycopg2
    from sqlalchemy.engine import make_url

    url = make_url(POSTGRES_URL)
    name = f"faults_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(host=url.host, port=url.port or 5432, user=url.username, password=url.password,
                             dbname=url.database)
    admin.autocommit = True
    admin.cursor().execute(f"CREATE DATABASE {name}")
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        admin.cursor().execute(f"DROP DATABASE {name} WITH (FORCE)")
        admin.close()


def drop_connection_once_at_step(url: str, step: int) -> None:
    """A trigger that kills its own connection the first time a trial reports `step`, inside the transaction: what a
    server restart or an idle-connection killer does to a write in flight. The sequence counts outside transactions,
    so the retried write goes through."""
    import psycopg2

    open_storage(url)  # Optuna's tables
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(f"""
            CREATE SEQUENCE drops;
            CREATE FUNCTION drop_once() RETURNS trigger AS $$
            BEGIN
                IF NEW.step = {step} AND nextval('drops') = 1 THEN
                    PERFORM pg_terminate_backend(pg_backend_pid());
                END IF;
                RETURN NEW;
            END $$ LANGUAGE plpgsql;
            CREATE TRIGGER drop_once BEFORE INSERT ON trial_intermediate_values
                FOR EACH ROW EXECUTE FUNCTION drop_once();
        """)


def test_a_postgres_connection_dropped_mid_trial_is_retried_and_the_trial_completes(study, capsys):
    with scratch_postgres_database() as url:
        drop_connection_once_at_step(url, step=3)

        code = run_lr(study, url, "--trials", "2", "--pruner", "none", steps=TINY_STEPS)

        err = capsys.readouterr().err
        trials = load_study(url, f"tiny-{TINY_STEPS}").trials
        assert code == 0, err
        assert [t.state for t in trials] == [TrialState.COMPLETE] * 2, [t.user_attrs.get("fail_reason") for t in trials]
        assert all(sorted(t.intermediate_values) == list(range(TINY_STEPS)) for t in trials)
        import psycopg2

        with psycopg2.connect(url) as conn, conn.cursor() as cur:
            cur.execute("SELECT last_value FROM drops")
            assert cur.fetchone()[0] >= 1  # the connection was really dropped


# --- Redis ----------------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.xfail(
    reason="now and then (2 of 6 full runs here) the sweep is still running 120 s after the FLUSHDB: a second hang "
    "of Optuna's Redis journal after a flush, not yet found (the vanish check's own hang is fixed and tested above)",
    strict=False,
)
def test_a_study_flushed_from_redis_mid_sweep_fails_loudly(data, tmp_path):
    import redis

    study = write_study(tmp_path / "tiny.yaml", study_values(data))
    name = unique_name("faults-flush")
    log = tmp_path / "sweep.log"
    with redis_db() as url:
        proc = start(sweep_command(study, url, name, "--trials", "3", "--pruner", "none", steps=200), tmp_path, log)

        def second_trial_running() -> bool:
            names = optuna.get_all_study_names(storage=open_storage(url))
            return name in names and len(load_study(url, name).trials) >= 2

        wait_until(second_trial_running, timeout=60, what="the second trial")
        redis.Redis.from_url(url).flushdb()
        code = wait_exit(proc, timeout=120, log=log)

    assert code == 1, tail(log)
    assert f"study {name} vanished" in log.read_text(), tail(log)


def test_a_flush_that_restarted_the_redis_journal_mid_write_is_seen_without_waiting_forever():
    """A FLUSHDB between the two commands of a journal append restarts Optuna's numbering past a record that never
    comes: replaying that journal waits for it forever. The sweep's check must still answer, and say the study is gone."""
    import threading

    import redis

    with redis_db() as url:
        optuna.create_study(study_name="flushed", storage=open_storage(url))
        mark_study(url, "flushed")
        client = redis.Redis.from_url(url)
        client.flushdb()
        client.set(":log_number", 1)  # what the append that raced the flush left: record 1, never a record 0
        client.set(":log:1", json.dumps({"op_code": 0, "worker_id": "w", "study_name": "x", "directions": [1]}))
        answers = []
        checker = threading.Thread(target=lambda: answers.append(study_is_present(url, "flushed")), daemon=True)
        checker.start()
        checker.join(timeout=30)  # a bound on a hang, not a synchronisation: the check itself waits on nothing

    assert answers == [False]


# --- order of work --------------------------------------------------------------------------------------------------


def test_an_unreachable_storage_is_found_before_the_corpus_is_tokenized(data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    values = study_values(data)
    values["data"] = {"corpus": "python-stdlib"}
    study = write_study(tmp_path / "corpus.yaml", values)

    code = main(["lr", "--study", str(study), "--steps", "10", "--storage", "postgresql://u@127.0.0.1:1/x"])

    assert code == 2
    assert "cannot open storage" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "data").exists()


# --- a model that cannot fit ----------------------------------------------------------------------------------------


def test_a_model_too_big_for_the_machine_is_refused_before_the_study_is_created(data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    values = study_values(data)
    values["model"]["n_embd"] = 10_000_000
    study = write_study(tmp_path / "huge.yaml", values)
    storage = str(tmp_path / "sweep.log")

    code = run_lr(study, storage, "--trials", "3")

    line = one_error_line(capsys.readouterr().err)
    assert code == 2
    assert "n_embd=10000000" in line and "GiB" in line and "RAM" in line, line
    assert not (tmp_path / "sweep.log").exists()  # no study, no FAIL trials


def test_the_estimate_counts_the_parameters_the_model_has(make_config):
    for model in ({}, {"n_layer": 3, "n_embd": 48, "bias": False}):
        config = make_config(model=model)
        assert parameter_count(config) == GPT(config.model).num_params(non_embedding=False)
