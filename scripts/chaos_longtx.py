"""Scenario ``longtx``: a transaction held open while tasks flow at 200/s; the claim's p99
must stay within 3× its baseline (see scripts/chaos.py).

The claim is timed by a probe that claims alongside the real workers, through the same
store method (``AsyncTaskStore.task_claim``) and its own worker row, completing what it
gets. The long transaction is REPEATABLE READ with a snapshot taken: in the queue's own
database it pins the xmin horizon, so no dead tuple of the tasks table can be vacuumed, nor
its index entry skipped for good, while it lasts (Brandur, "Postgres Job Queues & Failure
By MVCC"). Held in another database of the same server it does not: since PostgreSQL 14
the horizon of a table counts only the sessions of its own database. Both are measured,
the other database first, since it leaves nothing behind. The claim is profiled with
EXPLAIN (ANALYZE, BUFFERS), inside a transaction rolled back, before and at the end.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from angela_queue import App
from angela_queue.heartbeat import WorkerCounters
from angela_queue.sql import QUERIES as Q
from angela_queue.store import AsyncTaskStore, Outcome, claim_params
from scripts.chaos_app import NOOP
from scripts.chaos_lib import (
    Db,
    Result,
    connect,
    percentile,
    prepare,
    processes,
    worker_env,
)

RATE = 200  # tasks per second
PROBE_EVERY_S = 0.02
PROBE_LIMIT = 4
BOUND = 3.0  # × baseline p99


class Probe:
    """Claims (and completes) up to PROBE_LIMIT tasks every PROBE_EVERY_S, timing each claim."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.samples: list[tuple[float, float]] = []  # (monotonic time, claim seconds)
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:
            self.error = exc

    async def _run(self) -> None:
        conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
        await conn.execute(Q["session_generic_plans"])  # as the worker's own connection
        store = AsyncTaskStore(conn)
        wid = await store.worker_register(socket.gethostname(), os.getpid(), ["default"], [NOOP], 4)
        next_beat = 0.0
        try:
            while not self.stop.is_set():
                began = time.perf_counter()
                tasks = await store.task_claim(wid, ["default"], [NOOP], PROBE_LIMIT)
                self.samples.append((time.monotonic(), time.perf_counter() - began))
                if tasks:
                    await store.task_complete_many(
                        wid, [Outcome(t.id, t.attempts, True) for t in tasks]
                    )
                if time.monotonic() >= next_beat:  # a live worker row: reapers leave it alone
                    params = {"id": wid, **WorkerCounters().take()}
                    await conn.execute(Q["worker_heartbeat"], params)
                    next_beat = time.monotonic() + 0.5
                await asyncio.sleep(PROBE_EVERY_S)
        finally:
            await store.worker_mark_dead(wid)
            await conn.close()


def _produce(dsn: str, stop: threading.Event, sent: list[int]) -> None:
    """RATE tasks a second, in batches of RATE/20 every 50 ms, on a fixed schedule."""
    producer = App(dsn=dsn)
    batch = RATE // 20
    try:
        next_at = time.monotonic()
        while not stop.is_set():
            producer.enqueue_many([{"kind": NOOP, "payload": {}} for _ in range(batch)])
            sent[0] += batch
            next_at += 0.05
            stop.wait(max(0.0, next_at - time.monotonic()))
    finally:
        producer.close()


def profile_claim(dsn: str) -> dict[str, Any]:
    """EXPLAIN (ANALYZE, BUFFERS) of one real claim, rolled back: its time, the scan of
    tasks_claim_idx, and the plan nodes that took the most time of their own."""
    with psycopg.connect(dsn) as conn:
        params = claim_params(0, ["default"], [NOOP], PROBE_LIMIT, None)
        row = conn.execute(
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + Q["task_claim"], params
        ).fetchone()
        conn.rollback()
    assert row is not None
    plan = row[0][0]
    nodes = list(_nodes(plan["Plan"]))
    index = next((n for n in nodes if n.get("Index Name") == "tasks_claim_idx"), None)

    def total_ms(node: dict[str, Any]) -> float:
        return float(node["Actual Total Time"]) * int(node["Actual Loops"])

    def own_ms(node: dict[str, Any]) -> float:
        return total_ms(node) - sum(total_ms(c) for c in node.get("Plans", []))

    hot = sorted(nodes, key=own_ms, reverse=True)[:3]
    return {
        "execution_ms": round(float(plan["Execution Time"]), 3),
        "index_scan_ms": None if index is None else round(total_ms(index), 3),
        "index_buffers": None if index is None else int(index["Shared Hit Blocks"]),
        "hotspots": ", ".join(f"{_label(n)} {own_ms(n):.3f} ms" for n in hot),
    }


def _nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from _nodes(child)


def _label(node: dict[str, Any]) -> str:
    on = node.get("Index Name") or node.get("Relation Name") or node.get("CTE Name")
    return f"{node['Node Type']}{f' ({on})' if on else ''}"


def table_stats(db: Db) -> dict[str, Any]:
    row = db.rows(
        "SELECT n_dead_tup, n_live_tup, pg_relation_size('angela_queue.tasks_claim_idx'),"
        " (SELECT count(*) FROM angela_queue.tasks WHERE status = 'pending')"
        " FROM pg_stat_user_tables WHERE relid = 'angela_queue.tasks'::regclass"
    )[0]
    return {
        "dead_tuples": row[0],
        "live_tuples": row[1],
        "claim_index_bytes": row[2],
        "backlog": row[3],
    }


def _window_p99s(
    samples: list[tuple[float, float]], start: float, end: float, width: float
) -> list[float]:
    out = []
    t = start
    while t < end:
        chunk = [s for at, s in samples if t <= at < min(end, t + width)]
        if chunk:
            out.append(percentile(chunk, 99))
        t += width
    return out


def run_longtx(dsn: str, logs: Path, *, quick: bool, hold_s: float | None = None) -> Result:
    prepare(dsn)
    result = Result("longtx")
    hold = hold_s or (20.0 if quick else 300.0)
    baseline_s = 10.0 if quick else 60.0
    other_s = 10.0 if quick else 60.0
    window = 5.0 if quick else 30.0
    db = Db(dsn)
    env = worker_env(dsn, 0.5, 2.0)
    sent = [0]
    stop = threading.Event()
    probe = Probe(dsn)
    with processes(logs) as procs:
        for _ in range(3):
            procs.worker(env, 4)
        producer = threading.Thread(target=_produce, args=(dsn, stop, sent), daemon=True)
        producer.start()
        probe.thread.start()
        time.sleep(3.0)  # warm-up: workers started, flow steady
        b0, sent0 = time.monotonic(), sent[0]
        time.sleep(baseline_s)
        b1 = time.monotonic()
        base_profile, base_stats = profile_claim(dsn), table_stats(db)
        # The mitigation first (it leaves no dead tuple behind): the same transaction in
        # another database of the same server, whose snapshot vacuum here ignores.
        elsewhere = _hold(make_conninfo(dsn, dbname="postgres"))
        o0 = time.monotonic()
        time.sleep(other_s)
        o1 = time.monotonic()
        elsewhere.rollback()
        elsewhere.close()
        holder = _hold(dsn)
        l0 = time.monotonic()
        time.sleep(hold)
        l1 = time.monotonic()
        long_profile, long_stats = profile_claim(dsn), table_stats(db)
        xmin_age = db.one(
            "SELECT max(age(backend_xmin)) FROM pg_stat_activity WHERE backend_xmin IS NOT NULL"
        )
        holder.rollback()
        holder.close()
        rate = (sent[0] - sent0) / (l1 - b0)
        stop.set()
        probe.stop.set()
        producer.join()
        probe.thread.join(30)
    db.close()
    base = [s for at, s in probe.samples if b0 <= at < b1]
    held = [s for at, s in probe.samples if l0 <= at < l1]
    base_p99 = percentile(base, 99)
    other = _window_p99s(probe.samples, o0, o1, window)
    other_worst = max(other, default=0.0)
    windows = _window_p99s(probe.samples, l0, l1, window)
    worst = max(windows, default=0.0)
    ms = 1000.0
    result.lines = [
        f"{rate:.0f} tasks/s enqueued; 3 workers × 4 + the probe; baseline {baseline_s:g} s, "
        f"then a REPEATABLE READ snapshot held {hold:g} s in the queue's database (xmin age "
        f"{xmin_age} at the end)",
        f"claim without it: p50 {percentile(base, 50) * ms:.2f} ms, p99 {base_p99 * ms:.2f} ms "
        f"({len(base)} claims)",
        f"claim with it: p50 {percentile(held, 50) * ms:.2f} ms, p99 "
        f"{percentile(held, 99) * ms:.2f} ms ({len(held)} claims); worst {window:g} s-window "
        f"p99 {worst * ms:.2f} ms = {worst / base_p99 if base_p99 else 0:.1f}× baseline",
        f"p99 per {window:g} s window: " + ", ".join(f"{x * ms:.1f}" for x in windows) + " ms",
        f"the same transaction held {other_s:g} s in another database of the server: worst "
        f"{window:g} s-window p99 {other_worst * ms:.2f} ms = "
        f"{other_worst / base_p99 if base_p99 else 0:.1f}× baseline",
        f"dead tuples {base_stats['dead_tuples']} → {long_stats['dead_tuples']}; claim index "
        f"{base_stats['claim_index_bytes'] // 1024} → "
        f"{long_stats['claim_index_bytes'] // 1024} kB; "
        f"backlog {base_stats['backlog']} → {long_stats['backlog']}",
        f"EXPLAIN ANALYZE of the claim: {base_profile['execution_ms']} ms → "
        f"{long_profile['execution_ms']} ms, of which the scan of tasks_claim_idx "
        f"{base_profile['index_scan_ms']} → {long_profile['index_scan_ms']} ms "
        f"({base_profile['index_buffers']} → {long_profile['index_buffers']} buffers)",
        f"the claim's slowest plan nodes at the end: {long_profile['hotspots']} "
        f"(at the baseline: {base_profile['hotspots']})",
    ]
    if probe.error is not None:
        result.lines.append(f"probe error: {probe.error!r}")
    result.figures = {
        "rate_per_s": round(rate),
        "hold_s": hold,
        "baseline_p99_ms": round(base_p99 * ms, 2),
        "longtx_p99_ms": round(percentile(held, 99) * ms, 2),
        "worst_window_p99_ms": round(worst * ms, 2),
        "ratio": round(worst / base_p99, 2) if base_p99 else None,
        "dead_tuples_end": long_stats["dead_tuples"],
        "explain_ms_baseline": base_profile["execution_ms"],
        "explain_ms_end": long_profile["execution_ms"],
        "other_database_worst_window_p99_ms": round(other_worst * ms, 2),
    }
    result.promise(
        f"tasks flowed at ≥ 90 % of {RATE}/s", rate >= 0.9 * RATE and probe.error is None
    )
    result.promise(
        f"claim p99 within {BOUND:g}× baseline in every {window:g} s window of the long "
        f"transaction ({worst * ms:.2f} ms vs {base_p99 * ms:.2f} ms)",
        bool(base) and bool(held) and worst <= BOUND * base_p99,
    )
    result.promise(
        f"held in another database instead, claim p99 within {BOUND:g}× baseline "
        f"({other_worst * ms:.2f} ms)",
        bool(other) and other_worst <= BOUND * base_p99,
    )
    return result


def _hold(dsn: str) -> psycopg.Connection[Any]:
    """A REPEATABLE READ transaction with its snapshot taken, left open."""
    holder = connect(dsn)
    holder.autocommit = False
    holder.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    holder.execute("SELECT count(*) FROM pg_class").fetchone()  # the snapshot
    return holder
