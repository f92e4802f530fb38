"""Hostile and malformed input by SQL, API and CLI (issue 11; README "The database is the API").

Each input is refused with a named SQLSTATE or constraint (SQL), a typed error (API) or one
line and a non-zero exit (CLI), or it is normalised; what is accepted never crashes a
worker. test_schema.py, test_roles.py and test_client.py cover the basic refusals; this file
adds what an attacker or a buggy producer would try next.
"""

from __future__ import annotations

import json

import psycopg
import pytest
from psycopg import errors as pg_errors
from psycopg import sql

from angela_queue import App, Settings, errors
from angela_queue.store import TaskStore
from tests.apps.sample_app import CREATE_RUNS
from tests.e2e.helpers import start_worker, stop, wait_for
from tests.e2e.test_cli import assert_one_line_error, cli

SQL_LOOKING_KINDS = [
    "x'; DROP TABLE angela_queue.tasks;--",
    "a.b; DELETE FROM angela_queue.tasks",
    "$$",
    "a.b' OR '1'='1",
    "../../etc/passwd",
    "/bin/sh",
    "C:\\Windows\\system32",
    "__import__",
    "a.b\u202e",  # right-to-left override
    "a" * 201,
    "conversation.analyze\n",
]


def insert(conn, columns: str, values: str, params=()):
    return conn.execute(
        f"INSERT INTO angela_queue.tasks ({columns}) VALUES ({values}) RETURNING *", params
    ).fetchone()


@pytest.mark.parametrize("kind", SQL_LOOKING_KINDS)
def test_kinds_that_look_like_sql_or_paths_are_data_and_refused(conn, kind):
    with pytest.raises(pg_errors.CheckViolation) as exc:
        insert(conn, "kind", "%s", (kind,))
    assert exc.value.diag.constraint_name == "tasks_kind_check"
    app = App(Settings(dsn=conn.info.dsn))
    with pytest.raises(errors.InvalidTask, match="invalid kind"):
        app.enqueue(kind, conn=conn)
    assert conn.execute("SELECT count(*) FROM angela_queue.tasks").fetchone() == (0,)


@pytest.mark.parametrize(
    ("literal", "sqlstate", "stored"),
    [
        ("NULL", None, 5),  # normalised to the default
        ("5.5", None, 6),  # PostgreSQL's assignment cast rounds a numeric
        ("'5.5'", "22P02", None),
        ("'high'", "22P02", None),
        ("true", "42804", None),
        ("100000", "22003", None),
        ("0", "23514", None),
        ("11", "23514", None),
    ],
)
def test_bad_priorities_by_sql(conn, literal, sqlstate, stored):
    if sqlstate is None:
        assert insert(conn, "kind, priority", f"'a.b', {literal}") is not None
        assert conn.execute("SELECT priority FROM angela_queue.tasks").fetchone() == (stored,)
        return
    with pytest.raises(psycopg.Error) as exc:
        insert(conn, "kind, priority", f"'a.b', {literal}")
    assert exc.value.sqlstate == sqlstate


@pytest.mark.parametrize("priority", [5.5, True, "7", 0, 11, -1])
def test_bad_priorities_by_the_api_are_typed_errors(dsn, priority):
    app = App(Settings(dsn=dsn))
    try:
        with pytest.raises(errors.InvalidTask, match="priority"):
            app.enqueue("a.b", priority=priority)
    finally:
        app.close()


@pytest.mark.parametrize("payload", [[1, 2], "text", 42, 1.5, True])
def test_non_object_payloads_by_the_api_are_typed_errors(dsn, payload):
    app = App(Settings(dsn=dsn))
    try:
        with pytest.raises(errors.InvalidTask, match="JSON object"):
            app.enqueue("a.b", payload)
        with pytest.raises(errors.InvalidTask, match="JSON object"):
            app.enqueue_many([{"kind": "a.b", "payload": payload}])
    finally:
        app.close()


@pytest.mark.parametrize(
    "request_",
    [
        {"kind": "a\x00b"},
        {"kind": "a.b", "queue": "default\x00"},
        {"kind": "a.b", "dedupe_key": "k\x00"},
        {"kind": "a.b", "payload": {"x": "\x00"}},
        {"kind": "a.b", "payload": {"\x00": 1}},
    ],
)
def test_nul_characters_are_a_typed_error_not_a_database_error(dsn, conn, request_):
    app = App(Settings(dsn=dsn))
    data = dict(request_)
    try:
        with pytest.raises(errors.InvalidTask, match="NUL"):
            app.enqueue(data.pop("kind"), data.pop("payload", None), **data)
    finally:
        app.close()
    with pytest.raises(psycopg.Error):  # by SQL too: refused, never stored
        conn.execute(
            "INSERT INTO angela_queue.tasks (kind, payload) VALUES ('a.b', %s::jsonb)",
            ('{"x": "\\u0000"}',),
        )
    assert conn.execute("SELECT count(*) FROM angela_queue.tasks").fetchone() == (0,)


def test_oversized_payload_by_sql_api_and_cli(dsn, conn):
    conn.execute("SET angela_queue.max_payload_bytes = '2000'")  # this session, and new ones:
    conn.execute(f'ALTER DATABASE "{conn.info.dbname}" SET angela_queue.max_payload_bytes = 2000')
    big = {"x": "y" * 3000}
    with pytest.raises(psycopg.Error) as exc:
        insert(conn, "kind, payload", "'a.b', %s::jsonb", (json.dumps(big),))
    assert exc.value.sqlstate == "AQ003"
    app = App(Settings(dsn=dsn))
    try:
        with pytest.raises(errors.PayloadTooLarge):
            app.enqueue("a.b", big)
        with pytest.raises(errors.PayloadTooLarge):
            app.enqueue_many([{"kind": "a.b"}, {"kind": "a.b", "payload": big}])
    finally:
        app.close()
    result = cli("enqueue", "a.b", "--payload", json.dumps(big), dsn=dsn)
    assert_one_line_error(result, "payload")
    assert conn.execute("SELECT count(*) FROM angela_queue.tasks").fetchone() == (0,)


@pytest.mark.parametrize("status", ["running", "succeeded", "failed", "cancelled", "dropped"])
def test_a_new_task_cannot_start_in_another_status(conn, status):
    with pytest.raises(psycopg.Error) as exc:
        insert(conn, "kind, status", "'a.b', %s", (status,))
    assert exc.value.sqlstate == "AQ006"


def test_internal_columns_set_at_insert_are_normalised(conn):
    conn.execute(
        "INSERT INTO angela_queue.workers (hostname, pid, queues, status) VALUES ('h', 1,"
        " '{default}', 'active')"
    )
    row = conn.execute(
        "INSERT INTO angela_queue.tasks (kind, status, attempts, worker_id, started_at,"
        " first_started_at, finished_at, result, last_error)"
        " VALUES ('a.b', 'pending', 99, (SELECT max(id) FROM angela_queue.workers), now(),"
        " now(), now(), '{\"x\": 1}', 'forged')"
        " RETURNING status, attempts, worker_id, started_at, first_started_at, finished_at,"
        " result"
    ).fetchone()
    assert row == ("pending", 0, None, None, None, None, None)


@pytest.mark.slow
def test_unknown_kinds_stay_pending_are_named_by_status_and_never_crash_a_worker(dsn, conn):
    """A kind that is a valid name but has no handler (even one naming a Python callable)
    waits, as designed: the worker claims only the kinds it serves, never imports one."""
    conn.execute(CREATE_RUNS)
    conn.execute(
        "INSERT INTO angela_queue.tasks (kind, payload) VALUES ('os.system', '{\"cmd\": \"id\"}'),"
        " ('builtins.eval', '{}'), ('test.recordd', '{}')"
    )
    app = App(Settings(dsn=dsn))
    known = [app.enqueue("test.record") for _ in range(5)]
    app.close()
    worker = start_worker(dsn, "--no-listen")
    try:
        wait_for(
            lambda: (
                conn.execute(
                    "SELECT count(*) FROM angela_queue.tasks WHERE status = 'succeeded'"
                ).fetchone()[0]
                == 5
            ),
            timeout=30,
        )
        status = cli("status", "--json", dsn=dsn)
        table = cli("status", dsn=dsn)
        assert worker.poll() is None  # still alive
    finally:
        code, output = stop(worker)
    assert code == 0 and "Traceback" not in output, output
    left = conn.execute(
        "SELECT kind, status, attempts FROM angela_queue.tasks WHERE NOT id = ANY(%s)"
        " ORDER BY kind",
        (known,),
    ).fetchall()
    assert left == [
        ("builtins.eval", "pending", 0),
        ("os.system", "pending", 0),
        ("test.recordd", "pending", 0),
    ]
    assert status.returncode == 0, status.stderr
    unserved = json.loads(status.stdout)["unserved_kinds"]
    assert {(u["queue"], u["kind"], u["pending"]) for u in unserved} == {
        ("default", "builtins.eval", 1),
        ("default", "os.system", 1),
        ("default", "test.recordd", 1),
    }
    assert "pending tasks no live worker serves" in table.stdout
    assert "default os.system: 1 pending" in table.stdout


def test_the_unserved_kinds_view_names_what_no_live_worker_serves_to_the_monitor_role(conn):
    conn.execute(
        "INSERT INTO angela_queue.queues (name) VALUES ('other');"
        "INSERT INTO angela_queue.tasks (kind, queue) VALUES ('no.handler', 'default'),"
        " ('no.handler', 'default'), ('a.b', 'default'), ('a.b', 'other'), ('c.d', 'default');"
        "INSERT INTO angela_queue.tasks (kind, run_at) VALUES ('later', now() + interval '1 h');"
        "INSERT INTO angela_queue.workers (hostname, pid, queues, kinds, status) VALUES"
        " ('h', 1, '{default}', '{a.b}', 'idle'), ('h', 2, '{default}', '{c.d}', 'dead')"
    )
    store = TaskStore(conn)
    conn.execute("SET ROLE angela_queue_monitor")
    try:
        rows = store.task_kinds_unserved(10)
        assert rows is not None
        assert [(r["queue"], r["kind"], r["pending"]) for r in rows] == [
            ("default", "no.handler", 2),
            ("default", "c.d", 1),  # its only worker is dead
            ("other", "a.b", 1),  # served in another queue only
        ]
        assert all(r["oldest_pending_age_s"] >= 0 for r in rows)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT count(*) FROM angela_queue.tasks")
    finally:
        conn.execute("RESET ROLE")


@pytest.mark.parametrize("column", ["run_at", "enqueued_at"])
@pytest.mark.parametrize("value", ["-infinity", "infinity"])
def test_an_infinite_time_is_refused(conn, column, value):
    """Migration 0013: '-infinity' would be a poison row (no worker can load it). The
    insert trigger's arithmetic may refuse it first ("cannot subtract infinite timestamps"
    before PostgreSQL 17, which has infinite intervals); the CHECK refuses it otherwise."""
    with pytest.raises((pg_errors.CheckViolation, pg_errors.DatetimeFieldOverflow)) as refused:
        conn.execute(
            sql.SQL("INSERT INTO angela_queue.tasks (kind, {}) VALUES ('a.b', %s)").format(
                sql.Identifier(column)
            ),
            (value,),
        )
    if isinstance(refused.value, pg_errors.CheckViolation):
        assert refused.value.diag.constraint_name == f"tasks_{column}_check"
    assert conn.execute("SELECT count(*) FROM angela_queue.tasks").fetchone() == (0,)


@pytest.mark.parametrize(
    "args",
    [
        ("enqueue", "a.b", "--priority", "abc"),
        ("enqueue", "a.b", "--priority", "5.5"),
        ("enqueue", "a.b", "--priority", "0"),
        ("enqueue", "a.b", "--delay", "soon"),
        ("enqueue", "a.b", "--delay", "251606171968"),  # past year 9999: was a traceback
        ("enqueue", "a.b", "--delay", "-5"),
        ("enqueue",),
        ("enqueue", "x'; DROP TABLE angela_queue.tasks;--"),
        ("enqueue", "../../etc/passwd"),
        ("enqueue", "a.b", "--payload", '{"x": "\\u0000"}'),
        ("enqueue", "a.b", "--payload", "null"),
        ("enqueue", "a.b", "--queue", "'; --"),
        ("no-such-command",),
        ("worker", "--concurrency", "0"),
        ("worker", "--concurrency", "-5"),
        ("status", "--watch", "0"),
        ("status", "--bogus-flag"),
        ("reap", "--heartbeat-timeout", "nope"),
        ("prune", "--older-than", "forever"),
        ("retry", "not-an-id"),
        ("cancel", "--nope"),
    ],
)
def test_cli_bad_arguments_are_one_error_line_without_traceback(dsn, conn, args):
    result = cli(*args, dsn=dsn)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    errors_ = [line for line in result.stderr.splitlines() if line.lower().startswith("error")]
    assert len(errors_) == 1, result.stderr
    assert conn.execute("SELECT count(*) FROM angela_queue.tasks").fetchone() == (0,)


@pytest.mark.slow
def test_a_too_deeply_nested_payload_fails_its_task_not_the_worker(dsn, conn):
    """PostgreSQL stores jsonb nested 3000 levels deep; Python's decoder cannot build it.
    Found by test_fuzz.py: the claim raised RecursionError and the worker died."""
    conn.execute(CREATE_RUNS)
    deep = conn.execute(
        "INSERT INTO angela_queue.tasks (kind, payload) VALUES ('test.noop', %s::jsonb)"
        " RETURNING id",
        ('{"x": ' + "[" * 3000 + "]" * 3000 + "}",),
    ).fetchone()[0]
    conn.execute(
        "INSERT INTO angela_queue.tasks (kind) SELECT 'test.record' FROM generate_series(1, 10)"
    )
    worker = start_worker(dsn, "--no-listen", "--concurrency", "4")
    try:
        wait_for(
            lambda: (
                conn.execute(
                    "SELECT count(*) FROM angela_queue.tasks"
                    " WHERE status IN ('succeeded', 'failed')"
                ).fetchone()[0]
                == 11
            ),
            timeout=30,
        )
        assert worker.poll() is None
    finally:
        code, output = stop(worker)
    assert code == 0 and "Traceback" not in output, output
    status, attempts, error = conn.execute(
        "SELECT status, attempts, last_error FROM angela_queue.tasks WHERE id = %s", (deep,)
    ).fetchone()
    assert (status, attempts) == ("failed", 1)  # at once: another attempt cannot decode it
    assert error.startswith("UndecodablePayload: the payload is nested too deeply")


def test_a_too_deeply_nested_payload_by_the_api_is_a_typed_error(dsn):
    nested: list[object] = []
    for _ in range(3000):
        nested = [nested]
    app = App(Settings(dsn=dsn))
    try:
        with pytest.raises(errors.InvalidTask, match="nested too deeply"):
            app.enqueue("a.b", {"x": nested})
        with pytest.raises(errors.InvalidTask, match="nested too deeply"):
            app.enqueue_many([{"kind": "a.b", "payload": {"x": nested}}])
    finally:
        app.close()


def test_a_hostile_unknown_queue_name_stays_on_one_line(dsn):
    """Found by test_fuzz.py: the hint repeated the raw name, newline and all."""
    app = App(Settings(dsn=dsn))
    try:
        with pytest.raises(errors.UnknownQueue) as exc:
            app.enqueue("a.b", queue="x\n$(rm -rf /)")
    finally:
        app.close()
    assert "\n" not in str(exc.value)
    assert str(exc.value) == "unknown queue 'x\\n$(rm -rf /)' (and not a valid queue name)"
    assert_one_line_error(cli("enqueue", "a.b", "--queue", "x\ny", dsn=dsn), "unknown queue")
