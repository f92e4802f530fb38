"""Through PgBouncer in transaction pooling mode (README "Connection poolers").

Every connection of these tests, of the worker processes and of the CLI goes through the
pooler of tests/pgbouncer.py (4 server connections per database, so clients share them),
with ``listen`` off (``--no-listen``) and ``prepare`` off (no server-side prepared
statements). Checks are made on a direct connection (``conn``). Run them with
`make test/pgbouncer`; `make test` deselects them (they need Debian's pgbouncer).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from angela_queue import App, QueueFull, Settings
from angela_queue.cleaner import Cleaner, CleanerConfig
from angela_queue.reaper import Reaper, ReaperConfig
from angela_queue.store import TaskStore
from tests.apps.sample_app import CREATE_RUNS
from tests.e2e.helpers import ROOT, start_worker, stop, wait_for
from tests.integration.test_bounded import bound, counts
from tests.pgbouncer import CONTROL_DB

pytestmark = pytest.mark.pgbouncer

POOLED_ENV = {
    "ANGELA_QUEUE_LISTEN": "false",
    "ANGELA_QUEUE_PREPARE": "false",
    "ANGELA_QUEUE_HEARTBEAT_S": "0.3",
    "ANGELA_QUEUE_HEARTBEAT_TIMEOUT_S": "1.5",
    "ANGELA_QUEUE_RETRY_BASE_S": "0.1",
}


def pooled_app(pooled_dsn: str, **settings: Any) -> App:
    return App(Settings(dsn=pooled_dsn, listen=False, prepare=False, **settings))


def pooled_worker(pooled_dsn: str, *args: str) -> subprocess.Popen[str]:
    return start_worker(pooled_dsn, "--no-listen", *args, env=POOLED_ENV)


def count(conn, where: str = "true") -> int:
    return conn.execute(f"SELECT count(*) FROM angela_queue.tasks WHERE {where}").fetchone()[0]


def finished_within(conn, n: int, timeout: float) -> bool:
    """Whether ``n`` tasks reached succeeded or failed in time (the caller reports what not)."""
    try:
        wait_for(lambda: count(conn, "status IN ('succeeded', 'failed')") == n, timeout=timeout)
    except AssertionError:
        return False
    return True


def test_the_pooler_breaks_prepared_statements_and_prepare_off_avoids_them(pgbouncer):
    """The control: this really is a transaction pooler, and prepare=False is what works.

    The control database has two server connections. A client prepares a statement on the
    first; another client's open transaction holds that one, so the next execution runs on
    the second server connection, where the statement does not exist.
    """

    def run(settings: Settings) -> None:
        target = pgbouncer.dsn_for(make_conninfo("", dbname=CONTROL_DB, user=pgbouncer.user))
        kwargs = {"prepare_threshold": 0, **settings.connection_kwargs()}  # 0: prepare at once
        with (
            psycopg.connect(target, autocommit=True, **kwargs) as client,
            psycopg.connect(target, prepare_threshold=None) as other,
        ):
            client.execute("SELECT 1 + %s", (1,))
            other.execute("SELECT 1")  # opens a transaction: it holds the first connection
            try:
                assert client.execute("SELECT 1 + %s", (1,)).fetchone() == (2,)
            finally:
                other.rollback()

    with pytest.raises(psycopg.errors.InvalidSqlStatementName, match="does not exist"):
        run(Settings(prepare=True))
    run(Settings(prepare=False))


def test_client_enqueue_paths(pooled_dsn, conn):
    app = pooled_app(pooled_dsn)
    try:
        ids = [app.enqueue("a.b", {"n": i}, priority=1 + i % 10) for i in range(30)]
        assert app.enqueue("a.b", dedupe_key="k") == app.enqueue("a.b", dedupe_key="k")
        # Over INSERT_CHUNK: a pipeline of statements in one transaction, through the pooler.
        many = app.enqueue_many([{"kind": "c.d", "payload": {"n": i}} for i in range(1200)])
        deduped = app.enqueue_many([{"kind": "c.d", "dedupe_key": f"m{i % 3}"} for i in range(9)])
        with app.connect() as own:  # the caller's transaction decides
            app.enqueue("tx.kept", conn=own)
            own.commit()
            app.enqueue("tx.undone", conn=own)
            own.rollback()

        async def produce() -> list[int]:
            try:
                return [await app.enqueue_async("e.f", {"n": i}) for i in range(10)]
            finally:
                await app.aclose()

        async_ids = asyncio.run(produce())
    finally:
        app.close()
    assert len(set(ids)) == 30 and len(set(async_ids)) == 10
    assert [e.status for e in many] == ["queued"] * 1200
    assert len({e.id for e in deduped}) == 3
    assert count(conn, "kind = 'a.b'") == 31
    assert count(conn, "kind = 'c.d'") == 1203
    assert count(conn, "kind = 'tx.kept'") == 1 and count(conn, "kind = 'tx.undone'") == 0


def test_bounded_queue_drops_refuses_and_a_waiting_producer_gets_in(pooled_dsn, dsn, conn):
    conn.execute(CREATE_RUNS)
    bound(conn, "small", 3, drop_below=3)
    app = pooled_app(pooled_dsn, enqueue_wait_s=0.5)
    try:
        for _ in range(3):
            app.enqueue("test.noop", queue="small", priority=5)
        dropped = app.enqueue("test.noop", queue="small", priority=1)
        started = time.monotonic()
        with pytest.raises(QueueFull):
            app.enqueue("test.noop", queue="small", priority=5)
        assert time.monotonic() - started >= 0.5  # it waited, polling, then gave up
        assert counts(conn, "small") == {"pending": 3, "dropped": 1}
        assert conn.execute(
            "SELECT status FROM angela_queue.tasks WHERE id = %s", (dropped,)
        ).fetchone() == ("dropped",)
    finally:
        app.close()
    waiting = pooled_app(pooled_dsn, enqueue_wait_s=30)
    worker = None
    try:
        with waiting.connect() as caller:  # waits inside the caller's open transaction
            caller.execute("SELECT 1")
            worker = pooled_worker(pooled_dsn, "--queue", "small")
            late = waiting.enqueue("test.noop", queue="small", priority=5, conn=caller)
            caller.commit()
        wait_for(lambda: count(conn, "status = 'succeeded'") == 4, timeout=30)
    finally:
        waiting.close()
        output = stop(worker)[1] if worker else ""
    assert count(conn, f"id = {late} AND status = 'succeeded'") == 1, output


def test_two_workers_drain_every_kind_exactly_once(pooled_dsn, conn):
    conn.execute(CREATE_RUNS)
    app = pooled_app(pooled_dsn)
    try:
        app.enqueue_many(
            [{"kind": "test.record", "priority": 1 + i % 10} for i in range(300)]
            + [{"kind": "test.async_record"} for _ in range(50)]
            + [{"kind": "test.tx"} for _ in range(20)]
            + [{"kind": "test.tx", "payload": {"fail": True}, "max_attempts": 2}]
            + [{"kind": "test.fail", "max_attempts": 2}]
            + [{"kind": "test.retry_later", "payload": {"delay_s": 0.2}}]
        )
    finally:
        app.close()
    workers = [pooled_worker(pooled_dsn, "--concurrency", "4") for _ in range(2)]
    try:
        done = finished_within(conn, 373, 60)
    finally:
        outputs = [stop(w) for w in workers]
    left = conn.execute(
        "SELECT kind, status, count(*) FROM angela_queue.tasks"
        " WHERE status NOT IN ('succeeded', 'failed') GROUP BY 1, 2"
    ).fetchall()
    assert done and all(code == 0 for code, _ in outputs), (left, outputs)
    for _, output in outputs:
        assert "prepared statement" not in output and "Traceback" not in output, output
    assert count(conn, "status = 'failed'") == 2
    per_task = conn.execute(
        "SELECT count(*) FILTER (WHERE n <> 1) FROM"
        " (SELECT task_id, attempt, count(*) AS n FROM test_runs GROUP BY 1, 2) r"
    ).fetchone()[0]
    assert per_task == 0  # no attempt ran twice
    # The failing transactional task's writes rolled back with its failure, both times.
    failed_tx = conn.execute(
        "SELECT count(*) FROM test_runs r JOIN angela_queue.tasks t ON t.id = r.task_id"
        " WHERE t.kind = 'test.tx' AND t.status = 'failed'"
    ).fetchone()[0]
    assert failed_tx == 0
    assert conn.execute("SELECT count(DISTINCT pid) FROM test_runs").fetchone()[0] == 2


def test_a_killed_workers_task_is_reclaimed_and_finished_by_another(pooled_dsn, conn):
    conn.execute(CREATE_RUNS)
    app = pooled_app(pooled_dsn)
    try:
        task_id = app.enqueue("test.slow", {"seconds": 1.5})
    finally:
        app.close()
    doomed = pooled_worker(pooled_dsn)
    survivor = None
    try:
        wait_for(lambda: count(conn, "status = 'running'") == 1, timeout=20)
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(10)
        survivor = pooled_worker(pooled_dsn)
        wait_for(lambda: count(conn, "status = 'succeeded'") == 1, timeout=30)
    finally:
        stop(doomed)
        code, output = stop(survivor) if survivor else (0, "")
    assert code == 0, output
    row = conn.execute(
        "SELECT attempts FROM angela_queue.tasks WHERE id = %s", (task_id,)
    ).fetchone()
    assert row == (2,)
    assert (
        conn.execute("SELECT count(*) FROM angela_queue.workers WHERE status = 'dead'").fetchone()[
            0
        ]
        == 2
    )  # the killed one (by the survivor's reaper) and the stopped one


def test_reaper_and_cleaner_through_the_pooler(pooled_dsn, conn):
    conn.execute(
        "INSERT INTO angela_queue.workers (hostname, pid, queues, status, heartbeat_at)"
        " VALUES ('h', 1, '{default}', 'active', now() - interval '1 hour')"
    )
    conn.execute("INSERT INTO angela_queue.tasks (kind) SELECT 'a.b' FROM generate_series(1, 5)")
    conn.execute(
        "UPDATE angela_queue.tasks SET status = 'running', attempts = 1,"
        " worker_id = (SELECT max(id) FROM angela_queue.workers), started_at = now()"
    )
    reaper = Reaper(ReaperConfig(heartbeat_timeout_s=5, batch_size=2, prepare=False), pooled_dsn)
    try:
        results = [reaper.run_once() for _ in range(8)]  # a query runs > 5 times
    finally:
        reaper.close()
    assert sorted(results[0].retried) == [
        r[0] for r in conn.execute("SELECT id FROM angela_queue.tasks ORDER BY id")
    ]
    assert not any(r.changed for r in results[1:])
    conn.execute(
        "UPDATE angela_queue.tasks SET status = 'succeeded', finished_at = now() - interval '2 d'"
    )
    with psycopg.connect(pooled_dsn, autocommit=True, prepare_threshold=None) as pooled:
        store = TaskStore(pooled)
        cleaner = Cleaner(CleanerConfig(retention_s=86400, batch_size=2))
        first = cleaner.run_once(store)
        again = [cleaner.run_once(store) for _ in range(6)]
    assert (first.tasks, first.skipped) == (5, False)
    assert all(r.tasks == 0 and not r.skipped for r in again)


def test_cli_through_the_pooler(pooled_dsn, conn):
    env = {**POOLED_ENV, "ANGELA_QUEUE_DSN": pooled_dsn}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "angela_queue.cli", *args],
            cwd=ROOT,
            env={**__import__("os").environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )

    for i in range(7):
        done = cli("enqueue", "cli.kind", "--payload", f'{{"n": {i}}}')
        assert done.returncode == 0, done.stderr
    status = cli("status", "--json")
    assert status.returncode == 0 and '"pending": 7' in status.stdout, status.stderr
    reaped = cli("reap", "--once")
    assert reaped.returncode == 0 and reaped.stdout.strip() == "reap: nothing to reap"
    assert count(conn, "kind = 'cli.kind'") == 7


def test_the_supervisor_acts_at_every_check_through_the_pooler(pooled_dsn, conn):
    """Its per-host lock is a transaction lock held by one transaction: a session lock taken
    through a transaction pooler stays on whichever server connection took it, and later
    checks, sent elsewhere, found it held ("another supervisor is acting") for good."""
    env = {**POOLED_ENV, "ANGELA_QUEUE_DSN": pooled_dsn}
    stop_churn = threading.Event()

    def churn() -> None:
        """Other clients' short transactions, so that the pooler hands each of the
        supervisor's statements whichever server connection is free."""
        with (
            psycopg.connect(pooled_dsn, autocommit=True, prepare_threshold=None) as a,
            psycopg.connect(pooled_dsn, autocommit=True, prepare_threshold=None) as b,
        ):
            while not stop_churn.is_set():
                for c in (a, b):
                    c.execute("SELECT pg_sleep(0.002)")

    churner = threading.Thread(target=churn, daemon=True)
    churner.start()
    try:
        for i in range(6):
            done = subprocess.run(
                [
                    *(sys.executable, "-m", "angela_queue.cli", "supervise", "--once"),
                    *("--app", "tests.apps.sample_app:app", "--min-workers", "1"),
                    *("--max-workers", "1"),
                ],
                cwd=ROOT,
                env={**os.environ, **env},
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 0, done.stderr
            assert "another supervisor is acting" not in done.stdout, (i, done.stdout)
    finally:
        stop_churn.set()
        churner.join(10)
        for (pid,) in conn.execute("SELECT pid FROM angela_queue.workers").fetchall():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)  # the one worker it started, detached
    decisions = conn.execute("SELECT count(*) FROM angela_queue.supervisor_decisions").fetchone()
    assert decisions == (6,)
