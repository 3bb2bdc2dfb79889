"""Storage faults: a torn journal, a dropped PostgreSQL connection, a damaged or read-only SQLite file, a Redis that
lost the study, an unreachable storage found before any work. Each is survived, or refused with one line that says
what happened (exit 1), never a traceback or a silently wrong result."""

import contextlib
import json
import math
import re
import sqlite3
import subprocess
import uuid

import optuna
import pytest
import torch
from optuna.trial import TrialState
from sweep_fixtures import load, run_lr, study_values, write_study
from worker_fixtures import (  # noqa: F401 (no_stray_workers: an autouse fixture)
    POSTGRES_URL,
    load_study,
    no_stray_workers,
    flush_redis,
    redis_db,
    redis_keys,
    require_postgres,
    start,
    sweep_command,
    tail,
    unique_name,
    wait_exit,
    wait_until,
)

from sweep.cli import main
from sweep.storage.journal import CheckedRedisBackend, find_damage, tail_damage
from sweep.lr import check_study_exists
from sweep.recipe import load_recipe
import sweep.storage.opening as storage_module
from sweep.storage import open_storage
from train_core.errors import FaultError, InputError
from train_core.memory import check_fits, device_memory, parameter_count, training_bytes
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


@pytest.mark.parametrize("fault", ["deleted", "replaced"])
def test_a_journal_file_deleted_or_replaced_under_a_process_is_said_and_not_written_to(fault, tmp_path):
    journal = tmp_path / "sweep.log"
    study = optuna.create_study(study_name="s", storage=open_storage(str(journal)))
    study.enqueue_trial({"lr": 1e-3})
    other = tmp_path / "other.log"
    optuna.create_study(study_name="other", storage=open_storage(str(other)))
    if fault == "deleted":
        journal.unlink()
    else:
        other.replace(journal)  # another journal moved into its place, as a restore from a backup would
    before = journal.read_bytes() if journal.exists() else None

    for call in (lambda: study.trials, lambda: study.set_user_attr("after", 1)):
        with pytest.raises(FaultError, match="was deleted or replaced by another file while this process used it"):
            call()

    assert (journal.read_bytes() if journal.exists() else None) == before  # not recreated, nothing appended


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_a_study_deleted_mid_sweep_is_a_fault_that_names_it(kind, tmp_path):
    url = f"sqlite:///{tmp_path}/sweep.db" if kind == "sqlite" else str(tmp_path / "sweep.log")
    storage = open_storage(url)
    optuna.create_study(study_name="s", storage=storage)
    check_study_exists(storage, storage_url=url, study_name="s")

    optuna.delete_study(study_name="s", storage=open_storage(url))  # another process: `optuna delete-study`

    with pytest.raises(FaultError, match=f"study s was deleted from {re.escape(url)} mid-sweep"):
        check_study_exists(storage, storage_url=url, study_name="s")


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


def drop_connections(url: str, *, table: str, when: str, times: int = 1) -> None:
    """A trigger that kills its own connection the first `times` times a row of `table` matching `when` is inserted,
    inside the transaction: what a server restart or an idle-connection killer does to a write in flight. The sequence
    counts outside transactions, so a retried write goes through once the drops are spent."""
    import psycopg2

    open_storage(url)  # Optuna's tables
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(f"""
            CREATE SEQUENCE drops;
            CREATE FUNCTION drop_once() RETURNS trigger AS $$
            BEGIN
                IF {when} THEN  -- nested: SQL's AND need not evaluate its left side first
                    IF nextval('drops') <= {times} THEN
                        PERFORM pg_terminate_backend(pg_backend_pid());
                    END IF;
                END IF;
                RETURN NEW;
            END $$ LANGUAGE plpgsql;
            CREATE TRIGGER drop_once BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION drop_once();
        """)


def connections_dropped(url: str) -> int:
    """How often a row drop_connections watches was inserted (the first `times` times, its connection was dropped)."""
    import psycopg2

    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT last_value FROM drops")
        return cur.fetchone()[0]


@pytest.mark.parametrize(
    "table, when, times",
    # Optuna itself tries a trial's creation 5 times: 6 drops get past it.
    [
        pytest.param("trial_intermediate_values", "NEW.step = 3", 1, id="a report mid-trial"),
        pytest.param("trials", "NEW.state = 'RUNNING'", 6, id="the creation of a trial", marks=pytest.mark.slow),
    ],
)
def test_a_postgres_connection_dropped_mid_sweep_is_retried_and_every_trial_completes(table, when, times, study,
                                                                                     capsys):
    with scratch_postgres_database() as url:
        drop_connections(url, table=table, when=when, times=times)

        code = run_lr(study, url, "--trials", "2", "--pruner", "none", steps=TINY_STEPS)

        err = capsys.readouterr().err
        trials = load_study(url, f"tiny-{TINY_STEPS}").trials
        assert code == 0, err
        assert [t.state for t in trials] == [TrialState.COMPLETE] * 2, [t.user_attrs.get("fail_reason") for t in trials]
        assert all(sorted(t.intermediate_values) == list(range(TINY_STEPS)) for t in trials)
        assert connections_dropped(url) > times  # the connection was really dropped, `times` times


@contextlib.contextmanager
def connection_killed_before_statement(url: str, *, number: int, matching: str = ""):
    """Inside the block, the connection that runs the `number`-th SQL statement containing `matching` is terminated by
    the server just before that statement runs (once): a drop between two statements of one storage call. Yields the
    statements seen up to the drop."""
    import psycopg2
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    seen = []

    def kill(conn, cursor, statement, parameters, context, executemany):
        if matching in statement and len(seen) < number:
            seen.append(statement)
            if len(seen) == number:
                with psycopg2.connect(url) as admin, admin.cursor() as cur:
                    cur.execute("SELECT pg_terminate_backend(%s)", (cursor.connection.info.backend_pid,))

    event.listen(Engine, "before_cursor_execute", kill)
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", kill)


def test_a_connection_dropped_between_two_statements_of_one_call_is_retried():
    """The next statement of a transaction whose connection dropped raises SQLAlchemy's PendingRollbackError, with the
    drop only as its context, which Optuna wraps in a StorageInternalError. Seen under chaos (a kill every 0.2 s): the
    call was not retried, and the worker ended with "the storage failed"."""
    with scratch_postgres_database() as url:
        storage = open_storage(url)
        study = optuna.create_study(study_name="s", storage=storage)
        study.enqueue_trial({"lr": 1e-3})
        study_id = storage.get_study_id_from_name("s")

        with connection_killed_before_statement(url, number=2) as seen:
            trials = storage.get_all_trials(study_id)

        assert len(seen) == 2  # the drop really happened, mid-call
        assert [t.system_attrs["fixed_params"] for t in trials] == [{"lr": 1e-3}]


def test_a_postgres_connection_dropped_while_the_storage_is_opened_is_retried():
    """A connection cut while Optuna checks its tables (the server restarting as a worker starts): the worker ended
    with "cannot open storage ...: server closed the connection unexpectedly" (exit 2), seen under chaos."""
    with scratch_postgres_database() as url:
        open_storage(url)  # Optuna's tables

        with connection_killed_before_statement(url, number=1, matching="version_info") as seen:
            storage = open_storage(url)

        assert len(seen) == 1  # the drop really happened
        assert optuna.get_all_study_names(storage=storage) == []


# --- Redis ----------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_study_flushed_from_redis_mid_sweep_fails_loudly(data, tmp_path):
    study = write_study(tmp_path / "tiny.yaml", study_values(data))
    name = unique_name("faults-flush")
    log = tmp_path / "sweep.log"
    with redis_db() as url:
        proc = start(sweep_command(study, url, name, "--trials", "3", "--pruner", "none", steps=200), tmp_path, log)

        def second_trial_running() -> bool:
            names = optuna.get_all_study_names(storage=open_storage(url))
            return name in names and len(load_study(url, name).trials) >= 2

        wait_until(second_trial_running, timeout=60, what="the second trial")
        flush_redis(url)
        code = wait_exit(proc, timeout=120, log=log)
        left = redis_keys(url)

    lines = log.read_text().splitlines()
    assert code == 1, tail(log)
    assert [line for line in lines if "was emptied mid-run" in line] == [lines[-1]], tail(log)
    assert "Traceback" not in log.read_text(), tail(log)
    assert left == []  # nothing written into the emptied database


def redis_records(url: str) -> list[bytes]:
    """The Redis journal's records, in order."""
    import redis

    client = redis.Redis.from_url(url)
    return [client.get(f":log:{n}") for n in range(int(client.get(":log_number")) + 1)]


def test_a_study_made_on_a_redis_that_does_not_persist_is_warned_about_once(study, capsys):
    import redis

    with redis_db() as url:
        persists = redis.Redis.from_url(url).config_get("appendonly")["appendonly"] == "yes"  # this server's own setting
        made = run_lr(study, url, "--trials", "1", "--pruner", "none", steps=TINY_STEPS)
        made_err = capsys.readouterr().err
        continued = run_lr(study, url, "--trials", "2", "--pruner", "none", steps=TINY_STEPS)
        continued_err = capsys.readouterr().err

    assert (made, continued) == (0, 0)
    warned = [line for line in made_err.splitlines() if "has appendonly no" in line]
    assert len(warned) == (0 if persists else 1), made_err
    assert all(line.startswith(f"warning: Redis at {url} has appendonly no") for line in warned), warned
    assert "appendonly" not in continued_err  # said once, by the process that made the study


def journal_of(url: str, records: int) -> None:
    """A study in the Redis journal at url, holding at least `records` records."""
    study = optuna.create_study(study_name="s", storage=open_storage(url))
    while len(study.trials) < records:
        study.enqueue_trial({"lr": 1e-3})


def within(seconds: float, call) -> list:
    """[call()'s result] or [its exception], or [] if it did not return in time (it hangs)."""
    import threading

    answers = []

    def run():
        try:
            answers.append(call())
        except Exception as error:
            answers.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=seconds)  # a bound on a hang, not a synchronisation: the checked reader waits on nothing
    return answers


def assert_emptied(answers: list) -> None:
    assert len(answers) == 1, "the reader is still waiting for a record that never comes"
    assert isinstance(answers[0], FaultError) and "was emptied mid-run" in str(answers[0]), answers


def test_a_flush_between_the_two_commands_of_an_append_is_said_not_waited_on():
    """A FLUSHDB between the two commands of Optuna's Redis append restarts the numbering at 1: a new reader of that
    journal (`status`, a worker joining) would wait forever for a record 0 that never comes."""
    import redis

    with redis_db() as url:
        client = redis.Redis.from_url(url)
        flush_redis(url)
        client.set(":log_number", 1)  # what the append that raced the flush left: record 1, never a record 0
        client.set(":log:1", json.dumps({"op_code": 0, "worker_id": "w", "study_name": "x", "directions": [1]}))

        assert_emptied(within(30, lambda: open_storage(url)))


def test_a_record_gone_under_a_reader_is_said_not_waited_on():
    """A FLUSHDB between a reader's fetch of the last record number and of the records below it: Optuna's reader waits
    forever for a record that the flush took (the hang of the flush test above). Here the record is taken by hand."""
    import redis

    with redis_db() as url:
        journal_of(url, records=3)
        client = redis.Redis.from_url(url)
        last = int(client.get(":log_number"))
        client.delete(f":log:{last - 1}")

        assert_emptied(within(30, lambda: open_storage(url)))


def test_a_process_whose_redis_journal_was_emptied_says_so_and_writes_nothing_into_it():
    with redis_db() as url:
        storage = open_storage(url)
        journal_of(url, records=3)
        study = optuna.load_study(study_name="s", storage=storage)
        flush_redis(url)

        assert_emptied(within(30, lambda: study.trials))
        assert_emptied(within(30, lambda: study.set_user_attr("after", 1)))
        assert redis_keys(url) == []


class ReplyDroppingProxy:
    """A TCP proxy to Redis that, once armed, forwards the next request holding `marker` and then drops the connection
    instead of its reply: the server did the work, the client never heard, and redis-py sends the command again."""

    def __init__(self, target: tuple[str, int], marker: bytes):
        import socket
        import threading

        self.target, self.marker = target, marker
        self.armed = threading.Event()
        self.dropped = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def port(self) -> int:
        return self.listener.getsockname()[1]

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            client, _ = self.listener.accept()
            server = socket.create_connection(self.target)
            sent = threading.Event()  # this connection forwarded the marked request
            threading.Thread(target=self._pump, args=(client, server, sent, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, sent, False), daemon=True).start()

    def _pump(self, source, sink, sent, requests: bool) -> None:
        import socket

        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if not requests and sent.is_set():  # the reply to the marked request: lose it
                    self.dropped.set()
                    break
                sink.sendall(data)
                if requests and self.armed.is_set() and self.marker in data:
                    self.armed.clear()
                    sent.set()
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)  # wakes the other direction's recv, which a close would not
                end.close()


def test_an_append_whose_reply_was_lost_is_written_once():
    from urllib.parse import urlsplit

    with redis_db() as url:
        parts = urlsplit(url)
        proxy = ReplyDroppingProxy((parts.hostname, parts.port), marker=b"EVALSHA")
        study = optuna.create_study(study_name="s", storage=open_storage(f"redis://127.0.0.1:{proxy.port}{parts.path}"))
        study.enqueue_trial({"lr": 1e-3})  # the script is loaded: from here on, appends are EVALSHA
        proxy.armed.set()

        study.set_user_attr("once", 1)

        assert proxy.dropped.is_set()  # the reply was really lost, and the append sent again
        records = [json.loads(r) for r in redis_records(url)]
        assert [r.get("user_attr") for r in records if r.get("user_attr")] == [{"once": 1}]


@pytest.mark.parametrize("batch", [CheckedRedisBackend.BATCH, 7], ids=["one batch", "records of many batches"])
def test_the_checked_redis_journal_is_optunas_own_journal(batch, monkeypatch):
    """optuna-dashboard (and any Optuna) reads what the sweep writes, and the sweep reads what Optuna writes."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalRedisBackend

    monkeypatch.setattr(CheckedRedisBackend, "BATCH", batch)
    with redis_db() as url:
        ours = optuna.create_study(study_name="s", storage=open_storage(url))
        ours.optimize(lambda trial: trial.suggest_float("lr", 1e-4, 1e-2, log=True), n_trials=3)
        theirs = optuna.load_study(study_name="s", storage=JournalStorage(JournalRedisBackend(url)))
        theirs.optimize(lambda trial: trial.suggest_float("lr", 1e-4, 1e-2, log=True), n_trials=2)
        ours.optimize(lambda trial: trial.suggest_float("lr", 1e-4, 1e-2, log=True), n_trials=1)

        seen_by_ours = [(t.number, t.state, t.params) for t in ours.trials]
        seen_by_theirs = [(t.number, t.state, t.params) for t in theirs.trials]

    assert [number for number, _, _ in seen_by_ours] == list(range(6))
    assert seen_by_ours == seen_by_theirs


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


@pytest.mark.parametrize("kind", ["postgresql", "redis"])
def test_a_storage_server_that_never_answers_is_refused(kind, monkeypatch):
    """A server that accepts connections and never answers (a hung server, a stuck proxy): libpq waited forever, and
    Redis waited for whatever redis-py's defaults were (none before 6, 5 s in 8). The bound below is a bound on a hang
    that only the sweep's own 1 s timeout meets, never a measure of speed."""
    import socket

    monkeypatch.setattr(storage_module, "CONNECT_TIMEOUT_S", 1)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes the handshake; nothing ever reads or answers
        url = f"{kind}://u@127.0.0.1:{silent.getsockname()[1]}/0"

        answers = within(4, lambda: open_storage(url))  # redis-py's 5 s, or libpq's forever, would miss it

    assert len(answers) == 1, "still waiting for the server"
    assert isinstance(answers[0], InputError), answers  # exit 2 and one line, as for any storage that cannot be opened
    assert f"cannot open storage {url}" in str(answers[0]) and "time" in str(answers[0]), answers


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


def test_a_full_loss_counts_its_logits_and_a_chunked_one_does_not(make_config):
    chunked, full = (make_config(model={"loss": loss}, dtype="bfloat16") for loss in ("chunked", "full"))
    cpu = torch.device("cpu")

    (state, chunked_activations), (_, full_activations) = (training_bytes(c, device=cpu) for c in (chunked, full))

    m, b = full.model, full.batch
    assert full_activations - chunked_activations == b.micro_batch_size * m.block_size * m.padded_vocab_size * 6
    # `auto` is the full loss on a GPU (its logits counted) and the chunked one on a CPU
    auto = make_config(model={"loss": "auto"}, dtype="bfloat16")
    assert training_bytes(auto, device=torch.device("cuda")) == (state, full_activations)
    assert training_bytes(auto, device=cpu) == (state, chunked_activations)


def test_workers_sharing_the_machine_each_count(data, tmp_path, monkeypatch, capsys):
    """A model that fits once but not three times is refused for `--workers 3`, before anything is created."""
    monkeypatch.chdir(tmp_path)
    memory, _ = device_memory(torch.device("cpu"))
    values = study_values(data)
    m = values["model"]
    # n_embd whose weights and AdamW state (16 bytes a parameter: 12·n_layer·d² + vocab·d) take half of the RAM
    a, b = 16 * 12 * m["n_layer"], 16 * m["vocab_size"]
    width = int((-b + math.sqrt(b * b + 4 * a * 0.5 * memory)) / (2 * a))
    m["n_embd"] = width - width % m["n_head"]
    study = write_study(tmp_path / "half.yaml", values)
    config = load_recipe(study).train
    check_fits(config, device=torch.device("cpu"))  # one fits

    code = run_lr(study, str(tmp_path / "sweep.log"), "--trials", "3", "--workers", "3")

    line = one_error_line(capsys.readouterr().err)
    assert code == 2
    assert "for each of 3 workers" in line and "fewer workers" in line, line
    assert not (tmp_path / "sweep.log").exists()
