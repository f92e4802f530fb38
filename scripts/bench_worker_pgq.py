"""PGQueuer's worker factory for the side-by-side run of scripts/bench.py.

``pgq run scripts.bench_worker_pgq:create --batch-size N`` is how PGQueuer's docs run it,
but with typer 0.29 (what this project's ``typer>=0.12`` installs) PGQueuer 1.6.0's
``pgq run`` dies at start-up (``AttributeError: 'str' object has no attribute 'name'``
in ``setup_fancy_logger``: its ``--log-level`` parser returns a str, not a LogLevel).
So ``python -m scripts.bench_worker_pgq --batch-size N`` does what ``pgq run`` does,
through PGQueuer's documented ``pgqueuer.run(factory, …)``, on uvloop like ``pgq run``.

The factory builds a ``QueueManager`` (the job-queue half of ``PgQueuer``, without the
cron scheduler, which would add its own polling to an idle worker) over one connection of
the driver named by BENCH_PGQ_DRIVER (``asyncpg`` or ``psycopg``), to the database at
BENCH_DSN (a URL). Payloads are ``b"n"`` (drain) and ``b"n sent"`` (latency).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pgqueuer  # type: ignore[import-not-found, unused-ignore]
from pgqueuer import QueueManager  # type: ignore[import-not-found, unused-ignore]
from pgqueuer.models import Job  # type: ignore[import-not-found, unused-ignore]
from pgqueuer.queries import Queries  # type: ignore[import-not-found, unused-ignore]

from scripts import bench_probe


async def noop(job: Job) -> None:
    bench_probe.noop()


async def latency(job: Job) -> None:
    n, sent = (job.payload or b"0 0").split()
    bench_probe.latency(int(n), float(sent))


@asynccontextmanager
async def create() -> AsyncIterator[QueueManager]:
    dsn = os.environ["BENCH_DSN"]
    driver_name = os.environ.get("BENCH_PGQ_DRIVER", "asyncpg")
    if driver_name == "asyncpg":
        import asyncpg  # type: ignore[import-untyped, import-not-found, unused-ignore]
        from pgqueuer.db import AsyncpgDriver  # type: ignore[import-not-found, unused-ignore]

        aconn = await asyncpg.connect(dsn)
        queries = Queries(AsyncpgDriver(aconn))
        close = aconn.close
    elif driver_name == "psycopg":
        import psycopg
        from pgqueuer.db import PsycopgDriver  # type: ignore[import-not-found, unused-ignore]

        pconn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
        queries = Queries(PsycopgDriver(pconn))
        close = pconn.close
    else:
        raise SystemExit(f"BENCH_PGQ_DRIVER must be asyncpg or psycopg, not {driver_name!r}")
    qm = QueueManager(queries)

    qm.entrypoint("noop")(noop)  # not decorators: see bench_worker_procrastinate.py
    qm.entrypoint("latency")(latency)

    try:
        yield qm
    finally:
        await close()


def main() -> int:
    p = argparse.ArgumentParser(description="pgq run, for the benchmark")
    p.add_argument("--batch-size", type=int, default=10)
    args = p.parse_args()
    coro = pgqueuer.run(create, batch_size=args.batch_size)
    try:
        import uvloop  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)
    return 0


if __name__ == "__main__":
    sys.exit(main())
