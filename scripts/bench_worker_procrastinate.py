"""Procrastinate's app for the side-by-side run of scripts/bench.py.

Run with its own CLI: ``python -m procrastinate --app scripts.bench_worker_procrastinate.app
worker --concurrency N``. The connector's pool gets BENCH_PROCRASTINATE_POOL connections at
most (the worker's concurrency plus its listener, set by the benchmark), so that the pool
is not what limits the worker. The database comes from BENCH_DSN (a URL).
"""

from __future__ import annotations

import os

import procrastinate  # type: ignore[import-not-found, unused-ignore]

from scripts import bench_probe

app = procrastinate.App(
    connector=procrastinate.PsycopgConnector(
        conninfo=os.environ.get("BENCH_DSN", ""),
        min_size=1,
        max_size=int(os.environ.get("BENCH_PROCRASTINATE_POOL", "4")),
    )
)


async def noop(n: int) -> None:
    bench_probe.noop()


async def latency(n: int, sent: float) -> None:
    bench_probe.latency(n, sent)


# Registered by call rather than as decorators: mypy --strict then passes with or without
# procrastinate installed (the bench extra is optional).
app.task(name="noop")(noop)
app.task(name="latency")(latency)
