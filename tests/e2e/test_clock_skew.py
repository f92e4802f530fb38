"""No lease comparison uses a worker's clock: workers whose clocks are 5 minutes ahead and
5 minutes behind (tests/apps/skewed_clock.py) run side by side, reaping each other."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime

import pytest

from angela_queue import App, Settings
from tests.apps.sample_app import CREATE_RUNS
from tests.e2e.helpers import ROOT, stop, wait_for

pytestmark = pytest.mark.slow

SKEW_S = 300
RETRY_DELAY_S = 2.0


def start_skewed(dsn: str, skew_s: float) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "ANGELA_QUEUE_DSN": dsn,
        "ANGELA_QUEUE_TEST_CLOCK_SKEW_S": str(skew_s),
        "ANGELA_QUEUE_HEARTBEAT_S": "0.2",
        "ANGELA_QUEUE_HEARTBEAT_TIMEOUT_S": "1.0",
        "PYTHONUNBUFFERED": "1",
    }
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.apps.skewed_clock",
            "worker",
            "--app",
            "tests.apps.sample_app:app",
            "--concurrency",
            "2",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_skewed_worker_clocks_change_no_lease_and_no_retry_time(dsn, conn):
    conn.execute(CREATE_RUNS)
    app = App(Settings(dsn=dsn))
    retried = [app.enqueue("test.retry_later", {"delay_s": RETRY_DELAY_S}) for _ in range(4)]
    # Each runs 3 s, three heartbeat timeouts: a reaper comparing against its own clock
    # would find the other worker 5 minutes silent (or 5 minutes in the future).
    slow = [app.enqueue("test.slow", {"seconds": 3.0}) for _ in range(4)]
    app.close()
    ahead, behind = start_skewed(dsn, SKEW_S), start_skewed(dsn, -SKEW_S)
    try:
        wait_for(
            lambda: (
                conn.execute(
                    "SELECT count(*) FROM angela_queue.tasks WHERE status = 'succeeded'"
                ).fetchone()[0]
                == 8
            ),
            timeout=40,
        )
        # last_active_at is dated by the database too, whatever the worker's clock says.
        offsets = dict(
            conn.execute(
                "SELECT pid, extract(epoch FROM now() - last_active_at) FROM angela_queue.workers"
            ).fetchall()
        )
    finally:
        outputs = [stop(p) for p in (ahead, behind)]
        real_now = datetime.now()
    assert [code for code, _ in outputs] == [0, 0], outputs  # 3 would be "declared dead"
    assert all(0 <= float(v) < 30 for v in offsets.values()), offsets
    # The skew is real: each worker's log lines carry its own clock's time.
    for (_, output), skew in zip(outputs, (SKEW_S, -SKEW_S), strict=True):
        logged = datetime.strptime(output.splitlines()[-1][:23], "%Y-%m-%d %H:%M:%S,%f")
        assert abs((logged - real_now).total_seconds() - skew) < 30, output
    rows = conn.execute(
        "SELECT id, attempts, coalesce(last_error, '') FROM angela_queue.tasks"
    ).fetchall()
    assert {r[0]: r[1] for r in rows} == {**{i: 2 for i in retried}, **{i: 1 for i in slow}}
    assert not [r for r in rows if r[2].startswith("Reclaimed")], rows
    # Retries wait their delay on the database's clock: neither 5 minutes more, nor less.
    gaps = conn.execute(
        "SELECT task_id, extract(epoch FROM max(at) - min(at)) FROM test_runs"
        " WHERE task_id = ANY(%s) GROUP BY task_id",
        (retried,),
    ).fetchall()
    assert len(gaps) == 4 and all(
        RETRY_DELAY_S - 0.05 <= g <= RETRY_DELAY_S + 5 for _, g in gaps
    ), gaps
    pids = {p for (p,) in conn.execute("SELECT DISTINCT pid FROM test_runs").fetchall()}
    assert {ahead.pid, behind.pid} <= pids, "both skewed workers ran tasks"


@pytest.mark.parametrize("skew_s", [SKEW_S, -SKEW_S])
def test_enqueue_delay_counts_on_the_database_clock(dsn, conn, skew_s):
    """`angela-queue enqueue --delay 60` on a host whose clock is 5 minutes off: the task is
    due 60 s from the database's now, not 5 minutes earlier or later."""
    env = {**os.environ, "ANGELA_QUEUE_DSN": dsn, "ANGELA_QUEUE_TEST_CLOCK_SKEW_S": str(skew_s)}
    done = subprocess.run(
        [sys.executable, "-m", "tests.apps.skewed_clock", "enqueue", "a.b", "--delay", "60"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    row = conn.execute(
        "SELECT extract(epoch FROM run_at - enqueued_at) FROM angela_queue.tasks WHERE id = %s",
        (int(done.stdout.strip()),),
    ).fetchone()
    assert row is not None and 59 <= float(row[0]) <= 61, row
