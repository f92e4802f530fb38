"""`angela-queue reap`: one pass for cron, or a long-running reaper."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from tests.e2e.helpers import ROOT, stop, wait_for
from tests.e2e.test_cli import assert_one_line_error, cli
from tests.integration.test_reaper import add_running, add_worker, task

pytestmark = pytest.mark.slow


def test_reap_once_prints_what_it_did_in_one_line(dsn, conn):
    silent = add_worker(conn, heartbeat_age_s=3600)
    retried = add_running(conn, silent)
    failed = add_running(conn, silent, attempts=5, max_attempts=5)
    first = cli("reap", "--once", dsn=dsn)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [
        f"reap: 1 worker(s) marked dead ({silent}); 2 task(s) reclaimed: 1 back to pending, "
        "1 failed (attempts used up), 0 of them from wedged workers"
    ]
    assert task(conn, retried)[0] == "pending" and task(conn, failed)[0] == "failed"
    again = cli("reap", "--once", dsn=dsn)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "reap: nothing to reap"


def test_reap_without_once_keeps_reaping_until_stopped(dsn, conn):
    proc = subprocess.Popen(
        [sys.executable, "-m", "angela_queue.cli", "reap", "--heartbeat-timeout", "1"],
        cwd=ROOT,
        env={"ANGELA_QUEUE_DSN": dsn, "ANGELA_QUEUE_HEARTBEAT_S": "0.2", "PATH": ""},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        silent = add_worker(conn, heartbeat_age_s=3600)
        first = add_running(conn, silent)
        wait_for(lambda: task(conn, first)[0] == "pending", timeout=15)
        later = add_running(conn, add_worker(conn, heartbeat_age_s=3600))
        wait_for(lambda: task(conn, later)[0] == "pending", timeout=15)
        proc.send_signal(signal.SIGTERM)
        code, output = stop(proc, timeout=15)
    finally:
        stop(proc)
    assert code == 0, output
    assert output.count("reaper: 1 worker(s) marked dead") == 2, output
    assert "Traceback" not in output


def test_reap_refuses_a_timeout_shorter_than_the_heartbeat(dsn):
    result = cli("reap", "--once", "--heartbeat-timeout", "1", dsn=dsn)
    assert_one_line_error(result, "heartbeat_timeout_s must be larger than heartbeat_s")
