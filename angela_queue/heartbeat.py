"""Heartbeater: keeps this worker's row alive from a thread of its own.

It runs on its own connection and thread, so neither a busy event loop nor a handler
that blocks can stall it. A pure-Python CPU-bound handler cannot either: the GIL is
handed over every switch interval (5 ms), which delays a beat by milliseconds, not
seconds (measured in docs/discussions.md); a C extension that holds the GIL for long is
the exception. Counters are accumulated in memory and written with the beat: no extra
round trip per task.

The same thread watches the event loop (a loop that stops ticking is ``stuck``; one that
stays silent past its tasks' timeouts is given up on) and, after a successful beat, runs
this worker's share of reaping on the same connection. A worker that did work since its
last beat also raises its queues' claim floors (migration 0014): its claims left dead
index entries behind, and the next claims should start past them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from angela_queue.cleaner import Cleaner
from angela_queue.reaper import Reaper, Schedule, first_line
from angela_queue.store import TaskStore
from angela_queue.watchdog import loop_verdict

log = logging.getLogger("angela_queue.heartbeat")


@dataclass
class WorkerCounters:
    """Thread-safe tallies since the last beat, plus what the worker is doing now."""

    completed: int = 0
    failed: int = 0
    processing_ms_sum: float = 0.0
    batches: int = 0
    batch_tasks: int = 0
    # time.monotonic() of the last start or finish: the beat sends how long ago that was,
    # and the database dates it on its own clock (a worker's wall clock may be off).
    last_active: float | None = None
    running: dict[int, tuple[float, int]] = field(default_factory=dict)  # id → start, timeout
    stuck: set[int] = field(default_factory=set)  # tasks whose sync thread outlived its timeout
    stopping: bool = False
    loop_tick_at: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def started(self, task_id: int, timeout_s: int = 0) -> None:
        with self.lock:
            now = time.monotonic()
            self.running[task_id] = (now, timeout_s)
            self.last_active = now

    def finished(self, task_id: int, succeeded: bool) -> float:
        """Record the end of a task; returns its processing time in ms."""
        with self.lock:
            start, _ = self.running.pop(task_id, (time.monotonic(), 0))
            elapsed_ms = (time.monotonic() - start) * 1000
            if succeeded:
                self.completed += 1
            else:
                self.failed += 1
            self.processing_ms_sum += elapsed_ms
            self.last_active = time.monotonic()
            return elapsed_ms

    def batch_ran(self, size: int) -> None:
        with self.lock:
            self.batches += 1
            self.batch_tasks += size

    def tick(self) -> None:
        """The event loop is alive (called by it every LOOP_TICK_S)."""
        self.loop_tick_at = time.monotonic()

    def loop_silent_s(self) -> float:
        return time.monotonic() - self.loop_tick_at

    def longest_timeout_s(self) -> int:
        with self.lock:
            return max((t for _, t in self.running.values()), default=0)

    def take(self) -> dict[str, Any]:
        """Heartbeat parameters; resets the tallies (restored by ``give_back`` on failure)."""
        with self.lock:
            current: int | None = min(self.running, key=lambda i: self.running[i][0], default=None)
            status = "stopping" if self.stopping else "active" if self.running else "idle"
            if self.stuck:
                status, current = "stuck", min(self.stuck)
            params = {
                "status": status,
                "current_task_id": current,
                "completed": self.completed,
                "failed": self.failed,
                "processing_ms_sum": self.processing_ms_sum,
                "last_active_ago_s": (
                    None if self.last_active is None else time.monotonic() - self.last_active
                ),
                "batches": self.batches,
                "batch_tasks": self.batch_tasks,
            }
            self.completed, self.failed, self.processing_ms_sum = 0, 0, 0.0
            self.batches = self.batch_tasks = 0
            return params

    def give_back(self, params: dict[str, Any]) -> None:
        with self.lock:
            self.completed += params["completed"]
            self.failed += params["failed"]
            self.processing_ms_sum += params["processing_ms_sum"]
            self.batches += params["batches"]
            self.batch_tasks += params["batch_tasks"]


class Heartbeater:
    """Beats every ``interval_s``; tells the worker when a stop is requested or it was reaped.

    Callbacks run on the heartbeat thread: ``on_stop_requested(reason)`` for a stop asked
    through the workers table, ``on_declared_dead()`` when a reaper marked this worker dead,
    ``on_wedged(store, silent_s)`` when the event loop has been silent past every task's
    timeout (``store`` is on the heartbeat's connection).
    """

    def __init__(
        self,
        dsn: str,
        worker_id: int,
        counters: WorkerCounters,
        interval_s: float,
        on_stop_requested: Callable[[str], object],
        *,
        heartbeat_timeout_s: float = 30.0,
        on_declared_dead: Callable[[], object] | None = None,
        on_wedged: Callable[[TaskStore, float], object] | None = None,
        reaper: Reaper | None = None,
        cleaner: Cleaner | None = None,
        floors: tuple[Sequence[str], Sequence[str]] | None = None,
        connect_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.dsn = dsn
        self.connect_kwargs = connect_kwargs or {}
        self.worker_id = worker_id
        self.counters = counters
        self.interval_s = interval_s
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.on_stop_requested = on_stop_requested
        self.on_declared_dead = on_declared_dead
        self.on_wedged = on_wedged
        self.reaper = reaper
        self.cleaner = cleaner
        self.floors = floors  # (queues, kinds) whose claim floors to raise
        self.schedule = Schedule(reaper.config) if reaper is not None else None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="angela-queue-heartbeat", daemon=True
        )
        self._conn: psycopg.Connection[Any] | None = None
        self._declared_dead = False

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and flush the last counters."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=self.interval_s + 5)

    def poke(self) -> None:
        """Beat now rather than at the next interval (a status change worth telling)."""
        self._wake.set()

    def beat(self) -> None:
        """One heartbeat now (also used for the final flush)."""
        params = self.counters.take()
        silent = self.counters.loop_silent_s()
        verdict = loop_verdict(silent, self.heartbeat_timeout_s, self.counters.longest_timeout_s())
        if verdict != "ok" and not self._stop.is_set():
            params["status"] = "stuck"
        try:
            store = TaskStore(self._connection())
            stop = store.worker_heartbeat({"id": self.worker_id, **params})
        except Exception as exc:
            self.counters.give_back(params)
            if self.schedule is not None:
                self.schedule.broken()
            log.warning("heartbeat failed (will retry): %s", first_line(exc))
            self._close()
            return
        if stop is None:
            if not self._declared_dead:
                self._declared_dead = True
                log.error("worker %s was declared dead by a reaper", self.worker_id)
                (self.on_declared_dead or (lambda: self.on_stop_requested("declared dead")))()
            return
        if stop:
            self.on_stop_requested("stop requested through the workers table")
        if verdict == "give_up" and self.on_wedged is not None and not self._stop.is_set():
            self.on_wedged(store, silent)
        self._reap(store)
        self._clean(store)
        if params["completed"] or params["failed"] or params["status"] == "active":
            self._raise_floors(store)

    def _raise_floors(self, store: TaskStore) -> None:
        if self.floors is None or self._stop.is_set():
            return
        try:
            store.claim_floor_raise(*self.floors)
        except Exception as exc:
            log.warning("raising claim floors failed (will retry): %s", first_line(exc))

    def _clean(self, store: TaskStore) -> None:
        if self.cleaner is None or self._stop.is_set() or not self.cleaner.due():
            return
        try:
            self.cleaner.run_once(store)
        except Exception as exc:
            log.warning("cleaner pass failed (will retry): %s", first_line(exc))

    def _reap(self, store: TaskStore) -> None:
        if self.reaper is None or self.schedule is None or self._stop.is_set():
            return
        self.schedule.healthy()
        if not self.schedule.due():
            return
        try:
            self.reaper.run_once(store)
        except Exception as exc:
            log.warning("reaper pass failed (will retry): %s", first_line(exc))

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(
                self.dsn, autocommit=True, connect_timeout=5, **self.connect_kwargs
            )
        return self._conn

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None

    def _run(self) -> None:
        next_at = time.monotonic() + self.interval_s
        while not self._stop.is_set():
            # Deadline-based, so a slow beat does not push every later one back.
            self._wake.wait(max(0.0, next_at - time.monotonic()))
            self._wake.clear()
            if self._stop.is_set():
                break
            next_at = time.monotonic() + self.interval_s
            self.beat()
        self.beat()
        self._close()
