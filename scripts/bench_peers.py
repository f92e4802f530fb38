"""The systems that scripts/bench.py measures side by side, behind one small interface.

Each system has its own tables in its own fresh database, is driven by the benchmark
process through its own public API (producer side), and is worked by its own worker
processes started with its own CLI (see the scripts/bench_worker_*.py modules):

- ``angela-queue``      migrations, ``App.enqueue_many`` (COPY) / ``App.enqueue``,
                        ``angela-queue worker``;
- ``pgqueuer-asyncpg``  PGQueuer over asyncpg: ``Queries.install``, ``Queries.enqueue``
- ``pgqueuer-psycopg``  (lists for bulk), ``pgq run`` (``python -m pgqueuer run``);
- ``procrastinate``     ``schema_manager.apply_schema``, ``batch_defer_async`` /
                        ``defer_async``, ``procrastinate worker``;
- ``sql``               the plain-SQL reference: COPY / INSERT into a bare table with a
                        NOTIFY trigger, and scripts/bench_worker_sql.py's DELETE loop;
- ``sql-history``       the same, for a table that keeps every task's row: COPY / INSERT
                        with a status and partial indexes, and the loop that marks rows
                        ``running`` then ``succeeded`` (the least a history costs).

The peers are optional (``pip install -e '.[bench]'``): a system whose packages are not
installed reports why in ``missing()`` and the benchmark skips it with that note.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import Jsonb

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")

# The conninfo keys that become a URL's parts; others are passed as query items.
_URL_KEYS = ("user", "password", "host", "port", "dbname")
# Query items asyncpg knows; it would send any other one to the server as a setting.
_ASYNCPG_KEYS = ("sslmode", "sslrootcert", "sslcert", "sslkey", "sslcrl", "passfile")


def as_url(conninfo: str) -> str:
    """A libpq conninfo string as a postgresql:// URL that asyncpg understands too (only
    the connection parameters it knows are kept)."""
    params = {k: str(v) for k, v in conninfo_to_dict(conninfo).items() if v is not None}
    user = quote(params.get("user", ""), safe="")
    password = params.get("password")
    auth = f"{user}:{quote(password, safe='')}@" if password else (f"{user}@" if user else "")
    host = params.get("host", "")
    query = {k: v for k, v in params.items() if k in _ASYNCPG_KEYS}
    netloc = auth
    if host and not host.startswith("/"):
        netloc += host
        if "port" in params:
            netloc += f":{params['port']}"
    else:  # a Unix-socket directory: host and port go in the query
        if host:
            query["host"] = host
        if "port" in params:
            query["port"] = params["port"]
    dbname = quote(params.get("dbname", ""), safe="")
    return f"postgresql://{netloc}/{dbname}" + (f"?{urlencode(query)}" if query else "")


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


@dataclass(frozen=True)
class Tuning:
    """How each system's workers are configured: the same for every scenario."""

    drain_processes: int = 2
    aq_concurrency: int = 32
    pgq_batch_size: int = 100
    procrastinate_concurrency: int = 20
    sql_batch: int = 100

    def with_batch(self, rows: int) -> Tuning:
        """The same, with ``rows`` per claim for every system that claims in batches."""
        return replace(self, aq_concurrency=rows, pgq_batch_size=rows, sql_batch=rows)


@dataclass(frozen=True)
class WorkerSpec:
    """How to start one worker process of a system."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


class Producer(ABC):
    """The producer side of one system, open on one database."""

    @abstractmethod
    def bulk(self, start: int, count: int) -> None:
        """Enqueue ``count`` no-op tasks (payload n = start …) with the bulk API, committed."""

    @abstractmethod
    def one(self, n: int, sent: float) -> None:
        """Enqueue one latency task with the single-task API, committed."""

    def close(self) -> None:  # noqa: B027 - most producers own something to close
        """Release the producer's connections."""


class AsyncProducer(Producer):
    """A producer whose API is async: each call runs on one long-lived event loop."""

    def __init__(self) -> None:
        self._runner = asyncio.Runner()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._runner.run(coro)

    def close(self) -> None:
        try:
            self.aclose_sync()
        finally:
            self._runner.close()

    def aclose_sync(self) -> None:
        """Close the async resources on the producer's loop."""


class System(ABC):
    """One benchmarked system: its setup, producer, workers and how to tell it is done."""

    key: str
    label: str
    modules: tuple[str, ...] = ()
    packages: tuple[str, ...] = ()
    # Claims rows in batches whose size Tuning.with_batch sets (the drain's sweep).
    batched: bool = True

    def missing(self) -> str | None:
        """Why the system cannot run here (a package is not installed), else None."""
        absent = [m for m in self.modules if importlib.util.find_spec(m) is None]
        if absent:
            return f"{', '.join(absent)} not installed (pip install -e '.[bench]' adds the peers)"
        return None

    def versions(self) -> dict[str, str]:
        return {p: package_version(p) for p in self.packages}

    @abstractmethod
    def settings(self, tuning: Tuning) -> str:
        """The worker configuration, for the report."""

    def drain_processes(self, tuning: Tuning) -> int:
        return tuning.drain_processes

    @abstractmethod
    def setup(self, dsn: str) -> None:
        """Create the system's tables in the (empty) database."""

    @abstractmethod
    def producer(self, dsn: str, timeout_s: float) -> Producer:
        """An open producer; the caller closes it."""

    @abstractmethod
    def worker(self, dsn: str, tuning: Tuning) -> WorkerSpec:
        """One worker process (argv run from the repository root, extra environment)."""

    @property
    @abstractmethod
    def tables(self) -> tuple[str, ...]:
        """Tables to ANALYZE after a bulk load."""

    @abstractmethod
    def live_sql(self) -> str:
        """One row, one boolean column: whether any task is still to be done."""

    @abstractmethod
    def done_sql(self) -> str:
        """One row, one integer: tasks finished successfully (for the final check)."""

    def counts_done(self) -> bool:
        """Whether ``done_sql`` can count finished tasks (the reference keeps no history)."""
        return True


@contextmanager
def opened(producer: Producer) -> Iterator[Producer]:
    try:
        yield producer
    finally:
        producer.close()


# -- angela-queue ---------------------------------------------------------------------------


class _AngelaProducer(Producer):
    def __init__(self, dsn: str) -> None:
        from angela_queue import App, Settings

        self.app = App(Settings(dsn=dsn))

    def bulk(self, start: int, count: int) -> None:
        self.app.enqueue_many(
            [{"kind": "bench.noop", "payload": {"n": i}} for i in range(start, start + count)]
        )

    def one(self, n: int, sent: float) -> None:
        self.app.enqueue("bench.latency", {"n": n, "sent": sent})

    def close(self) -> None:
        self.app.close()


class AngelaQueue(System):
    key = "angela-queue"
    label = "angela-queue"
    packages = ("angela-queue", "psycopg")

    def settings(self, tuning: Tuning) -> str:
        return (
            f"`angela-queue worker`, concurrency {tuning.aq_concurrency} per process, "
            "LISTEN/NOTIFY + adaptive poll (defaults), async no-op handler"
        )

    def setup(self, dsn: str) -> None:
        from angela_queue import migrate

        migrate.upgrade(dsn)

    def producer(self, dsn: str, timeout_s: float) -> Producer:
        return _AngelaProducer(dsn)

    def worker(self, dsn: str, tuning: Tuning) -> WorkerSpec:
        argv = [sys.executable, "-m", "angela_queue.cli", "worker"]
        argv += [
            "--app",
            "scripts.bench_worker_aq:app",
            "--concurrency",
            str(tuning.aq_concurrency),
        ]
        return WorkerSpec(argv, {"ANGELA_QUEUE_DSN": dsn})

    @property
    def tables(self) -> tuple[str, ...]:
        return ("angela_queue.tasks",)

    def live_sql(self) -> str:
        # Each EXISTS matches a partial index (claim, running): cheap while polled often.
        return """SELECT EXISTS (SELECT 1 FROM angela_queue.tasks
                                  WHERE status = 'pending' AND ready)
                      OR EXISTS (SELECT 1 FROM angela_queue.tasks WHERE status = 'running')"""

    def done_sql(self) -> str:
        return "SELECT count(*) FROM angela_queue.tasks WHERE status = 'succeeded'"


# -- PGQueuer -------------------------------------------------------------------------------


class _PgqProducer(AsyncProducer):
    def __init__(self, dsn: str, driver: str, timeout_s: float) -> None:
        super().__init__()
        self.url = as_url(dsn)
        self.driver = driver
        self.timeout_s = timeout_s
        self.queries: Any = None
        self._close: Callable[[], Coroutine[Any, Any, None]] | None = None
        self.run(self._open())

    async def _open(self) -> None:
        from pgqueuer.queries import Queries  # type: ignore[import-not-found, unused-ignore]

        if self.driver == "asyncpg":
            import asyncpg  # type: ignore[import-untyped, import-not-found, unused-ignore]
            from pgqueuer.db import AsyncpgDriver  # type: ignore[import-not-found, unused-ignore]

            aconn = await asyncpg.connect(self.url, command_timeout=self.timeout_s)
            self.queries = Queries(AsyncpgDriver(aconn))
            self._close = aconn.close
        else:
            from pgqueuer.db import PsycopgDriver  # type: ignore[import-not-found, unused-ignore]

            pconn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
            self.queries = Queries(PsycopgDriver(pconn))
            self._close = pconn.close

    def bulk(self, start: int, count: int) -> None:
        payloads = [str(i).encode() for i in range(start, start + count)]
        self.run(self.queries.enqueue(["noop"] * count, payloads, [0] * count))

    def one(self, n: int, sent: float) -> None:
        self.run(self.queries.enqueue("latency", f"{n} {sent!r}".encode(), 0))

    def aclose_sync(self) -> None:
        if self._close is not None:
            self.run(self._close())


class PgQueuer(System):
    def __init__(self, driver: str) -> None:
        self.driver = driver
        self.key = f"pgqueuer-{driver}"
        self.label = f"PGQueuer ({driver})"
        self.modules = ("pgqueuer", driver)
        self.packages = ("pgqueuer", driver)

    def settings(self, tuning: Tuning) -> str:
        return (
            f"pgqueuer.run (= `pgq run`, uvloop; QueueManager, one {self.driver} connection "
            "per process), "
            f"--batch-size {tuning.pgq_batch_size}, max_concurrent_tasks unlimited, "
            "other options default (dequeue_timeout 30 s), async no-op entrypoint"
        )

    def setup(self, dsn: str) -> None:
        async def install() -> None:
            from pgqueuer.db import PsycopgDriver  # type: ignore[import-not-found, unused-ignore]
            from pgqueuer.queries import Queries  # type: ignore[import-not-found, unused-ignore]

            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                await Queries(PsycopgDriver(conn)).install()  # what `pgq install` runs

        asyncio.run(install())

    def producer(self, dsn: str, timeout_s: float) -> Producer:
        return _PgqProducer(dsn, self.driver, timeout_s)

    def worker(self, dsn: str, tuning: Tuning) -> WorkerSpec:
        # What `pgq run scripts.bench_worker_pgq:create --batch-size N` does (see there).
        argv = [sys.executable, "-m", "scripts.bench_worker_pgq"]
        argv += ["--batch-size", str(tuning.pgq_batch_size)]
        return WorkerSpec(argv, {"BENCH_DSN": as_url(dsn), "BENCH_PGQ_DRIVER": self.driver})

    @property
    def tables(self) -> tuple[str, ...]:
        return ("pgqueuer", "pgqueuer_log")

    def live_sql(self) -> str:
        return "SELECT EXISTS (SELECT 1 FROM pgqueuer)"

    def done_sql(self) -> str:
        return "SELECT count(*) FROM pgqueuer_log WHERE status = 'successful'"


# -- Procrastinate --------------------------------------------------------------------------


class _ProcrastinateProducer(AsyncProducer):
    def __init__(self, dsn: str) -> None:
        super().__init__()
        import procrastinate  # type: ignore[import-not-found, unused-ignore]

        self.app: Any = procrastinate.App(
            connector=procrastinate.PsycopgConnector(conninfo=dsn, min_size=1, max_size=2)
        )
        self.run(self._open())
        self.noop = self.app.configure_task("noop")
        self.latency = self.app.configure_task("latency")

    async def _open(self) -> None:
        await self.app.open_async()

    def bulk(self, start: int, count: int) -> None:
        jobs: list[dict[str, Any]] = [{"n": i} for i in range(start, start + count)]
        self.run(self.noop.batch_defer_async(*jobs))

    def one(self, n: int, sent: float) -> None:
        self.run(self.latency.defer_async(n=n, sent=sent))

    def aclose_sync(self) -> None:
        self.run(self.app.close_async())


class Procrastinate(System):
    key = "procrastinate"
    label = "Procrastinate"
    modules = ("procrastinate",)
    packages = ("procrastinate",)
    batched = False  # one job per fetch, whatever the batch

    def settings(self, tuning: Tuning) -> str:
        return (
            f"`procrastinate worker --concurrency {tuning.procrastinate_concurrency}`, "
            f"PsycopgConnector pool of up to {tuning.procrastinate_concurrency + 2} "
            "connections, LISTEN/NOTIFY on, other options default, async no-op task"
        )

    def setup(self, dsn: str) -> None:
        async def apply() -> None:
            import procrastinate  # type: ignore[import-not-found, unused-ignore]

            app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))
            async with app.open_async():
                await app.schema_manager.apply_schema_async()  # `procrastinate schema --apply`

        asyncio.run(apply())

    def producer(self, dsn: str, timeout_s: float) -> Producer:
        return _ProcrastinateProducer(dsn)

    def worker(self, dsn: str, tuning: Tuning) -> WorkerSpec:
        argv = [sys.executable, "-m", "procrastinate", "--app"]
        argv += ["scripts.bench_worker_procrastinate.app", "worker"]
        argv += ["--concurrency", str(tuning.procrastinate_concurrency)]
        pool = str(tuning.procrastinate_concurrency + 2)
        return WorkerSpec(argv, {"BENCH_DSN": as_url(dsn), "BENCH_PROCRASTINATE_POOL": pool})

    @property
    def tables(self) -> tuple[str, ...]:
        return ("procrastinate_jobs",)

    def live_sql(self) -> str:
        return """SELECT EXISTS (SELECT 1 FROM procrastinate_jobs
                                  WHERE status IN ('todo', 'doing'))"""

    def done_sql(self) -> str:
        return "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"


# -- plain SQL ------------------------------------------------------------------------------


def _notify_on_insert(table: str) -> str:
    """A statement-level trigger that notifies the channel named like the table (a
    constant of this module, never input)."""
    return f"""
CREATE FUNCTION {table}_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{table}', '');
    RETURN NULL;
END $$;
CREATE TRIGGER {table}_notify AFTER INSERT ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION {table}_notify();
"""


SQL_SCHEMA = """
CREATE TABLE bench_ref (id bigserial PRIMARY KEY, payload jsonb NOT NULL);
""" + _notify_on_insert("bench_ref")
# The history-keeping reference: the columns a queue needs to tell pending, running and
# finished tasks apart and to reclaim a dead worker's, and the three partial indexes that
# serve the claim, the reclaim and the retention of finished rows (as angela-queue's do).
SQL_HISTORY_SCHEMA = """
CREATE TABLE bench_hist (
    id bigserial PRIMARY KEY,
    payload jsonb NOT NULL,
    status text NOT NULL DEFAULT 'pending',
    attempts smallint NOT NULL DEFAULT 0,
    worker bigint,
    enqueued_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz,
    finished_at timestamptz
);
CREATE INDEX bench_hist_pending_idx ON bench_hist (id) WHERE status = 'pending';
CREATE INDEX bench_hist_running_idx ON bench_hist (worker) WHERE status = 'running';
CREATE INDEX bench_hist_finished_idx ON bench_hist (finished_at) WHERE finished_at IS NOT NULL;
""" + _notify_on_insert("bench_hist")


class _SqlProducer(Producer):
    def __init__(self, dsn: str, table: str) -> None:
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.copy_sql = f"COPY {table} (payload) FROM STDIN"
        self.insert_sql = f"INSERT INTO {table} (payload) VALUES (%s)"

    def bulk(self, start: int, count: int) -> None:
        with self.conn.transaction(), self.conn.cursor().copy(self.copy_sql) as copy:
            for i in range(start, start + count):
                copy.write_row((Jsonb({"n": i}),))

    def one(self, n: int, sent: float) -> None:
        self.conn.execute(self.insert_sql, (Jsonb({"n": n, "sent": sent}),), prepare=True)

    def close(self) -> None:
        self.conn.close()


class PlainSql(System):
    key = "sql"
    label = "plain SQL"
    packages = ("psycopg",)
    table = "bench_ref"
    schema = SQL_SCHEMA
    mode = "delete"  # scripts/bench_worker_sql.py's loop

    def settings(self, tuning: Tuning) -> str:
        return (
            "scripts/bench_worker_sql.py: 1 process, 1 psycopg connection, "
            f"DELETE … LIMIT {tuning.sql_batch} FOR UPDATE SKIP LOCKED per statement, "
            "LISTEN + 1 s poll when empty; COPY / INSERT into a bare table "
            "(bigserial + jsonb, a statement-level NOTIFY trigger)"
        )

    def drain_processes(self, tuning: Tuning) -> int:
        return 1  # the reference is one loop on one connection

    def setup(self, dsn: str) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(self.schema)

    def producer(self, dsn: str, timeout_s: float) -> Producer:
        return _SqlProducer(dsn, self.table)

    def worker(self, dsn: str, tuning: Tuning) -> WorkerSpec:
        return WorkerSpec(
            [sys.executable, "-m", "scripts.bench_worker_sql"],
            {
                "BENCH_DSN": dsn,
                "BENCH_SQL_BATCH": str(tuning.sql_batch),
                "BENCH_SQL_MODE": self.mode,
            },
        )

    @property
    def tables(self) -> tuple[str, ...]:
        return (self.table,)

    def live_sql(self) -> str:
        return "SELECT EXISTS (SELECT 1 FROM bench_ref)"

    def done_sql(self) -> str:
        return "SELECT 0"

    def counts_done(self) -> bool:
        return False


class PlainSqlHistory(PlainSql):
    """The same loop and producer, on a table that keeps every task's row."""

    key = "sql-history"
    label = "plain SQL, with history"
    table = "bench_hist"
    schema = SQL_HISTORY_SCHEMA
    mode = "history"

    def settings(self, tuning: Tuning) -> str:
        return (
            "scripts/bench_worker_sql.py (history): 1 process, 1 psycopg connection; one "
            f"statement marks the last batch succeeded and claims up to {tuning.sql_batch} "
            "rows as running (FOR UPDATE SKIP LOCKED), LISTEN + 1 s poll when empty; "
            "COPY / INSERT into a table with a status, 3 partial indexes and a "
            "statement-level NOTIFY trigger"
        )

    def live_sql(self) -> str:
        return """SELECT EXISTS (SELECT 1 FROM bench_hist WHERE status = 'pending')
                      OR EXISTS (SELECT 1 FROM bench_hist WHERE status = 'running')"""

    def done_sql(self) -> str:
        return "SELECT count(*) FROM bench_hist WHERE status = 'succeeded'"

    def counts_done(self) -> bool:
        return True


ALL_SYSTEMS: tuple[System, ...] = (
    AngelaQueue(),
    PgQueuer("asyncpg"),
    PgQueuer("psycopg"),
    Procrastinate(),
    PlainSql(),
    PlainSqlHistory(),
)
SYSTEM_KEYS = tuple(s.key for s in ALL_SYSTEMS)
REFERENCE_KEY = "angela-queue"


def by_key(key: str) -> System:
    for system in ALL_SYSTEMS:
        if system.key == key:
            return system
    raise KeyError(key)


def latency_lines(probe_dir: Path) -> list[tuple[int, float]]:
    """Every complete line the latency handlers wrote so far: (n, milliseconds)."""
    out: list[tuple[int, float]] = []
    for path in probe_dir.glob("latency-*.txt"):
        text = path.read_text()
        for line in text.splitlines(keepends=True):
            if line.endswith("\n") and line.strip():
                n, ms = line.split()
                out.append((int(n), float(ms)))
    return out


def first_starts(probe_dir: Path) -> list[float]:
    """The first-task times of the worker processes that have run one."""
    return [float(p.read_text()) for p in probe_dir.glob("first-*")]


def json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
