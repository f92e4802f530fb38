"""Routine low-priority tasks, batched vs unbatched (`python scripts/bench_batches.py`).

The same N low-priority tasks (priority 2, one batch key) are drained twice by one worker
process of the same concurrency: once by a plain handler, once by a batch handler
(batch_size 5). Each handler call costs CALL_MS plus PER_TASK_MS per task
(scripts/bench_batch_app.py), so the figure shows what batching saves on calls with a fixed
cost. Without ``--dsn`` (or ANGELA_QUEUE_DSN) a throwaway embedded server is used.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg

from scripts.bench import ServerOptions, fresh_database, server
from scripts.bench_batch_app import CALL_MS, PER_TASK_MS

ROOT = Path(__file__).resolve().parent.parent


def drain(
    dsn: str, kind: str, tasks: int, concurrency: int, timeout_s: float
) -> tuple[float, float]:
    """Enqueue ``tasks`` of ``kind``, run one worker, return (tasks/s, average batch size)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO angela_queue.tasks (kind, priority) SELECT %s, 2"
            " FROM generate_series(1, %s)",
            (kind, tasks),
        )
        env = {**os.environ, "ANGELA_QUEUE_DSN": dsn}
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "angela_queue.cli",
                "worker",
                "--app",
                "scripts.bench_batch_app:app",
                "--concurrency",
                str(concurrency),
                "--log-level",
                "WARNING",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            started = time.perf_counter()
            while True:
                row = conn.execute(
                    "SELECT count(*) FROM angela_queue.tasks WHERE kind = %s"
                    " AND status = 'succeeded'",
                    (kind,),
                ).fetchone()
                if row and row[0] == tasks:
                    break
                if time.perf_counter() - started > timeout_s:
                    raise SystemExit(f"error: {kind}: not drained within {timeout_s:g} s")
                time.sleep(0.02)
            elapsed = time.perf_counter() - started
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(30)
        avg = conn.execute("SELECT max(avg_batch_size) FROM angela_queue.worker_stats").fetchone()
        conn.execute("DELETE FROM angela_queue.workers")
    return tasks / elapsed, float(avg[0]) if avg and avg[0] else 1.0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--dsn", default=os.environ.get("ANGELA_QUEUE_DSN"))
    p.add_argument("--tasks", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--timeout", type=float, default=300.0)
    a = p.parse_args()
    with server(ServerOptions(a.dsn)) as srv, fresh_database(srv.dsn, "batches") as dsn:
        plain, _ = drain(dsn, "bench.routine", a.tasks, a.concurrency, a.timeout)
        batched, size = drain(dsn, "bench.routine_batch", a.tasks, a.concurrency, a.timeout)
        with psycopg.connect(dsn) as conn:
            version = conn.execute("SHOW server_version").fetchone()
    print(
        f"routine tasks, {a.tasks} low-priority, 1 worker × concurrency {a.concurrency},"
        f" each call {CALL_MS:g} ms + {PER_TASK_MS:g} ms per task"
        f" (PostgreSQL {version[0] if version else '?'}, {srv.label})"
    )
    print(f"  unbatched: {plain:8.1f} tasks/s")
    print(
        f"  batched:   {batched:8.1f} tasks/s  (average batch {size:.2f}; {batched / plain:.2f}×)"
    )
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
