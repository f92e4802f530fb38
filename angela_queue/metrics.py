"""Prometheus metrics, read from the monitoring views at scrape time.

Nothing is counted in process memory: every figure comes from the database when Prometheus
scrapes, so any number of `metrics` endpoints (or dashboards) agree with `status` and with
plain SQL. Figures over "the last hour" are gauges (``*_last_hour``), and the wait and
processing distributions are gauge histograms of the last hour: use ``histogram_quantile()``
on their buckets directly, without ``rate()``. True counters (``*_total``) are the workers'
own tallies.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator

import psycopg
from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from psycopg_pool import ConnectionPool, PoolTimeout

from angela_queue import errors, monitoring
from angela_queue.settings import Settings
from angela_queue.store import TaskStore
from angela_queue.watchdog import set_on_signals

log = logging.getLogger("angela_queue.metrics")
PREFIX = "angela_queue"
QT = ["queue", "tier"]
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
UNSERVED_LIMIT = 50  # (queue, kind) label pairs at most: kinds come from producers


def open_pool(dsn: str, settings: Settings | None = None) -> ConnectionPool:
    """A small pool for scrapes and dashboard reads; a dead database fails a read in 5 s."""
    kwargs = {"autocommit": True, **(settings.connection_kwargs() if settings else {})}
    return ConnectionPool(dsn, min_size=1, max_size=4, kwargs=kwargs, timeout=5.0, open=True)


class QueueCollector:
    """A prometheus_client collector that reads the views at every scrape."""

    def __init__(self, pool: ConnectionPool, settings: Settings) -> None:
        self.pool = pool
        self.settings = settings

    def describe(self) -> list[Metric]:
        return []  # names are only known at scrape time; never query at registration

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        try:
            with self.pool.connection() as conn:
                store = TaskStore(conn)
                snap = monitoring.snapshot(
                    store,
                    heartbeat_s=self.settings.heartbeat_s,
                    heartbeat_timeout_s=self.settings.heartbeat_timeout_s,
                )
                hists = monitoring.histograms(store)
                unserved = monitoring.unserved_kinds(store, UNSERVED_LIMIT) or []
        except (psycopg.Error, errors.AngelaQueueError, PoolTimeout) as exc:
            log.warning("metrics scrape could not read the database: %s", exc)
            yield _gauge("up", "1 when the last scrape could read the database.", [], [([], 0)])
            return
        yield _gauge("up", "1 when the last scrape could read the database.", [], [([], 1)])
        yield from queue_families(snap)
        yield from histogram_families(hists)
        yield from worker_families(snap)
        yield _gauge(
            "unserved_pending",
            "Due pending tasks no live worker serves, by queue and kind (the largest groups,"
            f" up to {UNSERVED_LIMIT}): they wait until a worker with their handler starts.",
            ["queue", "kind"],
            [([u["queue"], u["kind"]], float(u["pending"])) for u in unserved],
        )
        yield _gauge(
            "scrape_duration_seconds",
            "Time this scrape spent reading the database.",
            [],
            [([], time.perf_counter() - started)],
        )


def _gauge(
    name: str, doc: str, labels: list[str], samples: list[tuple[list[str], float]]
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=labels)
    for values, value in samples:
        family.add_metric(values, value)
    return family


def queue_families(snap: monitoring.Snapshot) -> Iterator[Metric]:
    """Gauges from queue_stats and tier_slo, one sample per queue and tier."""
    qs = snap.queues
    depth = GaugeMetricFamily(
        f"{PREFIX}_depth",
        "Live tasks: pending (due), scheduled (not yet due) and running.",
        labels=[*QT, "state"],
    )
    for q in qs:
        for state in ("pending", "scheduled", "running"):
            depth.add_metric([q.queue, q.tier, state], getattr(q, state))
    yield depth
    finished = GaugeMetricFamily(
        f"{PREFIX}_tasks_finished_last_hour",
        "Tasks that reached a final state in the last hour, by outcome.",
        labels=[*QT, "outcome"],
    )
    for q in qs:
        for outcome, value in (
            ("succeeded", q.done_1h),
            ("failed", q.failed_1h),
            ("dropped", q.dropped_1h),
            ("cancelled", q.cancelled_1h),
        ):
            finished.add_metric([q.queue, q.tier, outcome], value)
    yield finished
    per_tier: list[tuple[str, str, Callable[[monitoring.QueueStat], float]]] = [
        (
            "oldest_wait_seconds",
            "Age of the oldest due pending task (0 when none).",
            lambda q: q.oldest_pending_age_s or 0.0,
        ),
        ("target_wait_seconds", "The tier's target wait before start.", lambda q: q.target_wait_s),
        (
            "pending_past_target",
            "Due pending tasks already past their deadline.",
            lambda q: q.pending_past_target,
        ),
        ("dropped", "Tasks held as dropped now (a requeue puts them back).", lambda q: q.dropped),
        ("retrying", "Pending tasks waiting for another attempt.", lambda q: q.retrying),
        (
            "retried_last_hour",
            "Tasks finished in the last hour that needed more than one attempt.",
            lambda q: q.retried_1h,
        ),
        (
            "reclaimed",
            "Live tasks whose last attempt was reclaimed from a lost worker.",
            lambda q: q.reclaimed,
        ),
        (
            "slo_breaches_last_hour",
            "Tasks first started in the last hour later than their target.",
            lambda q: q.slo_breaches_1h,
        ),
    ]
    for name, doc, get in per_tier:
        yield _gauge(name, doc, QT, [([q.queue, q.tier], float(get(q))) for q in qs])
    yield _gauge(
        "slo_met_ratio",
        "Share of the last hour's first starts that met the target (tier_slo).",
        QT,
        [([s.queue, s.tier], s.met_ratio_1h) for s in snap.slo if s.met_ratio_1h is not None],
    )


def histogram_families(
    hists: dict[tuple[str, str, str], monitoring.Histogram],
) -> Iterator[Metric]:
    docs = {
        "wait": "Wait before the first start, over the last hour.",
        "processing": "Duration of the last attempt of tasks finished in the last hour.",
    }
    for metric, doc in docs.items():
        family = GaugeHistogramMetricFamily(f"{PREFIX}_{metric}_seconds", doc, labels=QT)
        for (m, queue, tier), h in sorted(hists.items()):
            if m != metric:
                continue
            buckets = [(f"{le:g}", float(n)) for le, n in h.buckets]
            buckets.append(("+Inf", float(h.count)))
            family.add_metric([queue, tier], buckets, gsum_value=h.total)
        yield family


def worker_families(snap: monitoring.Snapshot) -> Iterator[Metric]:
    by_status: dict[str, int] = {}
    for w in snap.workers:
        by_status[w.status] = by_status.get(w.status, 0) + 1
    yield _gauge(
        "workers",
        "Worker processes by status (dead ones: those heard from in the last hour).",
        ["status"],
        [([s], n) for s, n in sorted(by_status.items())],
    )
    labels = ["worker_id", "hostname"]
    yield _gauge(
        "worker_heartbeat_age_seconds",
        "Seconds since each live worker's last heartbeat.",
        labels,
        [([str(w.id), w.hostname], w.heartbeat_age_s) for w in snap.workers if w.status != "dead"],
    )
    tasks = CounterMetricFamily(
        f"{PREFIX}_worker_tasks",
        "Attempts each worker finished, by outcome (its own tally, kept in worker_stats).",
        labels=[*labels, "outcome"],
    )
    for w in snap.workers:
        tasks.add_metric([str(w.id), w.hostname, "succeeded"], w.tasks_completed)
        tasks.add_metric([str(w.id), w.hostname, "failed"], w.tasks_failed)
    yield tasks


def registry_for(pool: ConnectionPool, settings: Settings) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(QueueCollector(pool, settings))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The text exposition of one scrape (for the dashboard's /metrics)."""
    return generate_latest(registry)


def serve(dsn: str, settings: Settings, *, host: str, port: int) -> None:
    """Serve /metrics until SIGTERM or Ctrl-C (prometheus_client's own HTTP server)."""
    pool = open_pool(dsn, settings)
    try:
        server, thread = start_http_server(port, addr=host, registry=registry_for(pool, settings))
    except OSError as exc:
        pool.close()
        raise errors.ConfigurationError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    stop = threading.Event()
    set_on_signals(stop, signal.SIGTERM)  # a service manager's stop: exit 0
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        thread.join(timeout=5)
        pool.close()
