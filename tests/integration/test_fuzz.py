"""Property-based tests (hypothesis) of the insert path and the CLI (issue 11).

1. Any task, by SQL or through the App: the insert is refused with a named error (a
   SQLSTATE and, for a CHECK, a constraint the store knows; a typed InvalidTask through the
   App) or accepted. One long-lived real worker process then drives every accepted task of
   a kind it serves to succeeded or failed; a task of another kind stays pending with no
   attempt, as designed. The worker never crashes or hangs.
2. Any argument list to the `angela-queue` commands that return (not `worker`, `demo`,
   `dashboard`, `metrics`, `supervise`, `db`, `reap` without `--once` or `status --watch`,
   which run until stopped): exit 0, or a non-zero exit with one error line, never a
   traceback.

Both are bounded (max_examples, no per-example deadline but a whole-test timeout) to run in
well under a minute together.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
import typer.main
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from angela_queue import App, Settings, errors
from angela_queue.store_errors import CONSTRAINT_MESSAGES
from tests.e2e.helpers import start_worker, stop, wait_for

SERVED = ("fuzz.ok", "fuzz.fail", "fuzz.async_ok", "fuzz.tx")
QUEUES = ("default", "fuzz")
PAYLOAD_LIMIT = 65536
# What a refused SQL insert may say: its SQLSTATE names the reason.
REFUSALS = {
    "23514": "check violation (constraint named)",
    "23502": "not-null violation",
    "AQ001": "unknown queue",
    "AQ003": "payload too large",
    "22P02": "invalid JSON or number text",
    "22P05": "NUL in a JSON string",
    "22003": "number out of range",
    "22008": "timestamp out of range",
}


@dataclass(frozen=True)
class Deep:
    """A payload nested ``depth`` levels deep (built as text: json.dumps would recurse)."""

    depth: int

    def text(self) -> str:
        return '{"x": ' + "[" * self.depth + "]" * self.depth + "}"

    def value(self) -> dict[str, Any]:
        inner: list[Any] = []
        for _ in range(self.depth - 1):
            inner = [inner]
        return {"x": inner}


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=15,
)
payloads = st.one_of(
    st.dictionaries(st.text(max_size=10), json_values, max_size=6),
    json_values,
    st.integers(PAYLOAD_LIMIT - 200, PAYLOAD_LIMIT + 200).map(lambda n: {"blob": "y" * n}),
    st.integers(1, 12).map(lambda k: Deep(2**k)),  # 2 … 4096 levels: around the decoder's limit
)
kinds = st.one_of(
    st.sampled_from(SERVED),
    st.from_regex(r"[a-z][a-z0-9_]{0,8}(\.[a-z][a-z0-9_]{0,8}){0,2}", fullmatch=True).filter(
        lambda k: k not in SERVED
    ),
    st.text(max_size=30),
)
tasks = st.fixed_dictionaries(
    {
        "path": st.sampled_from(["sql", "api"]),
        "kind": kinds,
        "payload": payloads,
        "priority": st.none() | st.integers(-3, 14) | st.floats(0, 12, allow_nan=False),
        "queue": st.none() | st.sampled_from(QUEUES) | st.text(max_size=12),
        "run_in_s": st.none() | st.floats(-3e9, 0.5, allow_nan=False),
        "max_attempts": st.none() | st.integers(-1, 3),
    }
)


def sql_insert(conn: psycopg.Connection[Any], t: dict[str, Any], now: datetime) -> int | None:
    """The task by plain SQL: its id, or None when refused with a named error."""
    p = t["payload"]
    text = p.text() if isinstance(p, Deep) else json.dumps(p, ensure_ascii=False)
    run_at = None if t["run_in_s"] is None else now + timedelta(seconds=t["run_in_s"])
    try:
        row = conn.execute(
            "INSERT INTO angela_queue.tasks (kind, payload, priority, queue, run_at, max_attempts)"
            " VALUES (%s, %s::jsonb, %s, %s, %s, %s) RETURNING id",
            (t["kind"], text, t["priority"], t["queue"], run_at, t["max_attempts"]),
        ).fetchone()
    except psycopg.Error as exc:
        if exc.sqlstate is None:  # refused by psycopg before sending: text cannot hold NUL
            assert "NUL (0x00)" in str(exc), exc
            return None
        assert exc.sqlstate in REFUSALS, (exc.sqlstate, str(exc), t)
        if exc.sqlstate == "23514":
            assert exc.diag.constraint_name in CONSTRAINT_MESSAGES, exc.diag.constraint_name
        return None
    assert row is not None
    return int(row[0])


def api_insert(app: App, conn: psycopg.Connection[Any], t: dict[str, Any], now: datetime):
    """The task through App.enqueue: its id, or None when refused with a typed error."""
    p = t["payload"]
    options = {k: t[k] for k in ("priority", "queue", "max_attempts") if t[k] is not None}
    run_at = None if t["run_in_s"] is None else now + timedelta(seconds=t["run_in_s"])
    try:
        return app.enqueue(
            t["kind"], p.value() if isinstance(p, Deep) else p, run_at=run_at, conn=conn, **options
        )
    except errors.InvalidTask as exc:  # UnknownQueue and PayloadTooLarge are InvalidTasks
        assert str(exc).strip() and "\n" not in str(exc).strip(), exc
        return None


@pytest.mark.slow
def test_any_insert_is_refused_by_name_or_driven_to_its_end_by_a_real_worker(dsn, conn):
    conn.execute("INSERT INTO angela_queue.queues (name) VALUES ('fuzz')")
    conn.execute(
        f'ALTER DATABASE "{conn.info.dbname}" SET angela_queue.max_payload_bytes = '
        f"'{PAYLOAD_LIMIT}'"
    )
    conn.execute(f"SET angela_queue.max_payload_bytes = '{PAYLOAD_LIMIT}'")
    worker = start_worker(
        dsn,
        "--queue", "default", "--queue", "fuzz", "--concurrency", "8", "--no-listen",
        app="tests.apps.fuzz_app:app",
        env={"ANGELA_QUEUE_RETRY_BASE_S": "0.01", "ANGELA_QUEUE_RETRY_MAX_S": "0.05",
             "ANGELA_QUEUE_POLL_IDLE_S": "0.2"},
    )  # fmt: skip
    app = App(Settings(dsn=dsn))
    accepted: list[int] = []
    refused = [0]

    @settings(
        max_examples=200,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(batch=st.lists(tasks, min_size=1, max_size=4))
    def insert_batch(batch: list[dict[str, Any]]) -> None:
        now = datetime.now(UTC)
        for t in batch:
            if t["path"] == "sql":
                task_id = sql_insert(conn, t, now)
            else:
                task_id = api_insert(app, conn, t, now)
            if task_id is None:
                refused[0] += 1
            else:
                accepted.append(task_id)

    try:
        insert_batch()
        assert accepted and refused[0], (len(accepted), refused[0])  # both sides were reached

        def settled() -> bool:
            open_ = conn.execute(
                "SELECT count(*) FROM angela_queue.tasks WHERE kind = ANY(%s)"
                " AND status NOT IN ('succeeded', 'failed')",
                (list(SERVED),),
            ).fetchone()[0]
            return open_ == 0

        wait_for(settled, timeout=40, interval=0.2)
        assert worker.poll() is None, "the worker died"
    finally:
        app.close()
        code, output = stop(worker)
    assert code == 0, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    rows = conn.execute(
        "SELECT kind, status, attempts FROM angela_queue.tasks WHERE id = ANY(%s)", (accepted,)
    ).fetchall()
    assert len(rows) == len(accepted)
    for kind, status, attempts in rows:
        if kind in SERVED:
            assert status in ("succeeded", "failed"), (kind, status)
        else:  # a kind no worker serves waits, untouched
            assert (status, attempts) == ("pending", 0), (kind, status, attempts)
    deep = conn.execute(
        "SELECT status, last_error FROM angela_queue.tasks"
        " WHERE id = ANY(%s) AND last_error LIKE 'UndecodablePayload%%'",
        (accepted,),
    ).fetchall()
    assert all(s == "failed" for s, _ in deep)


# -- the CLI --------------------------------------------------------------------------------

# Commands that run until stopped (or start servers) are not fuzzed; `reap` always gets --once.
LONG_RUNNING = {"worker", "demo", "dashboard", "metrics", "supervise", "db"}


def _commands() -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """(command path, its option names) for every command that returns."""
    from angela_queue.cli import app

    root = typer.main.get_command(app)
    ctx = root.context_class(root)
    out: list[tuple[tuple[str, ...], tuple[str, ...]]] = []
    for name in root.list_commands(ctx):  # type: ignore[attr-defined]
        if name in LONG_RUNNING:
            continue
        cmd = root.get_command(ctx, name)  # type: ignore[attr-defined]
        subs = (
            [((name, s), cmd.get_command(ctx, s)) for s in cmd.list_commands(ctx)]
            if hasattr(cmd, "list_commands")
            else [((name,), cmd)]
        )
        for path, sub in subs:
            opts = [
                o
                for p in sub.params
                for o in (*p.opts, *p.secondary_opts)
                if o.startswith("-") and o not in ("--dsn", "--watch")
            ]
            out.append((path, (*opts, "--help")))
    return out


COMMANDS = _commands()
tokens = st.one_of(
    st.text(alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=["Cs"]),
             max_size=12),
    st.integers(-(10**12), 10**12).map(str),
    st.floats(allow_nan=True).map(str),
    st.sampled_from(["{}", '{"a": 1}', "[1]", "null", "-", "--", "a.b", "default", "1", "0"]),
)  # fmt: skip


@st.composite
def argument_lists(draw: st.DrawFn) -> list[str]:
    path, opts = draw(st.sampled_from(COMMANDS))
    args = draw(st.lists(st.one_of(st.sampled_from(opts), tokens), max_size=6))
    if "--help" in args:  # help is exercised elsewhere; it would hide the error path here
        args.remove("--help")
    if path == ("reap",):
        args.append("--once")
    return [*path, *args]


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """`angela-queue ARGV` in this process: exit code, stdout, stderr."""
    from angela_queue.cli import main

    out, err = io.StringIO(), io.StringIO()
    old_argv = sys.argv
    sys.argv = ["angela-queue", *argv]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = old_argv
    return code, out.getvalue(), err.getvalue()


def test_any_cli_arguments_exit_zero_or_with_one_error_line(dsn, monkeypatch):
    monkeypatch.setenv("ANGELA_QUEUE_DSN", dsn)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    seen = {"ok": 0, "error": 0}
    started = time.monotonic()

    @settings(
        max_examples=250,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(argv=argument_lists())
    def run(argv: list[str]) -> None:
        code, stdout, stderr = run_cli(argv)  # an uncaught exception fails the example
        assert "Traceback" not in stdout + stderr, (argv, stderr)
        if code == 0:
            seen["ok"] += 1
            return
        seen["error"] += 1
        lines = [line for line in stderr.splitlines() if line.lower().startswith("error")]
        assert len(lines) == 1, (argv, code, stderr)

    run()
    assert seen["ok"] and seen["error"], seen
    assert time.monotonic() - started < 60
