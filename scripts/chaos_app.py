"""The handlers the chaos workers run (``--app scripts.chaos_app:app``).

Every handler first records its start in ``chaos_runs`` on an autocommit connection of its
own, so a start survives the process being killed right after: the execution ledger that
counts duplicate runs. ``chaos.tx`` also writes its effect in ``chaos_effects`` on
``task.conn``, inside the transaction that completes the task (transactional completion):
the effect ledger that must hold exactly one row per task.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import psycopg

from angela_queue import App, Task

CREATE_LEDGERS = """
CREATE TABLE IF NOT EXISTS chaos_runs (
    task_id bigint NOT NULL, attempt int NOT NULL, pid int NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE IF NOT EXISTS chaos_effects (
    task_id bigint NOT NULL, attempt int NOT NULL, pid int NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp());
"""

WORK = "chaos.work"
TX = "chaos.tx"
POISON = "chaos.poison"
NOOP = "chaos.noop"
POISON_EXIT_CODE = 13

app = App()
_local = threading.local()


def _record_start(task: Task) -> None:
    """One row in chaos_runs, retried once on a fresh connection (after a server restart)."""
    for attempt in (1, 2):
        conn = getattr(_local, "conn", None)
        if conn is None or conn.closed:
            conn = _local.conn = psycopg.connect(app.dsn, autocommit=True, connect_timeout=5)
        try:
            conn.execute(
                "INSERT INTO chaos_runs (task_id, attempt, pid) VALUES (%s, %s, %s)",
                (task.id, task.attempts, os.getpid()),
            )
            return
        except psycopg.OperationalError:
            conn.close()
            if attempt == 2:
                raise


def _sleep(task: Task) -> None:
    time.sleep(float(task.payload.get("ms", 0)) / 1000)


@app.task(WORK, max_attempts=25)
def work(task: Task) -> dict[str, Any]:
    """Record the start, sleep ``payload.ms``; the result names the process that ran it."""
    _record_start(task)
    _sleep(task)
    return {"pid": os.getpid()}


@app.task(TX, transactional=True, max_attempts=25)
def work_tx(task: Task) -> dict[str, Any]:
    """Like ``chaos.work``, plus one effect row written with the task's completion."""
    _record_start(task)
    _sleep(task)
    assert task.conn is not None
    task.conn.execute(
        "INSERT INTO chaos_effects (task_id, attempt, pid) VALUES (%s, %s, %s)",
        (task.id, task.attempts, os.getpid()),
    )
    return {"pid": os.getpid()}


@app.task(POISON, max_attempts=3)
def poison(task: Task) -> None:
    """A poison pill: it takes its whole worker process down, every time."""
    _record_start(task)
    os._exit(POISON_EXIT_CODE)


@app.task(NOOP, max_attempts=5)
def noop(task: Task) -> None:
    """Nothing: for scenarios that measure the queue itself."""
