"""angela-queue's own benchmark of the hot path: enqueue, claim, complete (`make bench`).

Four scenarios, each on a fresh database that is created, migrated, measured and dropped:

- ``enqueue``        bulk ``App.enqueue_many`` (COPY) and single-row ``App.enqueue`` rates;
- ``drain``          real ``angela-queue worker`` processes draining no-op tasks;
- ``latency``        enqueue → start of one idle worker that only NOTIFY can wake;
- ``sql_reference``  PostgreSQL's own ceiling on this machine: COPY into a bare table and a
                     ``DELETE … FOR UPDATE SKIP LOCKED LIMIT 100`` loop, without our schema.

The defaults are a quick run (well under two minutes on two cores); the issue's official
numbers use ``--repeat 3`` and report medians. Without ``--dsn`` (or ANGELA_QUEUE_DSN) a
throwaway embedded server is started with default durability and deleted at the end.
Every wait has a timeout; on any failure, timeout, Ctrl-C or SIGTERM the worker processes
are killed, the databases dropped, and one line on stderr says what went wrong.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.json import Jsonb
from rich.console import Console
from rich.table import Table

from angela_queue import App, Settings, migrate
from angela_queue.settings import redact_dsn

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ("enqueue", "bound", "drain", "latency", "sql_reference")
# The kinds registered in scripts/bench_app.py (not imported here: see its docstring).
HANDLER_KINDS = {"async": "bench.noop", "sync": "bench.noop_sync"}
WORKER_APP = "scripts.bench_app:app"
POLL_S = 0.05  # how often a wait looks at the database
LATENCY_POLL_IDLE_S = "30"  # the latency worker's safety-net poll: only NOTIFY can wake it

T = TypeVar("T")


class BenchError(Exception):
    """A failed or timed-out step: reported as one line, exit code 1."""


@dataclass(frozen=True)
class Config:
    """The parsed command line."""

    dsn: str | None
    fast_durability: bool
    only: tuple[str, ...]
    repeat: int
    json_path: Path | None
    enqueue_tasks: int
    chunk: int
    single_tasks: int
    drain_tasks: int
    workers: int
    concurrency: int
    handler: str
    latency_tasks: int
    latency_rate: float
    bound_tasks: int
    reference_rows: int
    timeout_s: float


@dataclass(frozen=True)
class Sample:
    """One measured value of one run."""

    key: str
    label: str
    value: float
    unit: str


@dataclass
class Metric:
    """Every run's value of one metric; the median is what the report shows."""

    scenario: str
    key: str
    label: str
    unit: str
    runs: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.runs)


# -- command line ---------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value:g}")
    return value


def parse_args(argv: Sequence[str] | None) -> Config:
    p = argparse.ArgumentParser(
        prog="scripts/bench.py",
        description="Benchmark angela-queue's hot path: enqueue, claim, complete.",
    )
    p.add_argument(
        "--dsn",
        help="PostgreSQL server to use; its role needs CREATEDB (default: ANGELA_QUEUE_DSN, "
        "else a throwaway embedded server)",
    )
    p.add_argument(
        "--fast-durability",
        action="store_true",
        help="embedded server only: fsync, synchronous_commit and full_page_writes off",
    )
    p.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help=f"run only this scenario (repeatable or comma-separated): {', '.join(SCENARIOS)}",
    )
    p.add_argument("--repeat", type=_positive_int, default=1, help="runs per scenario (median)")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    g = p.add_argument_group("sizes")
    g.add_argument("--enqueue-tasks", type=_positive_int, default=20_000, help="bulk enqueue")
    g.add_argument("--chunk", type=_positive_int, default=5_000, help="tasks per enqueue_many")
    g.add_argument("--single-tasks", type=_positive_int, default=2_000, help="single enqueue")
    g.add_argument("--drain-tasks", type=_positive_int, default=20_000, help="tasks to drain")
    g.add_argument("--workers", type=_positive_int, default=2, help="worker processes (drain)")
    g.add_argument("--concurrency", type=_positive_int, default=32, help="tasks at once per worker")
    g.add_argument(
        "--handler",
        choices=sorted(HANDLER_KINDS),
        default="async",
        help="no-op handler the workers run (async: on the loop; sync: in the thread pool)",
    )
    g.add_argument("--latency-tasks", type=_positive_int, default=300, help="tasks (latency)")
    g.add_argument(
        "--bound-tasks", type=_positive_int, default=3_000, help="inserts per queue (bound)"
    )
    g.add_argument(
        "--latency-rate", type=_positive_float, default=50.0, help="tasks inserted per second"
    )
    g.add_argument(
        "--reference-rows", type=_positive_int, default=20_000, help="rows (sql_reference)"
    )
    g.add_argument(
        "--timeout",
        type=_positive_float,
        default=120.0,
        help="seconds any single wait or loop may take before the run fails",
    )
    a = p.parse_args(argv)

    only: list[str] = []
    for item in a.only or []:
        only.extend(name.strip() for name in item.split(",") if name.strip())
    unknown = [name for name in only if name not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenario {unknown[0]!r} (choose from {', '.join(SCENARIOS)})")
    if a.concurrency > 1000:
        p.error("--concurrency must be at most 1000")
    dsn = a.dsn or os.environ.get("ANGELA_QUEUE_DSN") or None
    if dsn and a.fast_durability:
        p.error("--fast-durability only applies to the embedded server (it runs ALTER SYSTEM)")
    return Config(
        dsn=dsn,
        fast_durability=a.fast_durability,
        only=tuple(name for name in SCENARIOS if name in only) if only else SCENARIOS,
        repeat=a.repeat,
        json_path=a.json,
        enqueue_tasks=a.enqueue_tasks,
        chunk=a.chunk,
        single_tasks=a.single_tasks,
        drain_tasks=a.drain_tasks,
        workers=a.workers,
        concurrency=a.concurrency,
        handler=a.handler,
        latency_tasks=a.latency_tasks,
        latency_rate=a.latency_rate,
        bound_tasks=a.bound_tasks,
        reference_rows=a.reference_rows,
        timeout_s=a.timeout,
    )


# -- plumbing -------------------------------------------------------------------------------


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextmanager
def no_interrupts() -> Iterator[None]:
    """Cleanup must finish: a second Ctrl-C must not leave workers or databases behind."""
    old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def with_timeouts(dsn: str, timeout_s: float) -> str:
    """The DSN for the benchmark's own connections: no connect or statement waits forever."""
    options = conninfo_to_dict(dsn).get("options") or ""
    limit = f"-c statement_timeout={int(timeout_s * 1000)}"
    return make_conninfo(dsn, connect_timeout=10, options=f"{options} {limit}".strip())


def connect(dsn: str) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn, autocommit=True, connect_timeout=10)


def wait_until(
    what: Callable[[], str],
    check: Callable[[], T | None],
    timeout_s: float,
    on_tick: Callable[[], None] | None = None,
) -> T:
    """Poll ``check`` every POLL_S until it returns a value; BenchError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        if on_tick is not None:
            on_tick()
        value = check()
        if value is not None:
            return value
        if time.monotonic() >= deadline:
            raise BenchError(f"timed out after {timeout_s:g} s waiting for {what()}")
        time.sleep(POLL_S)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (the same order statistic on every run)."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q * len(ordered)) - 1))]


def check_elapsed(started: float, timeout_s: float, what: str) -> None:
    if time.perf_counter() - started > timeout_s:
        raise BenchError(f"{what} took longer than {timeout_s:g} s")


@dataclass(frozen=True)
class Server:
    """Where the scenario databases are created."""

    dsn: str
    label: str


@contextmanager
def server(cfg: Config) -> Iterator[Server]:
    """The DSN's server, else a throwaway embedded one (stopped and deleted at the end)."""
    if cfg.dsn:
        yield Server(cfg.dsn, redact_dsn(cfg.dsn))
        return
    from angela_queue.embedded import EphemeralServer

    print("starting a throwaway embedded PostgreSQL …", flush=True)
    eph = EphemeralServer()
    try:
        if cfg.fast_durability:
            eph.tune_for_tests()
        yield Server(eph.dsn, "embedded (throwaway, deleted at exit)")
    finally:
        with no_interrupts():
            eph.stop()


@contextmanager
def fresh_database(admin_dsn: str, scenario: str) -> Iterator[str]:
    """A new database, migrated to head; dropped afterwards whatever happened."""
    name = f"aq_bench_{scenario}_{uuid.uuid4().hex[:8]}"
    with connect(admin_dsn) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        dsn = make_conninfo(admin_dsn, dbname=name)
        migrate.upgrade(dsn)
        yield dsn
    finally:
        with no_interrupts():
            drop_database(admin_dsn, name)


def drop_database(admin_dsn: str, name: str) -> None:
    try:
        with connect(admin_dsn) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
    except psycopg.Error as exc:
        print(f"warning: could not drop database {name}: {first_line(exc)}", file=sys.stderr)


def last_log_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    return lines[-1].strip() if lines else "(empty log)"


class WorkerGroup:
    """Real ``angela-queue worker`` processes; whatever still runs on exit is killed.

    Their output goes to log files (a pipe nobody reads could block them).
    """

    def __init__(self, dsn: str, log_dir: Path, extra_env: dict[str, str] | None = None) -> None:
        # Inherited ANGELA_QUEUE_* settings would make runs incomparable: only ours count.
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("ANGELA_QUEUE_") and k != "DATABASE_URL"
        }
        env.update({"ANGELA_QUEUE_DSN": dsn, "PYTHONUNBUFFERED": "1", **(extra_env or {})})
        self.env = env
        self.log_dir = log_dir
        self.procs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def __enter__(self) -> WorkerGroup:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with no_interrupts():
            self.kill()

    def start(self, count: int, concurrency: int) -> None:
        command = [sys.executable, "-m", "angela_queue.cli", "worker"]
        command += ["--app", WORKER_APP, "--concurrency", str(concurrency)]
        for _ in range(count):
            log_path = self.log_dir / f"worker-{uuid.uuid4().hex[:8]}.log"
            with log_path.open("wb") as log:
                proc = subprocess.Popen(
                    command,
                    cwd=ROOT,
                    env=self.env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            self.procs.append((proc, log_path))

    def check_alive(self) -> None:
        for proc, log in self.procs:
            code = proc.poll()
            if code is not None:
                raise BenchError(
                    f"worker pid {proc.pid} exited early with code {code}: {last_log_line(log)}"
                )

    def stop(self, timeout_s: float) -> None:
        """SIGTERM, then require every worker's graceful stop: exit code 0 in time."""
        for proc, _ in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for proc, log in self.procs:
            try:
                code = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise BenchError(
                    f"worker pid {proc.pid} still running {timeout_s:g} s after SIGTERM"
                ) from None
            if code != 0:
                raise BenchError(
                    f"worker pid {proc.pid} exited with code {code} after SIGTERM: "
                    f"{last_log_line(log)}"
                )

    def kill(self) -> None:
        for proc, _ in self.procs:
            if proc.poll() is None:
                proc.kill()
        for proc, _ in self.procs:
            with suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)


# -- scenarios ------------------------------------------------------------------------------


def bench_app(dsn: str, cfg: Config) -> App:
    """An App for the producer side, from explicit settings (no environment, no config file)."""
    return App(Settings(dsn=with_timeouts(dsn, cfg.timeout_s)))


def enqueue_chunks(app: App, kind: str, total: int, chunk: int, timeout_s: float) -> None:
    items = [{"kind": kind, "payload": {"n": i}} for i in range(total)]
    started = time.perf_counter()
    for start in range(0, total, chunk):
        app.enqueue_many(items[start : start + chunk])
        check_elapsed(started, timeout_s, "enqueue_many")


def scenario_enqueue(cfg: Config, dsn: str, log_dir: Path) -> list[Sample]:
    """Producer throughput: COPY-based bulk enqueue, and one commit per enqueue."""
    kind = HANDLER_KINDS[cfg.handler]
    app = bench_app(dsn, cfg)
    try:
        app.enqueue(kind, {"n": -1})  # opens the pool: connection setup is not measured
        started = time.perf_counter()
        enqueue_chunks(app, kind, cfg.enqueue_tasks, cfg.chunk, cfg.timeout_s)
        bulk_s = time.perf_counter() - started

        started = time.perf_counter()
        for i in range(cfg.single_tasks):
            app.enqueue(kind, {"n": i})
            if i % 100 == 0:
                check_elapsed(started, cfg.timeout_s, "single-row enqueue")
        single_s = time.perf_counter() - started
    finally:
        app.close()
    with connect(with_timeouts(dsn, cfg.timeout_s)) as conn:
        row = conn.execute("SELECT count(*) FROM angela_queue.tasks").fetchone()
    expected = cfg.enqueue_tasks + cfg.single_tasks + 1
    if row is None or row[0] != expected:
        raise BenchError(f"enqueue: expected {expected} tasks in the table, found {row}")
    return [
        Sample("bulk", "enqueue_many (COPY)", cfg.enqueue_tasks / bulk_s, "tasks/s"),
        Sample("single", "enqueue (1 row/commit)", cfg.single_tasks / single_s, "tasks/s"),
    ]


def scenario_drain(cfg: Config, dsn: str, log_dir: Path) -> list[Sample]:
    """Consumer throughput of real worker processes, start-up included."""
    n = cfg.drain_tasks
    app = bench_app(dsn, cfg)
    try:
        enqueue_chunks(app, HANDLER_KINDS[cfg.handler], n, cfg.chunk, cfg.timeout_s)
    finally:
        app.close()
    with connect(with_timeouts(dsn, cfg.timeout_s)) as conn:
        # Fresh statistics, so that the result does not depend on when autovacuum gets to it.
        conn.execute("ANALYZE angela_queue.tasks")
        done = 0

        def succeeded() -> int | None:
            nonlocal done
            row = conn.execute(
                "SELECT count(*) FROM angela_queue.tasks WHERE status = 'succeeded'"
            ).fetchone()
            done = int(row[0]) if row else 0
            return done if done >= n else None

        with WorkerGroup(dsn, log_dir) as workers:
            started = time.perf_counter()
            workers.start(cfg.workers, cfg.concurrency)
            wait_until(
                lambda: f"the drain: {done:,}/{n:,} tasks succeeded",
                succeeded,
                cfg.timeout_s,
                on_tick=workers.check_alive,
            )
            wall_s = time.perf_counter() - started
            workers.stop(cfg.timeout_s)
        row = conn.execute(
            """SELECT count(*) FILTER (WHERE status <> 'succeeded'),
                      extract(epoch FROM max(finished_at) - min(started_at))::float8
                 FROM angela_queue.tasks"""
        ).fetchone()
    if row is None or row[0] or not row[1]:
        raise BenchError(f"drain: {row and row[0]} task(s) did not succeed")
    return [
        Sample("rate", "from worker spawn", n / wall_s, "tasks/s"),
        Sample("steady_rate", "first claim → last completion", n / float(row[1]), "tasks/s"),
    ]


def scenario_latency(cfg: Config, dsn: str, log_dir: Path) -> list[Sample]:
    """How long a task waits for an idle worker, when only NOTIFY can wake it."""
    n = cfg.latency_tasks
    kind = HANDLER_KINDS[cfg.handler]
    env = {"ANGELA_QUEUE_POLL_IDLE_S": LATENCY_POLL_IDLE_S}
    with (
        connect(with_timeouts(dsn, cfg.timeout_s)) as conn,
        WorkerGroup(dsn, log_dir, env) as workers,
    ):
        workers.start(1, cfg.concurrency)
        pid = workers.procs[0][0].pid

        def ready() -> bool | None:
            # 'idle' is written at registration, before LISTEN: wait for the listener too.
            row = conn.execute(
                """SELECT coalesce((SELECT status = 'idle' FROM angela_queue.workers
                                     WHERE pid = %(pid)s ORDER BY id DESC LIMIT 1), false)
                      AND EXISTS (SELECT 1 FROM pg_stat_activity
                                   WHERE datname = current_database()
                                     AND query ILIKE 'LISTEN %%')""",
                {"pid": pid},
            ).fetchone()
            return True if row and row[0] else None

        wait_until(
            lambda: "the worker to be idle and listening",
            ready,
            cfg.timeout_s,
            on_tick=workers.check_alive,
        )
        time.sleep(0.5)  # its first claim round is over: from now on it sleeps until NOTIFY

        insert = "INSERT INTO angela_queue.tasks (kind, payload) VALUES (%s, %s)"
        insert_ms: list[float] = []  # the producer's own INSERT + commit, to read outliers by
        started = time.perf_counter()
        for i in range(n):
            delay = started + i / cfg.latency_rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            sent = time.perf_counter()
            conn.execute(insert, (kind, Jsonb({"n": i})))
            insert_ms.append((time.perf_counter() - sent) * 1000)
            if i % 10 == 0:
                workers.check_alive()
                check_elapsed(started, cfg.timeout_s, "the latency insert loop")
        sent_rate = n / (time.perf_counter() - started)

        done = 0

        def all_succeeded() -> bool | None:
            nonlocal done
            row = conn.execute(
                "SELECT count(*) FROM angela_queue.tasks WHERE status = 'succeeded'"
            ).fetchone()
            done = int(row[0]) if row else 0
            return True if done >= n else None

        wait_until(
            lambda: f"the latency tasks: {done}/{n} succeeded",
            all_succeeded,
            cfg.timeout_s,
            on_tick=workers.check_alive,
        )
        workers.stop(cfg.timeout_s)
        row = conn.execute(
            """SELECT percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY ms),
                      max(ms)
                 FROM (SELECT extract(epoch FROM started_at - enqueued_at)::float8 * 1000 AS ms
                         FROM angela_queue.tasks) waits"""
        ).fetchone()
    if row is None or row[0] is None:
        raise BenchError("latency: no task was started")
    p50, p95, p99 = (float(v) for v in row[0])
    return [
        Sample("p50", "p50 enqueue → start", p50, "ms"),
        Sample("p95", "p95 enqueue → start", p95, "ms"),
        Sample("p99", "p99 enqueue → start", p99, "ms"),
        Sample("max", "max enqueue → start", float(row[1]), "ms"),
        Sample("insert_p99", "p99 producer INSERT + commit", percentile(insert_ms, 0.99), "ms"),
        Sample("offered_rate", "insert rate achieved", sent_rate, "tasks/s"),
    ]


def scenario_sql_reference(cfg: Config, dsn: str, log_dir: Path) -> list[Sample]:
    """PostgreSQL's own ceiling here: the same two operations on a bare table, no triggers."""
    n = cfg.reference_rows
    claim = """DELETE FROM bench_ref WHERE id IN (
                   SELECT id FROM bench_ref ORDER BY id LIMIT 100 FOR UPDATE SKIP LOCKED)
               RETURNING id"""
    with connect(with_timeouts(dsn, cfg.timeout_s)) as conn:
        conn.execute(
            "CREATE TABLE bench_ref (id bigserial PRIMARY KEY, payload jsonb, status text)"
        )
        started = time.perf_counter()
        with (
            conn.transaction(),
            conn.cursor().copy("COPY bench_ref (payload, status) FROM STDIN") as copy,
        ):
            for i in range(n):
                copy.write_row((Jsonb({"n": i}), "pending"))
        copy_s = time.perf_counter() - started
        conn.execute("ANALYZE bench_ref")  # as the drain scenario does

        drained = 0
        started = time.perf_counter()
        while True:
            got = len(conn.execute(claim).fetchall())
            if got == 0:
                break
            drained += got
            check_elapsed(started, cfg.timeout_s, "the reference drain")
        drain_s = time.perf_counter() - started
    if drained != n:
        raise BenchError(f"sql_reference: drained {drained} rows, expected {n}")
    return [
        Sample("copy", "COPY into a bare table", n / copy_s, "rows/s"),
        Sample("drain", "DELETE … SKIP LOCKED LIMIT 100", n / drain_s, "rows/s"),
    ]


BOUND_SIZE = 100  # a bounded queue as the profiles configure them (20, 50, 100)
BOUND_BACKLOG = 50  # live tasks kept in each queue while measuring: half full


def scenario_bound(cfg: Config, dsn: str, log_dir: Path) -> list[Sample]:
    """What a bound costs an insert: the same single-row INSERTs into an unbounded queue and
    into a half-full bounded one (the trigger then takes the queue's lock and counts its live
    tasks). Each inserted task is finished right away, outside the timing, so the backlog
    stays at BOUND_BACKLOG in both queues."""
    insert = "INSERT INTO angela_queue.tasks (kind, queue) VALUES ('bench.noop', %s) RETURNING id"
    finish = "UPDATE angela_queue.tasks SET status = 'succeeded', finished_at = now() WHERE id = %s"
    timings: dict[str, list[float]] = {}
    with connect(with_timeouts(dsn, cfg.timeout_s)) as conn:
        conn.execute(
            "INSERT INTO angela_queue.queues (name, max_size) VALUES ('bounded', %s)", (BOUND_SIZE,)
        )
        for queue in ("default", "bounded"):
            conn.execute(
                "INSERT INTO angela_queue.tasks (kind, queue)"
                " SELECT 'bench.noop', %s FROM generate_series(1, %s)",
                (queue, BOUND_BACKLOG),
            )
        conn.execute("ANALYZE angela_queue.tasks")
        for queue in ("default", "bounded") * 2:  # interleaved rounds, the first a warm-up
            runs = timings.setdefault(queue, [])
            runs.clear()
            started = time.perf_counter()
            for _ in range(cfg.bound_tasks):
                t0 = time.perf_counter()
                row = conn.execute(insert, (queue,)).fetchone()
                runs.append(time.perf_counter() - t0)
                assert row is not None
                conn.execute(finish, (row[0],))
                check_elapsed(started, cfg.timeout_s, "the bound scenario")
    free = statistics.median(timings["default"]) * 1e6
    bounded = statistics.median(timings["bounded"]) * 1e6
    return [
        Sample("unbounded_us", "INSERT into an unbounded queue (median)", free, "µs"),
        Sample(
            "bounded_us",
            f"INSERT into a bounded queue, {BOUND_BACKLOG}/{BOUND_SIZE} live",
            bounded,
            "µs",
        ),
        Sample("overhead_us", "bound overhead per INSERT", bounded - free, "µs"),
    ]


RUNNERS: dict[str, Callable[[Config, str, Path], list[Sample]]] = {
    "enqueue": scenario_enqueue,
    "bound": scenario_bound,
    "drain": scenario_drain,
    "latency": scenario_latency,
    "sql_reference": scenario_sql_reference,
}


def describe(cfg: Config, scenario: str) -> str:
    """What a scenario measured, in one line, for the report."""
    handler = f"{cfg.handler} no-op handler"
    if scenario == "enqueue":
        return (
            f"{cfg.enqueue_tasks:,} tasks via App.enqueue_many in chunks of {cfg.chunk:,}; "
            f"{cfg.single_tasks:,} via App.enqueue, one commit each"
        )
    if scenario == "bound":
        return (
            f"{cfg.bound_tasks:,} single-row INSERTs (autocommit) per queue, after a warm-up "
            f"round; both queues hold {BOUND_BACKLOG} live tasks; the bounded one has max_size "
            f"{BOUND_SIZE}"
        )
    if scenario == "drain":
        return (
            f"{cfg.drain_tasks:,} pre-enqueued tasks, {cfg.workers} worker process(es) × "
            f"concurrency {cfg.concurrency}, {handler}; wall time counts from the spawn"
        )
    if scenario == "latency":
        return (
            f"{cfg.latency_tasks:,} plain-SQL INSERTs at ~{cfg.latency_rate:g}/s, 1 idle worker "
            f"(concurrency {cfg.concurrency}, {handler}), ANGELA_QUEUE_POLL_IDLE_S="
            f"{LATENCY_POLL_IDLE_S}: only NOTIFY wake-ups count; started_at − enqueued_at, "
            "which includes the producer's commit"
        )
    return (
        f"bare table, {cfg.reference_rows:,} rows; one connection, 100 rows per DELETE, "
        "one commit each"
    )


# -- report ---------------------------------------------------------------------------------


def machine_facts(srv: Server, cfg: Config) -> dict[str, str]:
    values: dict[str, str] = {}
    with connect(srv.dsn) as conn:
        for name in ("server_version", "fsync", "synchronous_commit", "full_page_writes"):
            row = conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()
            values[name] = str(row[0]) if row else "?"
    settings = ", ".join(
        f"{k}={values[k]}" for k in ("fsync", "synchronous_commit", "full_page_writes")
    )
    if cfg.dsn:
        durability = f"the server's own: {settings}"
    elif cfg.fast_durability:
        durability = f"fast (--fast-durability, not crash-safe): {settings}"
    else:
        durability = f"default: {settings}"
    return {
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "postgresql": values["server_version"],
        "server": srv.label,
        "durability": durability,
    }


def command_line() -> str:
    python = sys.executable
    with suppress(ValueError):
        rel = os.path.relpath(python)
        if not rel.startswith(".."):
            python = rel
    return shlex.join([python, *sys.argv])


def fmt(value: float, unit: str) -> str:
    return f"{value:,.1f}" if unit in ("ms", "µs") else f"{value:,.0f}"


def print_report(cfg: Config, metrics: list[Metric], facts: dict[str, str], command: str) -> None:
    console = Console(width=max(120, shutil.get_terminal_size().columns))
    table = Table(title=f"angela-queue bench — median of {cfg.repeat} run(s)", title_justify="left")
    table.add_column("scenario")
    table.add_column("metric")
    table.add_column("median", justify="right")
    table.add_column("unit")
    table.add_column("runs", justify="right")
    for m in metrics:
        runs = " / ".join(fmt(v, m.unit) for v in m.runs)
        table.add_row(m.scenario, m.label, fmt(m.median, m.unit), m.unit, runs)
    console.print(table)
    # Plain prints: long lines here must wrap like text, not be padded like a table.
    for scenario in cfg.only:
        print(f"  {scenario}: {describe(cfg, scenario)}")
    print()
    for name, value in {**facts, "command": command}.items():
        print(f"{name:<11} {value}")


def write_json(
    path: Path, cfg: Config, metrics: list[Metric], facts: dict[str, str], command: str
) -> None:
    data = {
        "command": command,
        "machine": facts,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
        | {"dsn": redact_dsn(cfg.dsn) if cfg.dsn else None},
        "scenarios": {s: describe(cfg, s) for s in cfg.only},
        "results": [
            {
                "scenario": m.scenario,
                "metric": m.key,
                "label": m.label,
                "unit": m.unit,
                "median": m.median,
                "runs": m.runs,
            }
            for m in metrics
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


# -- main -----------------------------------------------------------------------------------


def run(cfg: Config, log_dir: Path) -> tuple[list[Metric], dict[str, str]]:
    metrics: dict[tuple[str, str], Metric] = {}
    with server(cfg) as srv:
        facts = machine_facts(srv, cfg)
        print(
            f"PostgreSQL {facts['postgresql']} ({srv.label}), durability {facts['durability']}",
            flush=True,
        )
        for scenario in cfg.only:
            for attempt in range(1, cfg.repeat + 1):
                with fresh_database(srv.dsn, scenario) as dsn:
                    samples = RUNNERS[scenario](cfg, dsn, log_dir)
                shown = "; ".join(f"{s.label} {fmt(s.value, s.unit)} {s.unit}" for s in samples)
                print(f"[{scenario} {attempt}/{cfg.repeat}] {shown}", flush=True)
                for s in samples:
                    metric = metrics.setdefault(
                        (scenario, s.key), Metric(scenario, s.key, s.label, s.unit)
                    )
                    metric.runs.append(s.value)
    return list(metrics.values()), facts


def fail(message: str, log_dir: Path, code: int = 1, *, keep_logs: bool = True) -> int:
    """One line on stderr; the worker logs are kept when they may explain the failure."""
    if keep_logs and any(log_dir.iterdir()):
        message += f" (worker logs kept in {log_dir})"
    else:
        shutil.rmtree(log_dir, ignore_errors=True)
    print(f"error: {message}", file=sys.stderr, flush=True)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv)
    command = command_line()
    # SIGTERM unwinds like Ctrl-C, so that the same finally blocks clean up. SIGINT is set
    # too: a shell's background job inherits it ignored, and the run would be unstoppable.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.default_int_handler)
    log_dir = Path(tempfile.mkdtemp(prefix="angela-bench-"))
    try:
        metrics, facts = run(cfg, log_dir)
    except KeyboardInterrupt:
        message = "interrupted; workers killed and databases dropped"
        return fail(message, log_dir, 130, keep_logs=False)
    except BenchError as exc:
        return fail(str(exc), log_dir)
    except Exception as exc:
        return fail(f"{type(exc).__name__}: {first_line(exc)}", log_dir)
    shutil.rmtree(log_dir, ignore_errors=True)
    print()
    print_report(cfg, metrics, facts, command)
    if cfg.json_path is not None:
        write_json(cfg.json_path, cfg, metrics, facts, command)
        print(f"results written to {cfg.json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
