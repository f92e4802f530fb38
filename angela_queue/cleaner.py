"""Cleaner: deletes finished tasks and dead worker rows past the retention, in batches.

Finished rows never sit in the hot indexes (they are partial on live states), so the claim
does not need them gone; the cleaner keeps the table and the monitoring history at a
chosen size. It runs in every worker (after a heartbeat, every ``interval_s``) but acts in
one at a time (an advisory transaction lock), and as `angela-queue prune --older-than`.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass

from angela_queue.errors import ConfigurationError
from angela_queue.store import TaskStore

log = logging.getLogger("angela_queue.cleaner")

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``12h``, ``7d``, ``2w`` → seconds (pure)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if not match:
        raise ConfigurationError(
            f"cannot read {text!r} as a duration: use e.g. 90s, 15m, 12h, 7d, 2w"
        )
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


@dataclass(frozen=True)
class CleanerConfig:
    """Retention in seconds (0 keeps everything), and the size and pace of the work."""

    retention_s: float
    interval_s: float = 60.0
    batch_size: int = 1000
    max_batches: int = 20


@dataclass(frozen=True)
class CleanResult:
    """What one pass did; ``skipped`` when another cleaner held the lock."""

    tasks: int = 0
    workers: int = 0
    skipped: bool = False


class Cleaner:
    """Deletes old finished rows; ``run_once`` is one bounded pass in one transaction."""

    def __init__(self, config: CleanerConfig) -> None:
        self.config = config
        self._last = 0.0

    def due(self) -> bool:
        return self.config.retention_s > 0 and (
            time.monotonic() - self._last >= self.config.interval_s
        )

    def run_once(self, store: TaskStore) -> CleanResult:
        self._last = time.monotonic()
        if self.config.retention_s <= 0:
            return CleanResult()
        with store.conn.transaction():
            if not store.cleaner_lock():
                return CleanResult(skipped=True)
            tasks = 0
            for _ in range(self.config.max_batches):
                deleted = store.task_delete_finished_before(
                    self.config.retention_s, self.config.batch_size
                )
                tasks += deleted
                if deleted < self.config.batch_size:
                    break
            workers = store.worker_delete_dead_before(self.config.retention_s)
        if tasks or workers:
            log.info(
                "cleaner deleted %d finished task(s) and %d dead worker row(s) older than %g s",
                tasks,
                workers,
                self.config.retention_s,
            )
        return CleanResult(tasks, workers)
