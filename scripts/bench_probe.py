"""What every benchmarked system's no-op handlers record, the same way in each worker.

The side-by-side run of scripts/bench.py times every system by what its handlers see, so
that no system's own bookkeeping columns decide its figures:

- ``noop()`` notes, once per process, the wall-clock time of its first task (file
  ``first-<pid>`` in BENCH_PROBE_DIR): a drain is timed from there, so that interpreter
  start-up and imports do not count;
- ``latency(n, sent)`` appends ``n`` and ``now - sent`` in milliseconds to
  ``latency-<pid>.txt``, where ``sent`` is the producer's ``time.time()`` taken right
  before its enqueue call (same machine, same clock).

It imports nothing heavy, so that it does not change any worker's memory figure.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TextIO

PROBE_DIR_ENV = "BENCH_PROBE_DIR"

_first_seen = False
_latency_out: TextIO | None = None


def _probe_dir() -> Path | None:
    value = os.environ.get(PROBE_DIR_ENV)
    return Path(value) if value else None


def noop() -> None:
    """The no-op handler's only work: the time of this process's first task, once."""
    global _first_seen
    if _first_seen:
        return
    _first_seen = True
    now = time.time()
    folder = _probe_dir()
    if folder is not None:
        tmp = folder / f".first-{os.getpid()}"
        tmp.write_text(repr(now))
        tmp.replace(folder / f"first-{os.getpid()}")  # readers never see a partial file


def latency(n: int, sent: float) -> None:
    """Record how long after the producer's send this handler started (one line, flushed)."""
    now = time.time()
    global _latency_out
    if _latency_out is None:
        folder = _probe_dir()
        if folder is None:
            return
        _latency_out = (folder / f"latency-{os.getpid()}.txt").open("a", buffering=1)
    _latency_out.write(f"{n} {(now - sent) * 1000:.4f}\n")
