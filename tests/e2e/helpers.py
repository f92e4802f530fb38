"""Start real `angela-queue worker` processes and wait on database conditions."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def start_worker(
    dsn: str, *args: str, env: dict[str, str] | None = None, app: str = "tests.apps.sample_app:app"
) -> subprocess.Popen[str]:
    full_env = {**os.environ, "ANGELA_QUEUE_DSN": dsn, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "angela_queue.cli", "worker", "--app", app, *args],
        cwd=ROOT,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def wait_for_live_workers(conn: Any, count: int = 1, timeout: float = 30.0) -> None:
    """Until ``count`` workers are registered and not dead (``conn``: autocommit)."""

    def live() -> bool:
        row = conn.execute(
            "SELECT count(*) FROM angela_queue.workers WHERE status <> 'dead'"
        ).fetchone()
        return bool(row and row[0] == count)

    wait_for(live, timeout=timeout)


def stop(proc: subprocess.Popen[str], timeout: float = 30.0) -> tuple[int, str]:
    if proc.poll() is None:
        proc.terminate()
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
    return proc.returncode, output
