"""Typed reads of the monitoring views, shared by `status`, the metrics and the dashboard.

The three ways of watching the queue (plain SQL, the terminal, a browser) show the same
truth because they all read the views ``queue_stats``, ``worker_stats`` and ``tier_slo``
through this module; nothing here recomputes a figure the views already hold.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from angela_queue.store import TaskStore

# Dead workers stay in the workers table as history; views of "now" show the last hour's.
DEAD_WORKER_WINDOW_S = 3600.0
# Histogram bounds (seconds). Waits are compared with targets of 1 s … 30 min.
WAIT_BUCKETS_S = (0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0)
PROCESSING_BUCKETS_S = (0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0)

DECISIONS_SHOWN = 5


@dataclass(frozen=True, slots=True)
class QueueStat:
    """One row of ``angela_queue.queue_stats`` (README: "Monitoring" documents each column)."""

    queue: str
    tier: str
    target_wait_s: float
    pending: int
    scheduled: int
    running: int
    oldest_pending_age_s: float | None
    pending_past_target: int
    done_1h: int
    failed_1h: int
    dropped_1h: int
    cancelled_1h: int
    started_1h: int
    wait_p50_s: float | None
    wait_p95_s: float | None
    processing_p50_s: float | None
    processing_p95_s: float | None
    slo_breaches_1h: int
    dropped: int
    retrying: int
    retried_1h: int
    reclaimed: int

    @property
    def idle(self) -> bool:
        """Nothing live and nothing in the last hour: `status` leaves such rows out."""
        counts = (
            self.pending,
            self.scheduled,
            self.running,
            self.done_1h,
            self.failed_1h,
            self.dropped_1h,
            self.cancelled_1h,
            self.started_1h,
            self.dropped,
        )
        return not any(counts)


@dataclass(frozen=True, slots=True)
class WorkerStat:
    """One row of ``angela_queue.worker_stats``, plus ``health`` judged from the heartbeat."""

    id: int
    hostname: str
    pid: int
    queues: list[str]
    status: str
    heartbeat_age_s: float
    tasks_completed: int
    tasks_failed: int
    avg_processing_ms: float | None
    current_task_id: int | None
    last_active_at: datetime | None
    started_at: datetime
    tasks_running: int = 0
    avg_batch_size: float | None = None
    health: str = "ok"


@dataclass(frozen=True, slots=True)
class TierSlo:
    """One row of ``angela_queue.tier_slo``."""

    queue: str
    tier: str
    target_wait_s: float
    pending: int
    pending_past_target: int
    oldest_wait_s: float | None
    started_1h: int
    met_1h: int
    met_ratio_1h: float | None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything `status` shows, read in one transaction (one ``now()`` for every view)."""

    at: datetime
    queues: list[QueueStat]
    workers: list[WorkerStat]
    slo: list[TierSlo]
    # The supervisors' last decisions (angela_queue.supervisor_decisions), newest first.
    decisions: list[dict[str, Any]] = field(default_factory=list)
    # Due pending kinds no live worker serves (unserved_kinds); None when not read.
    unserved: list[dict[str, Any]] | None = None

    def active_queues(self) -> list[QueueStat]:
        return [q for q in self.queues if not q.idle]

    def to_json(self, *, include_idle: bool = False) -> dict[str, Any]:
        """Plain JSON types: the views' rows (idle queue × tier rows only when asked)."""
        queues = self.queues if include_idle else self.active_queues()
        return {
            "at": self.at.isoformat(),
            "queues": [jsonable(dataclasses.asdict(q)) for q in queues],
            "slo": [jsonable(dataclasses.asdict(s)) for s in self.slo],
            "workers": [jsonable(dataclasses.asdict(w)) for w in self.workers],
            "decisions": [jsonable(d) for d in self.decisions],
            **(
                {"unserved_kinds": [jsonable(u) for u in self.unserved]}
                if self.unserved is not None
                else {}
            ),
        }


@dataclass(frozen=True, slots=True)
class Histogram:
    """A Prometheus-style histogram of the last hour: cumulative counts per upper bound."""

    buckets: list[tuple[float, int]]  # (le, cumulative count); +Inf is ``count``
    count: int
    total: float


def worker_health(
    status: str, heartbeat_age_s: float, heartbeat_s: float, heartbeat_timeout_s: float
) -> str:
    """``ok``, ``late`` (missed two beats), ``silent`` (past the timeout: a reaper will
    declare it dead), or the status itself when it is ``stuck``, ``stopping`` or ``dead``."""
    if status in ("dead", "stuck", "stopping"):
        return status
    if heartbeat_age_s > heartbeat_timeout_s:
        return "silent"
    if heartbeat_age_s > 2 * heartbeat_s:
        return "late"
    return "ok"


def snapshot(
    store: TaskStore, *, heartbeat_s: float = 5.0, heartbeat_timeout_s: float = 30.0
) -> Snapshot:
    """Read the three views in one transaction."""
    with store.conn.transaction():
        queues = [QueueStat(**r) for r in store.queue_stats_list()]
        slo = [TierSlo(**r) for r in store.tier_slo_list()]
        rows = store.worker_stats_list(DEAD_WORKER_WINDOW_S)
        decisions = store.decision_recent(DECISIONS_SHOWN)
    workers = [
        WorkerStat(
            **r,
            health=worker_health(
                r["status"], r["heartbeat_age_s"], heartbeat_s, heartbeat_timeout_s
            ),
        )
        for r in rows
    ]
    return Snapshot(datetime.now(UTC), queues, workers, slo, decisions)


def unserved_kinds(store: TaskStore, limit: int = 20) -> list[dict[str, Any]] | None:
    """Due pending tasks no live worker serves, by queue and kind (an unknown kind waits, as
    designed); None for a role that may not read the view unserved_kinds."""
    return store.task_kinds_unserved(limit)


def histograms(
    store: TaskStore,
    wait_bounds: Sequence[float] = WAIT_BUCKETS_S,
    processing_bounds: Sequence[float] = PROCESSING_BUCKETS_S,
) -> dict[tuple[str, str, str], Histogram]:
    """The last hour's wait and processing histograms by (metric, queue, tier)."""
    rows = store.task_histogram(wait_bounds, processing_bounds)
    bounds = {"wait": tuple(wait_bounds), "processing": tuple(processing_bounds)}
    return cumulate(rows, bounds)


def cumulate(
    rows: Iterable[dict[str, Any]], bounds: dict[str, tuple[float, ...]]
) -> dict[tuple[str, str, str], Histogram]:
    """Per-bucket counts (bucket = number of bounds below the value) → cumulative (pure)."""
    grouped: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        grouped.setdefault((r["metric"], r["queue"], r["tier"]), []).append(r)
    result = {}
    for key, items in grouped.items():
        per_bucket = {int(r["bucket"]): int(r["n"]) for r in items}
        cumulative, running = [], 0
        for i, le in enumerate(bounds[key[0]]):
            running += per_bucket.get(i, 0)
            cumulative.append((le, running))
        count = sum(per_bucket.values())
        result[key] = Histogram(cumulative, count, float(sum(r["total"] for r in items)))
    return result


def throughput(
    store: TaskStore, bucket_s: int = 15, window_s: int = 900, now: datetime | None = None
) -> list[dict[str, Any]]:
    """Finished tasks per ``bucket_s`` over the last ``window_s``, empty buckets included."""
    rows = {r["at"]: r for r in store.task_throughput(bucket_s, window_s)}
    return fill_buckets(rows, bucket_s, window_s, now or datetime.now(UTC))


def fill_buckets(
    rows: dict[datetime, dict[str, Any]], bucket_s: int, window_s: int, now: datetime
) -> list[dict[str, Any]]:
    """Every bucket of the window in order, zeros where nothing finished (pure)."""
    epoch = datetime(2000, 1, 1, tzinfo=UTC)  # the origin task_throughput bins from
    step = timedelta(seconds=bucket_s)
    last = epoch + ((now - epoch) // step) * step
    points = []
    for i in range(window_s // bucket_s, -1, -1):
        at = last - i * step
        r = rows.get(at, {})
        points.append(
            {
                "at": at.isoformat(),
                "done": int(r.get("done", 0)),
                "failed": int(r.get("failed", 0)),
                "dropped": int(r.get("dropped", 0)),
            }
        )
    return points


def recent_failures(store: TaskStore, limit: int = 20) -> list[dict[str, Any]]:
    """Failed tasks, newest first, with their last error."""
    return [jsonable(r) for r in store.task_list_failed(limit)]


def dropped_tasks(store: TaskStore, limit: int = 20) -> list[dict[str, Any]]:
    """Dropped tasks in the order a requeue takes them (best first, per queue)."""
    return [jsonable(r) for r in store.task_list_dropped(limit)]


def jsonable(value: Any) -> Any:
    """Datetimes as ISO strings, containers walked (pure)."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value
