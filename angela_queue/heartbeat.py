"""Heartbeater: keeps this worker's row alive from a thread of its own.

It runs on its own connection and thread, so neither a busy event loop nor a handler
that blocks can stall it (a handler holding the GIL in C code for long is the exception).
Counters are accumulated in memory and written with the beat: no extra round trip per task.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg

from angela_queue.store import TaskStore

log = logging.getLogger("angela_queue.heartbeat")


@dataclass
class WorkerCounters:
    """Thread-safe tallies since the last beat, plus what the worker is doing now."""

    completed: int = 0
    failed: int = 0
    processing_ms_sum: float = 0.0
    last_active_at: datetime | None = None
    running: dict[int, float] = field(default_factory=dict)  # task id → start (monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def started(self, task_id: int) -> None:
        with self.lock:
            self.running[task_id] = time.monotonic()
            self.last_active_at = datetime.now(UTC)

    def finished(self, task_id: int, succeeded: bool) -> float:
        """Record the end of a task; returns its processing time in ms."""
        with self.lock:
            start = self.running.pop(task_id, time.monotonic())
            elapsed_ms = (time.monotonic() - start) * 1000
            if succeeded:
                self.completed += 1
            else:
                self.failed += 1
            self.processing_ms_sum += elapsed_ms
            self.last_active_at = datetime.now(UTC)
            return elapsed_ms

    def take(self) -> dict[str, Any]:
        """Heartbeat parameters; resets the tallies (restored by ``give_back`` on failure)."""
        with self.lock:
            oldest = min(self.running, key=self.running.__getitem__) if self.running else None
            params = {
                "status": "active" if self.running else "idle",
                "current_task_id": oldest,
                "completed": self.completed,
                "failed": self.failed,
                "processing_ms_sum": self.processing_ms_sum,
                "last_active_at": self.last_active_at,
            }
            self.completed, self.failed, self.processing_ms_sum = 0, 0, 0.0
            return params

    def give_back(self, params: dict[str, Any]) -> None:
        with self.lock:
            self.completed += params["completed"]
            self.failed += params["failed"]
            self.processing_ms_sum += params["processing_ms_sum"]


class Heartbeater:
    """Beats every ``interval_s``; tells the worker when a stop is requested or it was reaped."""

    def __init__(
        self,
        dsn: str,
        worker_id: int,
        counters: WorkerCounters,
        interval_s: float,
        on_stop_requested: Callable[[str], object],
    ) -> None:
        self.dsn = dsn
        self.worker_id = worker_id
        self.counters = counters
        self.interval_s = interval_s
        self.on_stop_requested = on_stop_requested
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="angela-queue-heartbeat", daemon=True
        )
        self._conn: psycopg.Connection[Any] | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and flush the last counters."""
        self._stop.set()
        self._thread.join(timeout=self.interval_s + 5)

    def beat(self) -> None:
        """One heartbeat now (also used for the final flush)."""
        params = self.counters.take()
        try:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=5)
            stop = TaskStore(self._conn).worker_heartbeat({"id": self.worker_id, **params})
        except Exception as exc:
            self.counters.give_back(params)
            log.warning("heartbeat failed (will retry): %s", str(exc).strip().splitlines()[0])
            if self._conn is not None:
                self._conn.close()
            self._conn = None
            return
        if stop is None:
            self.on_stop_requested("this worker was declared dead by a reaper")
        elif stop:
            self.on_stop_requested("stop requested through the workers table")

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.beat()
        self.beat()
        if self._conn is not None:
            self._conn.close()
