"""Reaper: takes back the tasks of dead and wedged workers (DESIGN.md §5).

It runs in every worker (on the heartbeat's connection, right after a successful beat),
as `angela-queue reap`, and later in the supervisor. Many reapers at once are safe: each
step is one guarded UPDATE with SKIP LOCKED (see queries.sql), so a task is reclaimed once
however many reapers race for it, and never after it completed or was claimed again.

One pass (``run_once``):

1. workers silent for longer than ``heartbeat_timeout_s`` become ``dead``;
2. tasks running under a dead (or missing) worker go back to ``pending``, attempt
   counted, or ``failed`` when that was their last attempt;
3. tasks still running ``heartbeat_timeout_s`` past their own ``timeout_s`` are taken
   back the same way, whatever their worker's heartbeat says: that worker is wedged.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg

from angela_queue import errors
from angela_queue.settings import Settings, redact_dsn
from angela_queue.store import Reclaimed, TaskStore

log = logging.getLogger("angela_queue.reaper")

REAPER_INTERVAL_DEFAULT_S = 5.0
REAPER_JITTER_DEFAULT = 0.2
REAPER_BATCH_SIZE_DEFAULT = 1000
RECONNECT_MAX_S = 5.0


@dataclass(frozen=True)
class ReaperConfig:
    """When a worker counts as dead, how often to look, and how much to take per statement."""

    heartbeat_timeout_s: float = 30.0
    interval_s: float = REAPER_INTERVAL_DEFAULT_S
    # Each wait is interval_s × (1 − jitter × U[0, 1]): reapers started together drift apart,
    # and a pass is never later than interval_s (a reclaim stays within heartbeat timeout +
    # one interval, also for the worker's reaper, which can only run right after a beat).
    jitter: float = REAPER_JITTER_DEFAULT
    batch_size: int = REAPER_BATCH_SIZE_DEFAULT
    prepare: bool = True  # server-side prepared statements on its own connection

    @classmethod
    def from_settings(cls, settings: Settings, interval_s: float | None = None) -> ReaperConfig:
        """A reaper as often as the heartbeat, unless told otherwise."""
        return cls(
            heartbeat_timeout_s=settings.heartbeat_timeout_s,
            interval_s=interval_s or settings.heartbeat_s,
            prepare=settings.prepare,
        )


@dataclass(frozen=True)
class ReapResult:
    """What one pass did."""

    dead_workers: tuple[int, ...] = ()
    reclaimed: tuple[Reclaimed, ...] = ()
    overdue: tuple[int, ...] = field(default=())  # ids reclaimed from live but wedged workers

    @property
    def retried(self) -> list[int]:
        return [r.task_id for r in self.reclaimed if r.status == "pending"]

    @property
    def failed(self) -> list[int]:
        return [r.task_id for r in self.reclaimed if r.status != "pending"]

    @property
    def changed(self) -> bool:
        return bool(self.dead_workers or self.reclaimed)

    def summary(self) -> str:
        """One line for logs and the CLI."""
        if not self.changed:
            return "nothing to reap"
        workers = ", ".join(str(w) for w in self.dead_workers) or "-"
        return (
            f"{len(self.dead_workers)} worker(s) marked dead ({workers}); "
            f"{len(self.reclaimed)} task(s) reclaimed: {len(self.retried)} back to pending, "
            f"{len(self.failed)} failed (attempts used up), "
            f"{len(self.overdue)} of them from wedged workers"
        )


class Schedule:
    """Decides when a reaper in a long-lived process may run.

    Every ``interval_s`` at most, and only once its own connection has been healthy for
    a whole heartbeat timeout: after a database outage every worker's heartbeat is old, and
    the first reaper back must give the others time to beat before it judges them dead.
    """

    def __init__(self, config: ReaperConfig, rand: random.Random | None = None) -> None:
        self.config = config
        self._rand = rand or random.Random()
        self._healthy_since: float | None = None
        self._next_at = 0.0

    def healthy(self, now: float | None = None) -> None:
        if self._healthy_since is None:
            self._healthy_since = time.monotonic() if now is None else now

    def broken(self) -> None:
        self._healthy_since = None

    def due(self, now: float | None = None) -> bool:
        """True when a pass should run now (and schedules the next one)."""
        now = time.monotonic() if now is None else now
        if self._healthy_since is None or now < self._next_at:
            return False
        if now - self._healthy_since < self.config.heartbeat_timeout_s:
            return False
        self._next_at = now + self.delay()
        return True

    def delay(self) -> float:
        return max(0.01, self.config.interval_s * (1 - self.config.jitter * self._rand.random()))


class Reaper:
    """Reclaims tasks of dead and wedged workers; see the module docstring."""

    def __init__(self, config: ReaperConfig, dsn: str | None = None) -> None:
        self.config = config
        self.dsn = dsn
        self._conn: psycopg.Connection[Any] | None = None

    def run_once(self, store: TaskStore | None = None, now: datetime | None = None) -> ReapResult:
        """One pass, on ``store`` (an autocommit connection) or on the reaper's own.

        ``now`` replaces the database clock (tests); every comparison is made in SQL.
        """
        store = store or TaskStore(self._connection())
        timeout = self.config.heartbeat_timeout_s
        limit = self.config.batch_size
        dead = store.worker_mark_dead_stale(timeout, now)
        orphaned = _drain(lambda: store.task_reclaim_orphaned(limit, now), limit)
        overdue = _drain(lambda: store.task_reclaim_overdue(timeout, limit, now), limit)
        result = ReapResult(
            dead_workers=tuple(dead),
            reclaimed=tuple(orphaned + overdue),
            overdue=tuple(r.task_id for r in overdue),
        )
        if result.changed:
            log.info("reaper: %s", result.summary())
        return result

    def run_forever(self, stop: threading.Event) -> None:
        """Pass after pass until ``stop`` is set; reconnects with backoff, never busy-loops."""
        schedule = Schedule(self.config)
        backoff = 0.1
        while not stop.is_set():
            try:
                TaskStore(self._connection()).database_now()
                schedule.healthy()
                if schedule.due():
                    self.run_once()
                backoff = 0.1
            except (psycopg.Error, errors.AngelaQueueError) as exc:
                schedule.broken()
                self.close()
                why = first_line(exc)
                log.warning("reaper: database unavailable (%s); retrying in %.1f s", why, backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, RECONNECT_MAX_S)
                continue
            # A cheap liveness check between passes keeps the health window honest.
            stop.wait(min(1.0, self.config.interval_s / 2))
        self.close()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            if self.dsn is None:
                raise errors.ConfigurationError("this reaper has no DSN: pass a store")
            try:
                self._conn = psycopg.connect(
                    self.dsn,
                    autocommit=True,
                    connect_timeout=10,
                    prepare_threshold=5 if self.config.prepare else None,
                )
            except psycopg.OperationalError as exc:
                raise errors.DatabaseError(
                    f"cannot connect to {redact_dsn(self.dsn)}: {first_line(exc)}"
                ) from exc
        return self._conn


def _drain(step: Callable[[], list[Reclaimed]], limit: int) -> list[Reclaimed]:
    """Repeat a reclaim step while it fills whole batches (reclaimed rows leave its predicate)."""
    out: list[Reclaimed] = []
    while True:
        batch = step()
        out.extend(batch)
        if len(batch) < limit:
            return out


def first_line(exc: BaseException) -> str:
    """An error as one log line (some exceptions have an empty message)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
