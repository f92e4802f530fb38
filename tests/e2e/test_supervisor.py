"""The supervisor with real processes: cron-style --once and the long-running loop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from angela_queue.supervisor import is_worker_command
from tests.apps.sample_app import CREATE_RUNS
from tests.e2e.helpers import ROOT, start_worker, stop, wait_for

pytestmark = pytest.mark.slow

FAST = {
    "ANGELA_QUEUE_HEARTBEAT_S": "0.3",
    "ANGELA_QUEUE_HEARTBEAT_TIMEOUT_S": "3",
    "ANGELA_QUEUE_SUPERVISOR_KILL_GRACE_S": "2",
}


def supervise(dsn: str, *args: str, env: dict[str, str] | None = None, wait: bool = True):
    full_env = {**os.environ, "ANGELA_QUEUE_DSN": dsn, **FAST, **(env or {})}
    command = [
        sys.executable,
        "-m",
        "angela_queue.cli",
        "supervise",
        "--app",
        "tests.apps.sample_app:app",
        *args,
    ]
    if not wait:
        return subprocess.Popen(
            command,
            cwd=ROOT,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    return subprocess.run(
        command, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=60
    )


def live_workers(conn) -> list[tuple[int, int, bool]]:
    return conn.execute(
        "SELECT id, pid, stop_requested FROM angela_queue.workers"
        " WHERE status <> 'dead' ORDER BY id"
    ).fetchall()


@pytest.fixture
def runs(conn):
    conn.execute(CREATE_RUNS)
    yield conn
    # Whatever the test started, nothing outlives it.
    for (pid,) in conn.execute("SELECT pid FROM angela_queue.workers").fetchall():
        try:
            proc = psutil.Process(pid)
            if is_worker_command(proc.cmdline()):
                proc.kill()
        except psutil.NoSuchProcess:
            pass


def decision_targets(conn) -> list[int]:
    return [
        t
        for (t,) in conn.execute(
            "SELECT target FROM angela_queue.supervisor_decisions ORDER BY id"
        ).fetchall()
    ]


def count(conn, where: str) -> int:
    return conn.execute(f"SELECT count(*) FROM angela_queue.tasks WHERE {where}").fetchone()[0]


def test_once_starts_detached_workers_that_drain_then_scale_down_without_interrupting(dsn, runs):
    runs.execute(
        "INSERT INTO angela_queue.tasks (kind, payload) SELECT 'test.slow',"
        " '{\"seconds\": 0.1}' FROM generate_series(1, 30)"
    )
    first = supervise(dsn, "--once", "--profile", "low")
    assert first.returncode == 0, first.stderr
    assert "start 2: no workers: start from base" in first.stdout
    workers = wait_for(lambda: len(live_workers(runs)) == 2 and live_workers(runs))
    for _, pid, _ in workers:  # detached: alive after the supervisor exited, own session
        proc = psutil.Process(pid)
        assert proc.is_running() and os.getsid(pid) == pid
    wait_for(lambda: count(runs, "status = 'succeeded'") == 30, timeout=60)

    busy = runs.execute(
        "INSERT INTO angela_queue.tasks (kind, payload) VALUES"
        " ('test.slow', '{\"seconds\": 3}') RETURNING id"
    ).fetchone()[0]
    wait_for(lambda: count(runs, "status = 'running'") == 1)
    second = supervise(dsn, "--once", "--profile", "low", "--min-workers", "1")
    assert second.returncode == 0, second.stderr
    assert "stop 1: pending 0 < 2" in second.stdout
    asked = runs.execute("SELECT id, pid FROM angela_queue.workers WHERE stop_requested").fetchall()
    assert len(asked) == 1
    running_worker = runs.execute(
        "SELECT worker_id FROM angela_queue.tasks WHERE id = %s", (busy,)
    ).fetchone()[0]
    assert asked[0][0] != running_worker  # the idle worker was asked, not the busy one
    wait_for(
        lambda: (
            not psutil.pid_exists(asked[0][1])
            or psutil.Process(asked[0][1]).status() == psutil.STATUS_ZOMBIE
        ),
        timeout=20,
    )
    wait_for(lambda: count(runs, "status = 'succeeded'") == 31, timeout=20)
    assert (
        runs.execute("SELECT attempts FROM angela_queue.tasks WHERE id = %s", (busy,)).fetchone()[0]
        == 1
    )
    decisions = runs.execute(
        "SELECT action FROM angela_queue.supervisor_decisions ORDER BY id"
    ).fetchall()
    assert [d[0] for d in decisions] == ["start 2", "stop 1"]


def test_killed_worker_is_replaced_and_stuck_worker_killed(dsn, runs):
    assert supervise(dsn, "--once", "--profile", "low").returncode == 0
    (a, pid_a, _), (b, pid_b, _) = wait_for(
        lambda: len(live_workers(runs)) == 2 and live_workers(runs)
    )
    os.kill(pid_a, signal.SIGKILL)
    os.kill(pid_b, signal.SIGSTOP)  # alive but silent: its heartbeat goes stale
    time.sleep(3.5)
    result = supervise(dsn, "--once", "--profile", "low")
    assert result.returncode == 0, result.stderr
    assert "1 gone marked dead, 1 stuck killed" in result.stderr
    assert not psutil.pid_exists(pid_b) or psutil.Process(pid_b).status() == psutil.STATUS_ZOMBIE
    assert {
        r[0]
        for r in runs.execute(
            "SELECT id FROM angela_queue.workers WHERE status = 'dead'"
        ).fetchall()
    } == {a, b}
    assert "start 2" in result.stdout
    wait_for(lambda: len(live_workers(runs)) == 2)


def test_two_supervisors_never_act_at_once(dsn, runs):
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as holder:
        import socket

        holder.execute("SELECT pg_advisory_lock(1095827714, hashtext(%s))", (socket.gethostname(),))
        result = supervise(dsn, "--once")
    assert "another supervisor is acting" in result.stdout
    assert live_workers(runs) == []


def test_long_running_supervisor_follows_a_burst_within_bounds(dsn, runs):
    proc = supervise(
        dsn, "--profile", "standard", "--check-interval", "0.4", "--concurrency", "2", wait=False
    )
    try:
        # The first check starts the profile's base (4); with nothing pending, the next ones
        # retire workers down to the minimum (2). Whether 4 are ever registered at once
        # depends on how fast Python starts on a loaded machine, so wait for the decision.
        wait_for(lambda: decision_targets(runs)[:1] == [4], timeout=30)
        runs.execute(
            "INSERT INTO angela_queue.tasks (kind, payload) SELECT 'test.slow',"
            " '{\"seconds\": 0.25}' FROM generate_series(1, 200)"
        )
        wait_for(lambda: count(runs, "status = 'succeeded'") == 200, timeout=120)
        wait_for(lambda: len([w for w in live_workers(runs) if not w[2]]) == 2, timeout=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
        print(output)  # pytest shows it when the test fails
    assert proc.returncode == 0, output
    targets = decision_targets(runs)
    assert max(targets) > 4, targets  # it scaled up for the burst …
    assert max(targets) <= 6 and min(targets) >= 2  # … within the profile's bounds
    assert targets[-1] == 2
    wait_for(lambda: live_workers(runs) == [], timeout=30)  # its workers stop with it


def test_is_worker_command():
    assert is_worker_command(
        ["/usr/bin/python3", "-m", "angela_queue.cli", "worker", "--app", "x:y"]
    )
    assert is_worker_command(["/venv/bin/angela-queue", "worker", "--app", "x:y"])
    assert not is_worker_command(["/usr/bin/python3", "-m", "angela_queue.cli", "supervise"])
    assert not is_worker_command(["postgres", "worker"])


def test_status_shows_the_last_decisions(dsn, runs):
    assert supervise(dsn, "--once", "--profile", "low").returncode == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANGELA_QUEUE_")}
    shown = subprocess.run(
        [sys.executable, "-m", "angela_queue.cli", "status"],
        cwd=ROOT,
        env={**env, "ANGELA_QUEUE_DSN": dsn},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "recent supervisor decisions:" in shown.stdout
    assert "pending=0 workers=0 target=2 start 2 (no workers: start from base)" in shown.stdout


def test_a_process_that_is_not_our_worker_is_never_signalled(dsn, runs):
    import socket

    stranger = subprocess.Popen(["sleep", "60"])
    try:
        runs.execute(
            "INSERT INTO angela_queue.workers (hostname, pid, queues, status, heartbeat_at)"
            " VALUES (%s, %s, '{default}', 'stuck', now() - interval '1 hour')",
            (socket.gethostname(), stranger.pid),
        )
        result = supervise(dsn, "--once", "--profile", "low")
        assert result.returncode == 0, result.stderr
        assert stranger.poll() is None  # still running: a pid is not enough to be ours
        assert "1 gone marked dead" in result.stderr
    finally:
        stranger.kill()
        stranger.wait()


def test_a_worker_stuck_past_its_timeout_is_killed_and_replaced(dsn, runs):
    assert (
        supervise(
            dsn,
            "--once",
            "--profile",
            "low",
            "--min-workers",
            "1",
            "--max-workers",
            "1",
            env={"ANGELA_QUEUE_BASE_WORKERS": "1"},
        ).returncode
        == 0
    )
    ((_, pid, _),) = wait_for(lambda: len(live_workers(runs)) == 1 and live_workers(runs))
    runs.execute(
        "INSERT INTO angela_queue.tasks (kind, payload, timeout_s) VALUES"
        " ('test.hang_once', '{\"seconds\": 60}', 3)"
    )
    # The sync handler cannot be interrupted: past its timeout the worker reports itself stuck.
    wait_for(
        lambda: (
            runs.execute(
                "SELECT status FROM angela_queue.workers WHERE pid = %s", (pid,)
            ).fetchone()[0]
            == "stuck"
        ),
        timeout=10,
    )
    result = supervise(
        dsn, "--once", "--profile", "low", "--min-workers", "1", "--max-workers", "1"
    )
    assert result.returncode == 0, result.stderr
    assert "1 stuck killed" in result.stderr and "start 1" in result.stdout
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    # The replacement runs the task again (its quick second attempt).
    wait_for(lambda: count(runs, "status = 'succeeded'") == 1, timeout=30)


def test_workers_still_starting_count_so_a_quick_check_starts_no_more(dsn, runs):
    """Checks every 0.3 s while the workers take 3 s to register: still 2 started, not 2
    per check."""
    sup = supervise(
        dsn,
        "--profile",
        "low",
        "--check-interval",
        "0.3",
        "--app",
        "tests.apps.slow_start_app:app",
        wait=False,
    )
    try:
        wait_for(lambda: len(live_workers(runs)) == 2, timeout=30)
        time.sleep(1.0)  # a few more checks, now with registered workers
    finally:
        sup.send_signal(signal.SIGTERM)
        output, _ = sup.communicate(timeout=60)
    assert sup.returncode == 0, output
    assert output.count("started worker pid") == 2, output
    assert runs.execute("SELECT count(*) FROM angela_queue.workers").fetchone() == (2,)


def test_workers_of_other_queues_on_the_host_are_neither_counted_nor_stopped(dsn, runs):
    """Two supervisors of one host may serve different queues: each counts, and may stop,
    only the workers of its own queues."""
    runs.execute("INSERT INTO angela_queue.queues (name) VALUES ('other')")
    other = start_worker(dsn, "--queue", "other", env=FAST)
    try:
        wait_for(lambda: len(live_workers(runs)) == 1)
        first = supervise(dsn, "--once", "--profile", "low")
        assert first.returncode == 0, first.stderr
        assert "start 2: no workers: start from base" in first.stdout
        wait_for(lambda: len(live_workers(runs)) == 3)
        second = supervise(dsn, "--once", "--profile", "low", "--min-workers", "1")
        assert second.returncode == 0, second.stderr
        assert "stop 1: pending 0 < 2" in second.stdout
        asked = runs.execute(
            "SELECT queues FROM angela_queue.workers WHERE stop_requested"
        ).fetchall()
        assert asked == [(["default"],)]
    finally:
        stop(other)
