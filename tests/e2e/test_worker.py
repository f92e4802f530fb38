"""Real worker processes against real PostgreSQL: drain, retry, SIGTERM, NOTIFY wake-up."""

from __future__ import annotations

import functools
import itertools
import signal
import time

import pytest

from angela_queue import App, Settings
from angela_queue.store import TaskStore
from tests.apps.sample_app import CREATE_RUNS
from tests.e2e.helpers import start_worker, stop, wait_for, wait_for_live_workers

pytestmark = pytest.mark.slow


@pytest.fixture
def runs(conn):
    conn.execute(CREATE_RUNS)
    return conn


def count(conn, where: str = "true") -> int:
    return conn.execute(f"SELECT count(*) FROM angela_queue.tasks WHERE {where}").fetchone()[0]


def test_four_workers_drain_3000_tasks_each_exactly_once(dsn, runs):
    app = App(Settings(dsn=dsn))
    ids = [
        e.id or 0
        for e in app.enqueue_many(
            [{"kind": "test.record", "priority": 1 + i % 10} for i in range(3000)]
        )
    ]
    app.close()
    workers = [start_worker(dsn, "--concurrency", "8") for _ in range(4)]
    try:
        wait_for(lambda: count(runs, "status = 'succeeded'") == 3000, timeout=90)
    finally:
        outputs = [stop(w) for w in workers]
    assert all(code == 0 for code, _ in outputs), outputs
    per_task = dict(runs.execute("SELECT task_id, count(*) FROM test_runs GROUP BY 1").fetchall())
    assert sorted(per_task) == sorted(ids)
    assert set(per_task.values()) == {1}
    assert runs.execute("SELECT max(attempts) FROM angela_queue.tasks").fetchone()[0] == 1
    assert len({pid for (pid,) in runs.execute("SELECT DISTINCT pid FROM test_runs")}) > 1


def test_failing_task_is_retried_with_backoff_then_failed(dsn, runs):
    app = App(Settings(dsn=dsn))
    task_id = app.enqueue("test.fail", max_attempts=3)
    app.close()
    worker = start_worker(dsn, env={"ANGELA_QUEUE_RETRY_BASE_S": "0.2"})
    try:
        wait_for(lambda: count(runs, "status = 'failed'") == 1, timeout=30)
    finally:
        code, output = stop(worker)
    assert code == 0, output
    status, attempts, error = runs.execute(
        "SELECT status, attempts, last_error FROM angela_queue.tasks WHERE id = %s", (task_id,)
    ).fetchone()
    assert (status, attempts) == ("failed", 3)
    assert "ValueError: boom on attempt 3" in error
    times = [t for (t,) in runs.execute("SELECT at FROM test_runs ORDER BY at").fetchall()]
    assert len(times) == 3
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    # Backoff with jitter: attempt 1 waits 0.1-0.2 s, attempt 2 waits 0.2-0.4 s.
    assert gaps[0] >= 0.1 and gaps[1] >= 0.2, gaps


def test_sigterm_lets_the_running_task_finish_and_exits_zero(dsn, runs):
    app = App(Settings(dsn=dsn))
    task_id = app.enqueue("test.slow", {"seconds": 2})
    app.close()
    worker = start_worker(dsn)
    wait_for(lambda: count(runs, "status = 'running'") == 1, timeout=20)
    worker.send_signal(signal.SIGTERM)
    code, output = stop(worker, timeout=30)
    assert code == 0, output
    assert (
        runs.execute("SELECT status FROM angela_queue.tasks WHERE id = %s", (task_id,)).fetchone()[
            0
        ]
        == "succeeded"
    )
    assert runs.execute("SELECT count(*) FROM test_runs").fetchone()[0] == 1
    assert runs.execute("SELECT status FROM angela_queue.workers").fetchone()[0] == "dead"


def succeeded(conn, task_id: int) -> bool:
    return conn.execute(
        "SELECT status = 'succeeded' FROM angela_queue.tasks WHERE id = %s", (task_id,)
    ).fetchone()[0]


def test_notify_wakes_an_idle_worker_within_milliseconds(dsn, runs):
    # A 30 s idle poll: only the NOTIFY can explain a fast start.
    worker = start_worker(dsn, env={"ANGELA_QUEUE_POLL_IDLE_S": "30"})
    try:
        wait_for(
            lambda: (
                runs.execute(
                    "SELECT count(*) FROM angela_queue.workers WHERE status = 'idle'"
                ).fetchone()[0]
                == 1
            )
        )
        time.sleep(0.5)  # the listener is up
        latencies = []
        for _ in range(5):
            task_id = runs.execute(
                "INSERT INTO angela_queue.tasks (kind) VALUES ('test.record') RETURNING id"
            ).fetchone()[0]
            wait_for(functools.partial(succeeded, runs, task_id), timeout=10, interval=0.01)
            latencies.append(
                runs.execute(
                    "SELECT extract(epoch FROM started_at - enqueued_at) FROM angela_queue.tasks"
                    " WHERE id = %s",
                    (task_id,),
                ).fetchone()[0]
            )
    finally:
        code, output = stop(worker)
    assert code == 0, output
    assert max(float(x) for x in latencies) < 0.25, latencies


def test_async_and_transactional_handlers(dsn, runs):
    app = App(Settings(dsn=dsn))
    ok = app.enqueue("test.async_record")
    tx_ok = app.enqueue("test.tx")
    tx_bad = app.enqueue("test.tx", {"fail": True}, max_attempts=1)
    app.close()
    worker = start_worker(dsn)
    try:
        wait_for(lambda: count(runs, "status IN ('succeeded', 'failed')") == 3, timeout=30)
    finally:
        code, output = stop(worker)
    assert code == 0, output
    recorded = {t for (t,) in runs.execute("SELECT task_id FROM test_runs").fetchall()}
    # The failing transactional handler's write was rolled back with its task.
    assert recorded == {ok, tx_ok}
    assert (
        runs.execute("SELECT status FROM angela_queue.tasks WHERE id = %s", (tx_bad,)).fetchone()[0]
        == "failed"
    )


def test_the_worker_process_keeps_its_startup_objects_out_of_the_collectors_sight(dsn, runs):
    app = App(Settings(dsn=dsn))
    task_id = app.enqueue("test.gc_frozen")
    app.close()
    worker = start_worker(dsn)
    try:
        wait_for(lambda: count(runs, "status = 'succeeded'") == 1, timeout=30)
    finally:
        code, output = stop(worker)
    assert code == 0, output
    (result,) = runs.execute(
        "SELECT result FROM angela_queue.tasks WHERE id = %s", (task_id,)
    ).fetchone()
    assert result["frozen"] > 10_000  # the modules and the app, frozen before the first task


def test_async_handler_over_its_timeout_is_cancelled_and_retried(dsn, runs):
    app = App(Settings(dsn=dsn))
    task_id = app.enqueue("test.async_slow", {"seconds": 30}, timeout_s=1, max_attempts=1)
    app.close()
    worker = start_worker(dsn)
    try:
        wait_for(lambda: count(runs, "status = 'failed'") == 1, timeout=20)
    finally:
        code, output = stop(worker)
    assert code == 0, output
    error = runs.execute(
        "SELECT last_error FROM angela_queue.tasks WHERE id = %s", (task_id,)
    ).fetchone()[0]
    assert "timeout_s=1" in error
    assert runs.execute("SELECT count(*) FROM test_runs").fetchone()[0] == 0


def test_worker_refuses_an_unknown_queue_in_one_line(dsn):
    worker = start_worker(dsn, "--queue", "nope")
    output, _ = worker.communicate(timeout=30)
    code = worker.returncode
    assert code == 1
    assert output.strip().splitlines()[-1].startswith("error: unknown queue 'nope'")
    assert "Traceback" not in output


def test_worker_registers_and_heartbeats(dsn, conn):
    worker = start_worker(
        dsn, env={"ANGELA_QUEUE_HEARTBEAT_S": "0.2", "ANGELA_QUEUE_HEARTBEAT_TIMEOUT_S": "5"}
    )
    try:
        first = wait_for(
            lambda: conn.execute("SELECT heartbeat_at FROM angela_queue.workers").fetchone()
        )[0]
        wait_for(
            lambda: conn.execute(
                "SELECT heartbeat_at > %s FROM angela_queue.workers", (first,)
            ).fetchone()[0],
            timeout=5,
        )
        row = conn.execute("SELECT pid, queues, kinds, status FROM angela_queue.workers").fetchone()
    finally:
        stop(worker)
    assert row[0] == worker.pid
    assert row[1] == ["default"] and "test.record" in row[2] and row[3] == "idle"


def test_sync_handler_past_its_timeout_is_failed_but_keeps_its_slot(dsn, runs):
    app = App(Settings(dsn=dsn))
    # It returns within the further grace of one timeout_s, so the worker does not give up.
    slow = app.enqueue("test.slow", {"seconds": 3}, timeout_s=2, max_attempts=1, priority=9)
    after = app.enqueue("test.record", priority=1)
    app.close()
    worker = start_worker(dsn, "--concurrency", "1")
    try:
        wait_for(lambda: count(runs, "status = 'succeeded'") == 1, timeout=30)
    finally:
        code, output = stop(worker)
    assert code == 0, output
    status, error, slow_started = runs.execute(
        "SELECT status, last_error, started_at FROM angela_queue.tasks WHERE id = %s", (slow,)
    ).fetchone()
    assert status == "failed" and "timeout_s=2" in error
    after_started = runs.execute(
        "SELECT started_at FROM angela_queue.tasks WHERE id = %s", (after,)
    ).fetchone()[0]
    # The one slot was held until the slow thread returned (3 s), not just its timeout (2 s).
    assert (after_started - slow_started).total_seconds() >= 2.9


def test_shutdown_past_the_grace_period_releases_the_task_and_exits_zero(dsn, runs):
    app = App(Settings(dsn=dsn))
    task_id = app.enqueue("test.slow", {"seconds": 60}, max_attempts=1, timeout_s=120)
    app.close()
    worker = start_worker(dsn, env={"ANGELA_QUEUE_SHUTDOWN_GRACE_S": "1"})
    wait_for(lambda: count(runs, "status = 'running'") == 1, timeout=20)
    started = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    code, output = stop(worker, timeout=30)
    assert code == 0, output
    assert time.monotonic() - started < 10
    status, error = runs.execute(
        "SELECT status, last_error FROM angela_queue.tasks WHERE id = %s", (task_id,)
    ).fetchone()
    # Even on its last attempt, a task interrupted by a shutdown goes back to pending.
    assert status == "pending" and "shut down" in error


def test_handler_can_ask_for_a_retry_after_a_delay(dsn, runs):
    app = App(Settings(dsn=dsn))
    task_id = app.enqueue("test.retry_later", {"delay_s": 1.5})
    # A delay past 100 years fails its attempt in the handler (ValueError), which then
    # backs off like any failure; the outcomes flushed beside it are written.
    absurd_id = app.enqueue("test.retry_later", {"delay_s": 1e300})
    app.close()
    worker = start_worker(dsn, env={"ANGELA_QUEUE_RETRY_BASE_S": "0.2"})
    try:
        wait_for(lambda: count(runs, "status = 'succeeded'") == 2, timeout=30)
    finally:
        code, output = stop(worker)
    assert code == 0, output
    assert f"task {absurd_id} (test.retry_later) attempt 1/" in output, output
    assert "ValueError: Retry delay_s must be a number of seconds up to" in output, output
    first, second = [
        t
        for (t,) in runs.execute(
            "SELECT at FROM test_runs WHERE task_id = %s ORDER BY at", (task_id,)
        )
    ]
    assert (second - first).total_seconds() >= 1.5
    assert (
        runs.execute(
            "SELECT attempts FROM angela_queue.tasks WHERE id = %s", (task_id,)
        ).fetchone()[0]
        == 2
    )


@pytest.mark.parametrize(
    ("args", "env"),
    [(("--no-listen",), {}), ((), {"ANGELA_QUEUE_LISTEN": "false"})],
    ids=["flag", "environment"],
)
def test_poll_only_worker_serves_without_listen(dsn, runs, args, env):
    """--no-listen, or the setting without the flag (the flag used to default to on and
    override it)."""
    worker = start_worker(dsn, *args, env=env)
    try:
        wait_for(
            lambda: (
                runs.execute(
                    "SELECT count(*) FROM angela_queue.workers WHERE status = 'idle'"
                ).fetchone()[0]
                == 1
            )
        )
        runs.execute(
            "INSERT INTO angela_queue.tasks (kind) SELECT 'test.record' FROM generate_series(1, 30)"
        )
        wait_for(lambda: count(runs, "status = 'succeeded'") == 30, timeout=30)
        listeners = runs.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND query LIKE 'LISTEN%%'"
        ).fetchone()
    finally:
        code, output = stop(worker)
    assert code == 0, output
    assert "listen False" in output and "listener" not in output
    assert listeners == (0,)


def test_a_stream_of_critical_work_cannot_starve_an_old_low_task(dsn, runs):
    worker = start_worker(dsn, "--concurrency", "1")
    try:
        for _ in range(5):
            runs.execute(
                "INSERT INTO angela_queue.tasks (kind, payload, priority)"
                " VALUES ('test.slow', '{\"seconds\": 0.05}', 9)"
            )
        wait_for(lambda: count(runs, "status = 'succeeded'") >= 1, timeout=20)
        old = runs.execute(
            "INSERT INTO angela_queue.tasks (kind, priority, enqueued_at) VALUES"
            " ('test.record', 1, now() - interval '30 minutes') RETURNING id"
        ).fetchone()[0]
        recent = runs.execute(
            "INSERT INTO angela_queue.tasks (kind, priority, enqueued_at) VALUES"
            " ('test.record', 1, now() - interval '5 minutes') RETURNING id"
        ).fetchone()[0]
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:  # keep the stream of fresh priority-9 work going
            runs.execute(
                "INSERT INTO angela_queue.tasks (kind, payload, priority)"
                " VALUES ('test.slow', '{\"seconds\": 0.05}', 9)"
            )
            time.sleep(0.02)
        old_start, recent_state = runs.execute(
            "SELECT (SELECT started_at FROM angela_queue.tasks WHERE id = %s),"
            " (SELECT status FROM angela_queue.tasks WHERE id = %s)",
            (old, recent),
        ).fetchone()
        backlog = count(runs, "status = 'pending' AND priority = 9")
    finally:
        code, output = stop(worker)
    assert code == 0, output
    assert backlog > 0  # the stream never ran dry, so only aging can explain the order
    assert old_start is not None
    assert recent_state == "pending"


def test_enqueue_into_a_full_queue_succeeds_when_a_worker_frees_room(dsn, runs):
    store = TaskStore(runs)
    store.queue_upsert("small")
    store.queue_set_bound("small", max_size=2)
    app = App(Settings(dsn=dsn, enqueue_wait_s=10))
    for _ in range(2):
        app.enqueue("test.slow", {"seconds": 1.0}, queue="small", priority=8)
    worker = start_worker(dsn, "--queue", "small", "--concurrency", "1")
    try:
        started = time.monotonic()
        task_id = app.enqueue("test.record", queue="small", priority=8)
        waited = time.monotonic() - started
        wait_for(lambda: count(runs, "status = 'succeeded'") == 3, timeout=30)
    finally:
        app.close()
        code, output = stop(worker)
    assert code == 0, output
    # Room came when the first slow task finished (about 1 s after the worker started).
    assert 0.5 < waited < 8, waited
    assert (
        runs.execute("SELECT status FROM angela_queue.tasks WHERE id = %s", (task_id,)).fetchone()[
            0
        ]
        == "succeeded"
    )


def test_the_log_level_setting_applies_when_no_flag_is_given(dsn, conn):
    """ANGELA_QUEUE_LOG_LEVEL (README, Configuration) is the default of --log-level."""
    quiet = start_worker(dsn, env={"ANGELA_QUEUE_LOG_LEVEL": "WARNING"})
    loud = start_worker(dsn, "--log-level", "INFO", env={"ANGELA_QUEUE_LOG_LEVEL": "WARNING"})
    wait_for_live_workers(conn, 2)
    quiet_code, quiet_out = stop(quiet)
    loud_code, loud_out = stop(loud)
    assert (quiet_code, loud_code) == (0, 0)
    assert "started: pid" not in quiet_out
    assert "started: pid" in loud_out  # the flag wins over the setting


def test_a_worker_that_did_work_raises_its_claim_floors_and_an_idle_one_does_not(dsn, runs):
    """Migration 0014: the heartbeat thread moves the floors of the worker's kinds up to the
    first due task once its claims left dead index entries behind."""
    floors = "SELECT kind, floor FROM angela_queue.claim_floors WHERE queue = 'default'"
    worker = start_worker(
        dsn, env={"ANGELA_QUEUE_HEARTBEAT_S": "0.2", "ANGELA_QUEUE_HEARTBEAT_TIMEOUT_S": "5"}
    )
    try:
        wait_for(
            lambda: (
                count(runs, "true") == 0
                and runs.execute(
                    "SELECT count(*) FROM angela_queue.workers WHERE heartbeat_at > started_at"
                ).fetchone()[0]
            )
        )
        time.sleep(0.5)  # beats of an idle worker
        assert runs.execute(floors).fetchall() == []
        app = App(Settings(dsn=dsn))
        app.enqueue_many([{"kind": "test.record"} for _ in range(20)])
        app.close()
        wait_for(lambda: count(runs, "status = 'succeeded'") == 20)
        rows = wait_for(lambda: dict(runs.execute(floors).fetchall()), timeout=5)
        first = runs.execute("SELECT min(sort_key) FROM angela_queue.tasks").fetchone()[0]
    finally:
        code, output = stop(worker)
    assert code == 0, output
    # Raised while the tasks ran (then to the first one still due) or after (+infinity):
    # either way past where the claims started.
    assert rows["test.record"] >= first


def test_a_worker_whose_queue_is_deleted_stops_with_exit_code_5(dsn, conn):
    """Deleting a served queue used to send the worker into a reconnect loop ("database
    connection lost") at every wake-up: its arming hit the deleted queue's foreign key."""
    conn.execute("INSERT INTO angela_queue.queues (name) VALUES ('other')")
    worker = start_worker(dsn, "--queue", "other")
    try:
        wait_for(
            lambda: conn.execute(
                "SELECT waiting FROM angela_queue.queue_waiters WHERE queue = 'other'"
            ).fetchone()
        )  # asleep, armed
        conn.execute("DELETE FROM angela_queue.queues WHERE name = 'other'")
        # Wake it: a new listener connection re-arms, as after any reconnect.
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND query LIKE 'LISTEN%%'"
        )
        code = worker.wait(timeout=20)
    finally:
        _, output = stop(worker)
    assert code == 5, output
    assert "a queue this worker serves was deleted (other)" in output
    assert "database connection lost" not in output
