"""The plain-SQL reference workers of scripts/bench.py: PostgreSQL's own ceilings here.

No queue library: one psycopg connection in autocommit mode, the same no-op handler per
row, and, when nothing is left, a sleep until a NOTIFY from the table's insert trigger (or
a 1 s safety-net poll). Two loops, chosen by BENCH_SQL_MODE:

- ``delete`` (the issue's reference): claim up to BENCH_SQL_BATCH rows per statement with
  ``DELETE … ORDER BY id LIMIT n FOR UPDATE SKIP LOCKED RETURNING``. It keeps no history
  and delivers at most once: the ceiling, not a design to copy.
- ``history``: the least that a queue which keeps every task's row must write. One
  statement marks the previous batch ``succeeded`` (fenced by status and worker) and
  claims the next one as ``running`` (attempts + 1, worker, start time) in id order with
  SKIP LOCKED: two row versions per task, each with its index entries, as in angela-queue,
  but with no priority, rules, triggers or Python queue machinery.

SIGTERM/SIGINT stop a loop after the current batch (exit 0); the history loop records its
last batch first. The database comes from BENCH_DSN.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType
from typing import Any

import psycopg

from scripts import bench_probe

CLAIM_DELETE = """DELETE FROM bench_ref WHERE id IN (
                      SELECT id FROM bench_ref ORDER BY id LIMIT %(n)s FOR UPDATE SKIP LOCKED)
                  RETURNING id, payload"""
FINISH_AND_CLAIM = """
WITH done AS (
    UPDATE bench_hist SET status = 'succeeded', finished_at = now()
     WHERE id = ANY(%(done)s::bigint[]) AND status = 'running' AND worker = %(worker)s
), claimed AS (
    UPDATE bench_hist SET status = 'running', attempts = attempts + 1,
                          worker = %(worker)s, started_at = now()
     WHERE id = ANY(ARRAY(SELECT id FROM bench_hist WHERE status = 'pending'
                           ORDER BY id LIMIT %(n)s FOR UPDATE SKIP LOCKED))
    RETURNING id, payload
)
SELECT id, payload FROM claimed"""
FINISH = """UPDATE bench_hist SET status = 'succeeded', finished_at = now()
             WHERE id = ANY(%(done)s::bigint[]) AND status = 'running' AND worker = %(worker)s"""
CHANNELS = {"delete": "bench_ref", "history": "bench_hist"}

_stop = False


def _request_stop(signum: int, frame: FrameType | None) -> None:
    global _stop
    _stop = True


def handle(payload: dict[str, Any]) -> None:
    if "sent" in payload:
        bench_probe.latency(int(payload["n"]), float(payload["sent"]))
    else:
        bench_probe.noop()


def main() -> int:
    signal.signal(signal.SIGTERM, _request_stop)
    signal.signal(signal.SIGINT, _request_stop)
    batch = int(os.environ.get("BENCH_SQL_BATCH", "100"))
    mode = os.environ.get("BENCH_SQL_MODE", "delete")
    statement = CLAIM_DELETE if mode == "delete" else FINISH_AND_CLAIM
    params: dict[str, Any] = {"n": batch, "worker": os.getpid(), "done": []}
    with psycopg.connect(os.environ["BENCH_DSN"], autocommit=True) as conn:
        conn.execute(f"LISTEN {CHANNELS[mode]}")
        while not _stop:
            rows = conn.execute(statement, params, prepare=True).fetchall()
            for _, payload in rows:
                handle(payload)
            params["done"] = [task_id for task_id, _ in rows]
            if not rows:
                for _ in conn.notifies(timeout=1.0, stop_after=1):
                    pass
        if mode == "history" and params["done"]:
            conn.execute(FINISH, params)
    return 0


if __name__ == "__main__":
    sys.exit(main())
