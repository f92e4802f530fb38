"""The plain-SQL reference worker of scripts/bench.py: PostgreSQL's own ceiling here.

No queue library: one psycopg connection in autocommit mode that claims up to
BENCH_SQL_BATCH rows per statement (``DELETE … ORDER BY id LIMIT n FOR UPDATE SKIP
LOCKED RETURNING``), runs the same no-op handler per row, and when the table is empty
sleeps until a NOTIFY from the table's insert trigger (or a 1 s safety-net poll). It keeps
no history and has at-most-once delivery: the ceiling, not a design to copy.
SIGTERM/SIGINT stop it after the current batch (exit 0). The database comes from BENCH_DSN.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType
from typing import Any

import psycopg

from scripts import bench_probe

CHANNEL = "bench_ref"
CLAIM = """DELETE FROM bench_ref WHERE id IN (
               SELECT id FROM bench_ref ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED)
           RETURNING payload"""

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
    with psycopg.connect(os.environ["BENCH_DSN"], autocommit=True) as conn:
        conn.execute(f"LISTEN {CHANNEL}")
        while not _stop:
            rows = conn.execute(CLAIM, (batch,), prepare=True).fetchall()
            for (payload,) in rows:
                handle(payload)
            if not rows:
                for _ in conn.notifies(timeout=1.0, stop_after=1):
                    pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
