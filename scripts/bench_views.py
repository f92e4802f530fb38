"""How fast the monitoring views answer with a big history (`python scripts/bench_views.py`).

Seeds a fresh database with ``--finished`` finished tasks (default 1,000,000) spread evenly
over the last ``--history-hours`` (default 24, so about 42,000 fall in the last hour), plus a
live backlog (pending, scheduled, running, dropped) and workers, then times each monitoring
read as `angela-queue status`, the metrics scrape and the dashboard run it. The target is
under 50 ms per view. Without ``--dsn`` (or ANGELA_QUEUE_DSN) a throwaway embedded server is
used. Seeding bypasses the insert trigger (rows are written complete), so it takes seconds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any, LiteralString

import psycopg

from angela_queue.sql import QUERIES
from scripts.bench import BenchError, ServerOptions, first_line, fresh_database, server

TARGET_MS = 50.0
READS: dict[str, LiteralString] = {
    "queue_stats": "SELECT * FROM angela_queue.queue_stats",
    "worker_stats": "SELECT * FROM angela_queue.worker_stats",
    "tier_slo": "SELECT * FROM angela_queue.tier_slo",
    # The other reads of one dashboard refresh / metrics scrape (queries.sql).
    "task_histogram (metrics)": QUERIES["task_histogram"],
    "task_throughput (dashboard)": QUERIES["task_throughput"],
    "task_list_failed (dashboard)": QUERIES["task_list_failed"],
}
READ_PARAMS: dict[str, dict[str, Any]] = {
    "task_histogram (metrics)": {
        "wait_bounds": [0.1, 1.0, 5.0, 60.0, 300.0, 1800.0],
        "processing_bounds": [0.01, 0.1, 1.0, 10.0, 60.0],
    },
    "task_throughput (dashboard)": {"bucket_s": 15, "window_s": 900},
    "task_list_failed (dashboard)": {"limit": 20},
}

SEED = """
INSERT INTO angela_queue.tasks
       (queue, kind, payload, priority, tier, status, enqueued_at, run_at, aging_from,
        deadline_at, sort_key, ready, attempts, first_started_at, started_at, finished_at,
        last_error, batch_key)
SELECT 'default', 'bench.history', '{}', p, angela_queue.tier_of(p), st, enq, enq, enq,
       enq + angela_queue.tier_target_wait(angela_queue.tier_of(p)),
       0.3 * angela_queue.epoch_minutes(enq) - p, true, att,
       CASE WHEN st IN ('succeeded', 'failed') THEN enq + wait END,
       CASE WHEN st IN ('succeeded', 'failed') THEN enq + wait END,
       enq + wait + run,
       CASE WHEN st = 'failed' THEN 'ValueError: boom' END, 'bench.history'
  FROM (
    SELECT 1 + i %% 10 AS p,
           CASE WHEN i %% 50 = 0 THEN 'failed' WHEN i %% 97 = 0 THEN 'dropped'
                WHEN i %% 211 = 0 THEN 'cancelled' ELSE 'succeeded' END AS st,
           1 + (i %% 7 = 0)::int AS att,
           now() - make_interval(secs => %(span_s)s * i / %(n)s::double precision) AS enq,
           make_interval(secs => (i %% 600) / 10.0) AS wait,
           make_interval(secs => (i %% 1000) / 1000.0) AS run
      FROM generate_series(1, %(n)s) AS i
  ) s
"""

LIVE = """
INSERT INTO angela_queue.tasks (queue, kind, priority, status, run_at)
SELECT 'default', 'bench.live', 1 + i %% 10, 'pending',
       CASE WHEN i %% 10 = 0 THEN now() + interval '1 hour' ELSE now() END
  FROM generate_series(1, %(pending)s) AS i
"""

WORKERS = """
INSERT INTO angela_queue.workers (hostname, pid, queues, status, heartbeat_at)
SELECT 'bench-host', 1000 + i, '{default}', CASE WHEN i <= %(live_workers)s THEN 'active'
       ELSE 'dead' END, now() - make_interval(secs => i)
  FROM generate_series(1, %(workers)s) AS i
"""

RUNNING = """
WITH picked AS (SELECT id FROM angela_queue.tasks WHERE status = 'pending' AND ready LIMIT 50)
UPDATE angela_queue.tasks t SET status = 'running', attempts = 1, worker_id = 1,
       started_at = now(), first_started_at = now()
  FROM picked WHERE t.id = picked.id
"""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/bench_views.py", description=__doc__)
    p.add_argument("--dsn", help="server to use; its role needs CREATEDB (default: embedded)")
    p.add_argument("--finished", type=int, default=1_000_000, help="finished tasks to seed")
    p.add_argument("--history-hours", type=float, default=24.0, help="hours they spread over")
    p.add_argument("--pending", type=int, default=2_000, help="live tasks to seed")
    p.add_argument("--runs", type=int, default=20, help="timed runs per read")
    p.add_argument("--explain", action="store_true", help="print each read's plan")
    a = p.parse_args(argv)
    if a.finished < 1 or a.runs < 1 or a.history_hours <= 0:
        p.error("--finished, --runs and --history-hours must be positive")
    a.dsn = a.dsn or os.environ.get("ANGELA_QUEUE_DSN") or None
    return a


def seed(dsn: str, a: argparse.Namespace) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        started = time.perf_counter()
        conn.execute("ALTER TABLE angela_queue.tasks DISABLE TRIGGER USER")
        conn.execute(SEED, {"n": a.finished, "span_s": a.history_hours * 3600})
        conn.execute("ALTER TABLE angela_queue.tasks ENABLE TRIGGER USER")
        conn.execute(LIVE, {"pending": a.pending})
        conn.execute(WORKERS, {"workers": 200, "live_workers": 8})
        conn.execute(RUNNING)
        conn.execute("VACUUM ANALYZE angela_queue.tasks")
        conn.execute("VACUUM ANALYZE angela_queue.workers")
        last_hour = conn.execute(
            "SELECT count(*) FROM angela_queue.tasks WHERE finished_at > now() - interval '1 h'"
        ).fetchone()
        print(
            f"seeded {a.finished:,} finished tasks over {a.history_hours:g} h "
            f"({last_hour[0] if last_hour else 0:,} in the last hour) and {a.pending:,} live "
            f"in {time.perf_counter() - started:.1f} s",
            flush=True,
        )


def measure(dsn: str, a: argparse.Namespace) -> dict[str, list[float]]:
    timings: dict[str, list[float]] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        for name, query in READS.items():
            params = READ_PARAMS.get(name, {})
            conn.execute(query, params).fetchall()  # warm the cache and the plan
            runs = []
            for _ in range(a.runs):
                t0 = time.perf_counter()
                conn.execute(query, params).fetchall()
                runs.append((time.perf_counter() - t0) * 1000)
            timings[name] = runs
            if a.explain:
                plan = conn.execute(b"EXPLAIN (ANALYZE, BUFFERS) " + query.encode(), params)
                print(f"-- {name}\n" + "\n".join(r[0] for r in plan.fetchall()))
    return timings


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(argv)
    cfg = ServerOptions(a.dsn)
    try:
        with server(cfg) as srv, fresh_database(srv.dsn, "views") as dsn:
            print(f"server: {srv.label}")
            seed(dsn, a)
            timings = measure(dsn, a)
    except (BenchError, psycopg.Error, OSError) as exc:
        print(f"error: {first_line(exc)}", file=sys.stderr)
        return 1
    print(f"\n{'read':<30} {'median ms':>10} {'max ms':>10}   ({a.runs} runs each; target 50 ms)")
    for name, runs in timings.items():
        verdict = "" if statistics.median(runs) <= TARGET_MS else "  over target"
        print(f"{name:<30} {statistics.median(runs):>10.1f} {max(runs):>10.1f}{verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
