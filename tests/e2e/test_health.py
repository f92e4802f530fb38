"""Worker health with real processes and real signals: SIGKILL, SIGSTOP, stuck handlers,
a blocked event loop, a CPU-bound handler, killed backends and a database that goes away."""

from __future__ import annotations

import signal
import statistics
import subprocess
import threading
import time
from typing import Any

import psycopg
import pytest
from psycopg import sql

from angela_queue import App, Settings
from angela_queue.watchdog import EXIT_DECLARED_DEAD, EXIT_STUCK
from tests.apps.sample_app import CREATE_RUNS
from tests.e2e.helpers import start_worker, stop, wait_for

pytestmark = pytest.mark.slow

HEARTBEAT_S = 0.2
HEARTBEAT_TIMEOUT_S = 1.5
FAST = {
    "ANGELA_QUEUE_HEARTBEAT_S": str(HEARTBEAT_S),
    "ANGELA_QUEUE_HEARTBEAT_TIMEOUT_S": str(HEARTBEAT_TIMEOUT_S),
    "ANGELA_QUEUE_RETRY_BASE_S": "0.1",
}
# Reclaim within heartbeat timeout + one reaper interval (+ jitter), plus this much for a
# busy two-core machine and the test's own polling.
SLACK_S = 1.5


@pytest.fixture
def runs(conn):
    conn.execute(CREATE_RUNS)
    return conn


def enqueue(dsn: str, kind: str, payload: dict[str, Any] | None = None, **options) -> int:
    app = App(Settings(dsn=dsn))
    try:
        return app.enqueue(kind, payload or {}, **options)
    finally:
        app.close()


def worker_id_of(conn, proc: subprocess.Popen[str]) -> int:
    return wait_for(
        lambda: conn.execute(
            "SELECT id FROM angela_queue.workers WHERE pid = %s", (proc.pid,)
        ).fetchone()
    )[0]


def start_ready(dsn: str, conn, *args: str, env: dict[str, str] | None = None):
    """A worker that registered and has beaten for a heartbeat timeout (its reaper is armed)."""
    full_env = {**FAST, **(env or {})}
    proc = start_worker(dsn, *args, env=full_env)
    wid = worker_id_of(conn, proc)
    time.sleep(float(full_env["ANGELA_QUEUE_HEARTBEAT_TIMEOUT_S"]) + 2 * HEARTBEAT_S)
    return proc, wid


def row(conn, task_id: int, columns: str = "status, attempts, worker_id"):
    return conn.execute(
        f"SELECT {columns} FROM angela_queue.tasks WHERE id = %s", (task_id,)
    ).fetchone()


def running_under(conn, task_id: int, worker_id: int) -> bool:
    return row(conn, task_id)[0::2] == ("running", worker_id)


class StatusWatch(threading.Thread):
    """Records every status a worker row shows, polling every 20 ms on its own connection."""

    def __init__(self, dsn: str, worker_id: int) -> None:
        super().__init__(daemon=True)
        self.dsn, self.worker_id = dsn, worker_id
        self.seen: set[str] = set()
        self.done = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.done.wait(0.02):
                found = conn.execute(
                    "SELECT status FROM angela_queue.workers WHERE id = %s", (self.worker_id,)
                ).fetchone()
                if found is not None:
                    self.seen.add(found[0])

    def __enter__(self) -> StatusWatch:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.done.set()
        self.join(5)


def test_sigkilled_worker_task_is_reclaimed_in_time_and_completes_elsewhere(dsn, runs):
    a, a_id = start_ready(dsn, runs, "--concurrency", "1")
    task_id = enqueue(dsn, "test.hang_once", {"seconds": 60})
    wait_for(lambda: running_under(runs, task_id, a_id), timeout=10)
    b, b_id = start_ready(dsn, runs, "--concurrency", "1")
    try:
        a.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        wait_for(lambda: not running_under(runs, task_id, a_id), timeout=15, interval=0.02)
        latency = time.monotonic() - killed_at
        wait_for(lambda: row(runs, task_id)[0] == "succeeded", timeout=15)
    finally:
        stop(a)
        code, output = stop(b)
    assert code == 0, output
    assert latency <= HEARTBEAT_TIMEOUT_S + 1.2 * HEARTBEAT_S + SLACK_S, latency
    status, attempts, worker_id, result = row(runs, task_id, "status, attempts, worker_id, result")
    assert (status, attempts, worker_id) == ("succeeded", 2, b_id)
    assert result == {"pid": b.pid, "attempt": 2}
    assert runs.execute("SELECT attempt, pid FROM test_runs").fetchall() == [(2, b.pid)]
    assert runs.execute(
        "SELECT status FROM angela_queue.workers WHERE id = %s", (a_id,)
    ).fetchone() == ("dead",)


def test_sigstopped_worker_is_reclaimed_and_its_late_result_changes_nothing(dsn, runs):
    # Both workers are up before the task exists, so the pause comes right after the claim
    # however slowly a process starts: whichever claims it is the one paused.
    pair = [start_worker(dsn, "--concurrency", "1", env=FAST) for _ in range(2)]
    ids = [worker_id_of(runs, w) for w in pair]
    time.sleep(HEARTBEAT_TIMEOUT_S + 2 * HEARTBEAT_S)
    task_id = enqueue(dsn, "test.hang_once", {"seconds": 4}, timeout_s=60)
    owner = wait_for(lambda: row(runs, task_id)[0] == "running" and row(runs, task_id)[2])
    started = time.monotonic()
    (a, a_id), (b, b_id) = sorted(zip(pair, ids, strict=True), key=lambda p: p[1] != owner)
    try:
        a.send_signal(signal.SIGSTOP)
        wait_for(lambda: row(runs, task_id)[0] == "succeeded", timeout=20)
        time.sleep(max(0.0, started + 4.5 - time.monotonic()))  # the zombie's handler is done
        a.send_signal(signal.SIGCONT)
        a_code, a_output = stop_when_exited(a, timeout=30)
        time.sleep(0.5)
    finally:
        a.send_signal(signal.SIGCONT)
        stop(a)
        b_code, b_output = stop(b)
    assert b_code == 0, b_output
    # Declared dead by a reaper: it stops and asks to be restarted.
    assert a_code == EXIT_DECLARED_DEAD, a_output
    assert runs.execute(
        "SELECT status FROM angela_queue.workers WHERE id = %s", (a_id,)
    ).fetchone() == ("dead",)
    assert f"late result of task {task_id} ignored" in a_output
    status, attempts, worker_id, result = row(runs, task_id, "status, attempts, worker_id, result")
    assert (status, attempts, worker_id) == ("succeeded", 2, b_id)
    assert result == {"pid": b.pid, "attempt": 2}
    # Both attempts ran (at-least-once, and visible); only the re-run's result counts.
    assert sorted(runs.execute("SELECT attempt, pid FROM test_runs").fetchall()) == [
        (1, a.pid),
        (2, b.pid),
    ]


def stop_when_exited(proc: subprocess.Popen[str], timeout: float) -> tuple[int, str]:
    """Wait for a process that is expected to exit on its own; terminate it otherwise."""
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        return stop(proc)
    return proc.returncode, output


def test_cpu_bound_handlers_do_not_stop_the_heartbeat(dsn, runs):
    # Four pure-Python busy loops of 4 s (20 heartbeat intervals) on a worker of concurrency 4,
    # watched by a second worker whose reaper would reclaim them on a 3 s silence. The timeout
    # is wider than the other tests' 1.5 s: a beat is a commit, and on a shared CI machine one
    # commit once waited 1.3 s on the disk (other tests create and drop databases), which is
    # not what this test is about.
    timeout_s = 3.0
    slow_reaper = {"ANGELA_QUEUE_HEARTBEAT_TIMEOUT_S": str(timeout_s)}
    runs.execute("INSERT INTO angela_queue.queues (name) VALUES ('idle_only')")
    busy, busy_id = start_ready(dsn, runs, "--concurrency", "4", env=slow_reaper)
    watcher, _ = start_ready(
        dsn, runs, "--concurrency", "1", "--queue", "idle_only", env=slow_reaper
    )
    ids = [enqueue(dsn, "test.spin", {"seconds": 4}) for _ in range(4)]
    ages = []
    try:
        wait_for(lambda: all(row(runs, i)[0] == "running" for i in ids), timeout=10)
        while not all(row(runs, i)[0] == "succeeded" for i in ids):
            (age,) = runs.execute(
                "SELECT heartbeat_age_s FROM angela_queue.worker_stats WHERE id = %s", (busy_id,)
            ).fetchone()
            ages.append(age)
            assert len(ages) < 400, "the busy loops never finished"
            time.sleep(0.05)
    finally:
        outputs = [stop(busy), stop(watcher)]
    assert all(code == 0 for code, _ in outputs), outputs
    # The beats keep their pace: sampled at random points of a 0.2 s interval, the typical
    # age is below two intervals (measured 0.1 s with three CPU hogs beside the test); a
    # starved heartbeat thread would show ages of seconds throughout.
    assert statistics.median(ages) < 2 * HEARTBEAT_S, sorted(ages)
    # No beat is late enough for the reaper (measured 0.4-0.6 s at most under load).
    assert max(ages) < timeout_s - HEARTBEAT_S, sorted(ages)[-5:]
    assert {row(runs, i)[1:] for i in ids} == {(1, busy_id)}


def test_stuck_sync_handler_is_reclaimed_and_its_worker_exits(dsn, runs):
    a, a_id = start_ready(dsn, runs, "--concurrency", "1")
    with StatusWatch(dsn, a_id) as watch:
        task_id = enqueue(dsn, "test.hang_once", {"seconds": 30}, timeout_s=2, max_attempts=3)
        wait_for(lambda: running_under(runs, task_id, a_id), timeout=10)
        b, b_id = start_ready(dsn, runs, "--concurrency", "1")
        try:
            wait_for(lambda: row(runs, task_id)[0] == "succeeded", timeout=15)
            # One more timeout_s of grace, then it gives up on the thread and exits.
            a_code, a_output = stop_when_exited(a, timeout=20)
        finally:
            stop(a)
            b_code, b_output = stop(b)
    # The worker recorded the timeout itself, and showed `stuck` while the thread lingered.
    assert "stuck" in watch.seen, watch.seen
    assert b_code == 0, b_output
    assert a_code == EXIT_STUCK, a_output
    assert "stuck" in a_output
    assert row(runs, task_id) == ("succeeded", 2, b_id)
    assert runs.execute(
        "SELECT status FROM angela_queue.workers WHERE id = %s", (a_id,)
    ).fetchone() == ("dead",)


def test_blocked_event_loop_is_detected_its_task_reclaimed_and_the_worker_exits(dsn, runs):
    a, a_id = start_ready(dsn, runs, "--concurrency", "2")
    with StatusWatch(dsn, a_id) as watch:
        task_id = enqueue(dsn, "test.block_loop_once", {"seconds": 30}, timeout_s=1)
        wait_for(lambda: running_under(runs, task_id, a_id), timeout=10)
        b, b_id = start_ready(dsn, runs, "--concurrency", "1")
        try:
            a_code, a_output = stop_when_exited(a, timeout=20)
            wait_for(lambda: row(runs, task_id)[0] == "succeeded", timeout=15)
        finally:
            stop(a)
            b_code, b_output = stop(b)
    assert "stuck" in watch.seen, watch.seen
    assert a_code == EXIT_STUCK, a_output
    assert b_code == 0, b_output
    assert row(runs, task_id) == ("succeeded", 2, b_id)


def terminate_backends(conn) -> int:
    return conn.execute(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    ).fetchone()[0]


def test_killed_backends_are_survived_and_every_task_finishes(dsn, runs):
    workers = [start_worker(dsn, "--concurrency", "4", env=FAST) for _ in range(2)]
    app = App(Settings(dsn=dsn))
    ids = [
        e.id
        for e in app.enqueue_many(
            [{"kind": "test.slow", "payload": {"seconds": 0.02}, "max_attempts": 10}] * 600
        )
    ]
    app.close()
    killed = []
    try:
        wait_for(lambda: count_done(runs) > 50, timeout=20)
        for _ in range(4):
            killed.append(terminate_backends(runs))
            time.sleep(0.4)
        wait_for(lambda: count_done(runs) == len(ids), timeout=60)
        alive = [w.poll() is None for w in workers]
    finally:
        outputs = [stop(w) for w in workers]
    assert all(n > 0 for n in killed), killed
    assert alive == [True, True], outputs
    assert all(code == 0 for code, _ in outputs), outputs
    done = {t for (t,) in runs.execute("SELECT DISTINCT task_id FROM test_runs")}
    assert done == set(ids)


def count_done(conn) -> int:
    return conn.execute(
        "SELECT count(*) FROM angela_queue.tasks WHERE status = 'succeeded'"
    ).fetchone()[0]


def test_database_outage_longer_than_the_heartbeat_timeout(dsn, runs, pg_server_dsn):
    workers = [start_worker(dsn, "--concurrency", "2", env=FAST) for _ in range(2)]
    worker_ids = [worker_id_of(runs, w) for w in workers]
    dbname = runs.info.dbname
    time.sleep(HEARTBEAT_TIMEOUT_S + 0.5)  # every reaper is armed
    outage_s = 2 * HEARTBEAT_TIMEOUT_S
    try:
        set_connections(pg_server_dsn, dbname, allowed=False)
        terminate_backends(runs)
        time.sleep(outage_s)
        set_connections(pg_server_dsn, dbname, allowed=True)
        ids = [
            runs.execute(
                "INSERT INTO angela_queue.tasks (kind) VALUES ('test.record') RETURNING id"
            ).fetchone()[0]
            for _ in range(30)
        ]
        wait_for(lambda: count_done(runs) == len(ids), timeout=30)
        time.sleep(HEARTBEAT_TIMEOUT_S + 0.5)
        alive = [w.poll() is None for w in workers]
        statuses = [
            runs.execute("SELECT status FROM angela_queue.workers WHERE id = %s", (i,)).fetchone()[
                0
            ]
            for i in worker_ids
        ]
    finally:
        set_connections(pg_server_dsn, dbname, allowed=True)
        outputs = [stop(w) for w in workers]
    # Nobody was declared dead when the database came back: reapers wait for a whole
    # heartbeat timeout of healthy beats before judging anyone.
    assert alive == [True, True], outputs
    assert "dead" not in statuses, statuses
    assert all(code == 0 for code, _ in outputs), outputs
    for _, output in outputs:
        lost = output.count("database connection lost")
        # Backoff (0.1 s doubling up to 5 s), not a busy loop.
        assert 1 <= lost <= 8, output


def set_connections(server_dsn: str, dbname: str, *, allowed: bool) -> None:
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        admin.execute(
            sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS {}").format(
                sql.Identifier(dbname), sql.Literal(allowed)
            )
        )
