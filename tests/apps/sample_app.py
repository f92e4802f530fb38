"""Handlers used by the end-to-end tests; each run is recorded in the table test_runs."""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import time
from typing import Any

import psycopg

from angela_queue import App, BatchPartialFailure, Retry, Task

app = App()
_local = threading.local()

CREATE_RUNS = """CREATE TABLE IF NOT EXISTS test_runs (
    task_id bigint NOT NULL, attempt int NOT NULL, pid int NOT NULL,
    at timestamptz DEFAULT now())"""


def _conn() -> psycopg.Connection[Any]:
    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        conn = psycopg.connect(app.dsn, autocommit=True, **app.settings.connection_kwargs())
        _local.conn = conn
    return conn


def _record(task: Task, conn: psycopg.Connection[Any] | None = None) -> None:
    (conn or _conn()).execute(
        "INSERT INTO test_runs (task_id, attempt, pid) VALUES (%s, %s, %s)",
        (task.id, task.attempts, os.getpid()),
    )


@app.task("test.record")
def record(task: Task) -> dict[str, int]:
    _record(task)
    return {"pid": os.getpid()}


@app.task("test.noop")
def noop(task: Task) -> None:
    return None


@app.task("test.gc_frozen")
def gc_frozen(task: Task) -> dict[str, int]:
    return {"frozen": gc.get_freeze_count()}


@app.task("test.async_record")
async def async_record(task: Task) -> None:
    await asyncio.to_thread(_record, task)


@app.task("test.fail")
def fail(task: Task) -> None:
    _record(task)
    raise ValueError(f"boom on attempt {task.attempts}")


@app.task("test.slow")
def slow(task: Task) -> None:
    time.sleep(float(task.payload.get("seconds", 1.0)))
    _record(task)


@app.task("test.async_slow")
async def async_slow(task: Task) -> None:
    await asyncio.sleep(float(task.payload.get("seconds", 1.0)))
    await asyncio.to_thread(_record, task)


@app.task("test.tx", transactional=True)
def tx(task: Task) -> None:
    _record(task, task.conn)
    if task.payload.get("fail"):
        raise RuntimeError("rolled back")


@app.task("test.retry_later")
def retry_later(task: Task) -> None:
    _record(task)
    if task.attempts == 1:
        raise Retry(delay_s=float(task.payload.get("delay_s", 0.5)), reason="not yet")


CREATE_BATCHES = """CREATE TABLE IF NOT EXISTS test_batches (
    batch bigint NOT NULL, task_id bigint NOT NULL, batch_key text NOT NULL, size int NOT NULL,
    attempt int NOT NULL, at timestamptz DEFAULT now())"""


@app.task("test.batch", batch=True, batch_size=5, batch_wait_s=1.0)
def batch(tasks: list[Task]) -> None:
    """Records each batch; payload {"fail": true} fails that task alone, {"sleep": s} waits."""
    conn = _conn()
    number = min(t.id for t in tasks) * 1000 + tasks[0].attempts  # unique per batch run
    for t in tasks:
        conn.execute(
            "INSERT INTO test_batches (batch, task_id, batch_key, size, attempt)"
            " VALUES (%s, %s, %s, %s, %s)",
            (number, t.id, t.batch_key, len(tasks), t.attempts),
        )
    time.sleep(max(float(t.payload.get("sleep", 0)) for t in tasks))
    failed = {t.id: f"task {t.id} is bad" for t in tasks if t.payload.get("fail")}
    if failed:
        raise BatchPartialFailure(failed)


@app.task("test.spin")
def spin(task: Task) -> dict[str, int]:
    """Pure-Python CPU work that never sleeps: it holds the GIL whenever it may."""
    deadline = time.monotonic() + float(task.payload.get("seconds", 1.0))
    x = 0
    while time.monotonic() < deadline:
        for i in range(1000):
            x += i * i
    _record(task)
    return {"pid": os.getpid()}


@app.task("test.hang_once")
def hang_once(task: Task) -> dict[str, int]:
    """Hangs (sleeps ``seconds``) on its first attempt only; later attempts are quick."""
    if task.attempts == 1:
        time.sleep(float(task.payload.get("seconds", 30.0)))
    _record(task)
    return {"pid": os.getpid(), "attempt": task.attempts}


@app.task("test.block_loop_once")
async def block_loop_once(task: Task) -> dict[str, int]:
    """A broken async handler: on its first attempt it blocks the event loop."""
    if task.attempts == 1:
        time.sleep(float(task.payload.get("seconds", 30.0)))
    await asyncio.to_thread(_record, task)
    return {"pid": os.getpid(), "attempt": task.attempts}
