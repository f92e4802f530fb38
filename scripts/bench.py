"""angela-queue's benchmark, side by side with its peers on the same server (`make bench`).

Systems (scripts/bench_peers.py): angela-queue, PGQueuer with its asyncpg and its psycopg
driver, Procrastinate, and two plain-SQL reference loops: one that deletes what it claims
(PostgreSQL's own ceiling here, the issue's reference) and one that keeps every task's row,
marking it running then succeeded (the ceiling for a queue that keeps history).
Each has its own tables in its own fresh database, is used through its own public API and
is worked by its own CLI's worker processes with a no-op handler. Peers not installed
(``pip install -e '.[dev,bench]'``) are skipped with a note.

Scenarios, every system unless noted:

- ``enqueue``      bulk enqueue rate (chunks through each system's bulk API; COPY for the
                   reference) and single-task enqueue rate (one commit each);
- ``drain``        N pre-enqueued no-op tasks drained by the system's worker processes,
                   timed from the first task a handler sees until none is left;
- ``latency``      enqueue → handler start of one idle worker at ~50 tasks/s;
- ``idle``         one idle worker per system at once, after it ran some tasks: its RSS
                   and the transactions per second it costs its database;
- ``bound``        angela-queue only: what a bounded queue costs an INSERT;
- ``drain_scale``  angela-queue only, not in the default run (``--only drain_scale`` or
                   ``--full``): drain rate with few pending vs many pending plus millions
                   of finished rows.

``--quick`` is the CI smoke test (small sizes, all systems, under two minutes), the default
is ``make bench``, ``--full`` uses the issue's sizes with three runs (medians). Without
``--dsn`` (or ANGELA_QUEUE_DSN) a throwaway embedded server is started and deleted at the
end. Results go to ``.bench/results/`` (``--out DIR`` elsewhere) as JSON and Markdown.
Every wait has a timeout; on any failure, timeout, Ctrl-C or SIGTERM every worker process
is killed, every database dropped, and one line on stderr says what went wrong.
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
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import psutil
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from rich.console import Console
from rich.table import Table

from angela_queue import App, Settings, migrate
from angela_queue.settings import redact_dsn
from angela_queue.store import NOTIFY_CHANNEL
from scripts.bench_peers import (
    REFERENCE_KEY,
    SYSTEM_KEYS,
    AngelaQueue,
    Producer,
    System,
    Tuning,
    WorkerSpec,
    by_key,
    first_starts,
    latency_lines,
    opened,
)
from scripts.bench_probe import PROBE_DIR_ENV

ROOT = Path(__file__).resolve().parent.parent
PER_SYSTEM = ("enqueue", "drain", "latency")
SCENARIOS = ("enqueue", "drain", "latency", "idle", "bound", "drain_scale")
DEFAULT_SCENARIOS = ("enqueue", "drain", "latency", "idle", "bound")
AQ_ONLY = ("bound", "drain_scale")
POLL_S = 0.05  # how often a wait looks at the database
DRAIN_POLL_S = 0.02  # a drain's end is looked for more often: it sets the timing's grain
# PostgreSQL 15+ backends flush their statistics at most once a second while busy and at
# the latest 10 s after going idle: the idle window starts only after that has happened.
IDLE_SETTLE_S = 11.0
LATENCY_WARMUP_EVERY_S = 0.25
DEFAULT_OUT = ROOT / ".bench" / "results"

T = TypeVar("T")


class BenchError(Exception):
    """A failed or timed-out step: reported as one line, exit code 1."""


# Rows per claim the drain tries for each batching system; its best is its drain rate. At
# 100 each, PGQueuer drained 17,460 tasks/s and 22,821 at 400, angela-queue 32,844 and
# 43,512 (medians of 3, 100,000 tasks): one fixed size would favour whichever system it suits.
DRAIN_BATCHES = (100, 400, 1000)


@dataclass(frozen=True)
class Sizes:
    """One preset of sizes; each can be overridden on the command line."""

    enqueue_tasks: int
    single_tasks: int
    drain_tasks: int
    latency_tasks: int
    idle_window_s: float
    idle_warmup: int
    bound_tasks: int
    scale_small: int
    scale_large: int
    scale_finished: int
    scale_rounds: int
    repeat: int
    timeout_s: float


PRESETS: dict[str, Sizes] = {
    "quick": Sizes(5_000, 200, 5_000, 50, 3.0, 30, 500, 1_000, 20_000, 50_000, 3, 1, 120.0),
    "default": Sizes(
        20_000, 1_000, 20_000, 300, 10.0, 200, 3_000, 1_000, 200_000, 1_000_000, 5, 1, 300.0
    ),
    "full": Sizes(
        50_000, 2_000, 50_000, 1_000, 30.0, 200, 3_000, 1_000, 1_000_000, 5_000_000, 7, 3, 600.0
    ),
}


@dataclass(frozen=True)
class ServerOptions:
    """Which server ``server()`` gives: the DSN's, else a throwaway embedded one."""

    dsn: str | None
    fast_durability: bool = False


@dataclass(frozen=True)
class RunConfig:
    """The parsed command line."""

    mode: str
    dsn: str | None
    fast_durability: bool
    only: tuple[str, ...]
    systems: tuple[str, ...]
    repeat: int
    out_dir: Path
    json_path: Path | None
    enqueue_tasks: int
    chunk: int
    single_tasks: int
    drain_tasks: int
    latency_tasks: int
    latency_rate: float
    idle_window_s: float
    idle_warmup: int
    bound_tasks: int
    scale_small: int
    scale_large: int
    scale_finished: int
    scale_rounds: int
    tuning: Tuning
    timeout_s: float
    drain_batches: tuple[int, ...] = ()


@dataclass(frozen=True)
class Sample:
    """One measured value of one run."""

    key: str
    label: str
    value: float
    unit: str


@dataclass
class Metric:
    """Every run's value of one metric of one system; the report shows the median."""

    scenario: str
    key: str
    label: str
    unit: str
    system: str
    runs: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.runs)


# -- command line ---------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    value = int(text.replace("_", "").replace(",", ""))
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value:g}")
    return value


def _names(items: list[str] | None) -> list[str]:
    return [n.strip() for item in items or [] for n in item.split(",") if n.strip()]


def parse_args(argv: Sequence[str] | None) -> RunConfig:
    p = argparse.ArgumentParser(
        prog="scripts/bench.py",
        description="Benchmark angela-queue side by side with PGQueuer, Procrastinate and "
        "plain SQL: enqueue, drain, latency, idle cost.",
    )
    preset = p.add_mutually_exclusive_group()
    preset.add_argument(
        "--quick", action="store_true", help="small sizes, all systems: the CI smoke test"
    )
    preset.add_argument(
        "--full",
        action="store_true",
        help="the issue's sizes, 3 runs (medians), drain_scale included",
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
        help=f"run only these scenarios (repeatable or comma-separated): {', '.join(SCENARIOS)}",
    )
    p.add_argument(
        "--systems",
        action="append",
        metavar="NAME",
        help=f"measure only these systems (angela-queue is always kept): {', '.join(SYSTEM_KEYS)}",
    )
    p.add_argument("--repeat", type=_positive_int, help="runs per scenario (median)")
    p.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help=f"where the JSON and Markdown results go (default: {DEFAULT_OUT.relative_to(ROOT)})",
    )
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the JSON here")
    g = p.add_argument_group("sizes (default: the preset's)")
    g.add_argument("--enqueue-tasks", type=_positive_int, help="bulk enqueue")
    g.add_argument("--chunk", type=_positive_int, default=5_000, help="tasks per bulk call")
    g.add_argument("--single-tasks", type=_positive_int, help="single enqueue")
    g.add_argument("--drain-tasks", type=_positive_int, help="tasks to drain")
    g.add_argument("--latency-tasks", type=_positive_int, help="tasks (latency)")
    g.add_argument(
        "--latency-rate", type=_positive_float, default=50.0, help="tasks sent per second"
    )
    g.add_argument("--idle-window", type=_positive_float, help="seconds the idle load is read")
    g.add_argument("--idle-warmup", type=_positive_int, help="tasks an idle worker runs first")
    g.add_argument("--bound-tasks", type=_positive_int, help="inserts per queue (bound)")
    g.add_argument("--scale-small", type=_positive_int, help="drain_scale: tasks drained")
    g.add_argument("--scale-large", type=_positive_int, help="drain_scale: big backlog")
    g.add_argument("--scale-finished", type=_positive_int, help="drain_scale: finished rows")
    g.add_argument(
        "--scale-rounds", type=_positive_int, help="drain_scale: measured rounds (median)"
    )
    g.add_argument(
        "--timeout",
        type=_positive_float,
        help="seconds any single wait or loop may take before the run fails",
    )
    t = p.add_argument_group("worker settings (the same in every scenario)")
    t.add_argument(
        "--workers", type=_positive_int, default=2, help="drain processes (not plain SQL: 1)"
    )
    t.add_argument(
        "--concurrency",
        type=_positive_int,
        default=100,
        help="angela-queue tasks at once per process, hence rows per claim (as PGQueuer's"
        " batch and the plain-SQL loop's 100)",
    )
    t.add_argument("--pgq-batch-size", type=_positive_int, default=100, help="PGQueuer batch")
    t.add_argument(
        "--procrastinate-concurrency",
        type=_positive_int,
        default=20,
        help="Procrastinate jobs at once per worker",
    )
    t.add_argument("--sql-batch", type=_positive_int, default=100, help="plain SQL rows/claim")
    t.add_argument(
        "--drain-batches",
        metavar="ROWS",
        help="rows per claim the drain tries for each batching system, comma-separated; each"
        f" system's drain rate is its best (default: {','.join(map(str, DRAIN_BATCHES))}; with"
        " --quick, the settings above)",
    )
    a = p.parse_args(argv)

    mode = "quick" if a.quick else "full" if a.full else "default"
    sizes = PRESETS[mode]
    only = _names(a.only)
    unknown = [name for name in only if name not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenario {unknown[0]!r} (choose from {', '.join(SCENARIOS)})")
    default_only = DEFAULT_SCENARIOS + (("drain_scale",) if mode == "full" else ())
    systems = _names(a.systems)
    bad = [name for name in systems if name not in SYSTEM_KEYS]
    if bad:
        p.error(f"unknown system {bad[0]!r} (choose from {', '.join(SYSTEM_KEYS)})")
    if a.concurrency > 1000:
        p.error("--concurrency must be at most 1000")
    try:
        batches = tuple(dict.fromkeys(_positive_int(n) for n in _names([a.drain_batches or ""])))
    except (ValueError, argparse.ArgumentTypeError):
        p.error(f"--drain-batches: whole numbers above 0, comma-separated: {a.drain_batches!r}")
    if any(b > 1000 for b in batches):
        p.error("--drain-batches: at most 1000 rows per claim")
    if a.drain_batches is None:  # --quick (CI's smoke run) drains once, with the settings
        batches = () if mode == "quick" else DRAIN_BATCHES
    dsn = a.dsn or os.environ.get("ANGELA_QUEUE_DSN") or None
    if dsn and a.fast_durability:
        p.error("--fast-durability only applies to the embedded server (it runs ALTER SYSTEM)")

    def pick(value: T | None, default: T) -> T:
        return default if value is None else value

    return RunConfig(
        mode=mode,
        dsn=dsn,
        fast_durability=a.fast_durability,
        only=tuple(s for s in SCENARIOS if s in only) if only else default_only,
        systems=tuple(k for k in SYSTEM_KEYS if k in systems or k == REFERENCE_KEY)
        if systems
        else SYSTEM_KEYS,
        repeat=pick(a.repeat, sizes.repeat),
        out_dir=a.out or DEFAULT_OUT,
        json_path=a.json,
        enqueue_tasks=pick(a.enqueue_tasks, sizes.enqueue_tasks),
        chunk=a.chunk,
        single_tasks=pick(a.single_tasks, sizes.single_tasks),
        drain_tasks=pick(a.drain_tasks, sizes.drain_tasks),
        latency_tasks=pick(a.latency_tasks, sizes.latency_tasks),
        latency_rate=a.latency_rate,
        idle_window_s=pick(a.idle_window, sizes.idle_window_s),
        idle_warmup=pick(a.idle_warmup, sizes.idle_warmup),
        bound_tasks=pick(a.bound_tasks, sizes.bound_tasks),
        scale_small=pick(a.scale_small, sizes.scale_small),
        scale_large=pick(a.scale_large, sizes.scale_large),
        scale_finished=pick(a.scale_finished, sizes.scale_finished),
        scale_rounds=pick(a.scale_rounds, sizes.scale_rounds),
        tuning=Tuning(
            drain_processes=a.workers,
            aq_concurrency=a.concurrency,
            pgq_batch_size=a.pgq_batch_size,
            procrastinate_concurrency=a.procrastinate_concurrency,
            sql_batch=a.sql_batch,
        ),
        timeout_s=pick(a.timeout, sizes.timeout_s),
        drain_batches=batches,
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
    poll_s: float = POLL_S,
) -> T:
    """Poll ``check`` every ``poll_s`` until it returns a value; BenchError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        if on_tick is not None:
            on_tick()
        value = check()
        if value is not None:
            return value
        if time.monotonic() >= deadline:
            raise BenchError(f"timed out after {timeout_s:g} s waiting for {what()}")
        time.sleep(poll_s)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (the same order statistic on every run)."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q * len(ordered)) - 1))]


def check_elapsed(started: float, timeout_s: float, what: str) -> None:
    if time.perf_counter() - started > timeout_s:
        raise BenchError(f"{what} took longer than {timeout_s:g} s")


def scalar(conn: psycopg.Connection[Any], query: str | sql.Composed, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    if row is None:
        raise BenchError(f"no row from: {query!r:.80}")
    return row[0]


def table_name(name: str) -> sql.Identifier:
    """``schema.table`` or ``table`` as a quoted identifier."""
    return sql.Identifier(*name.split("."))


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children, in MB (10^6 bytes)."""
    try:
        proc = psutil.Process(pid)
        total = int(proc.memory_info().rss)
        for child in proc.children(recursive=True):
            with suppress(psutil.Error):
                total += int(child.memory_info().rss)
    except psutil.Error as exc:
        raise BenchError(f"cannot read the memory of pid {pid}: {exc}") from exc
    return total / 1e6


@dataclass(frozen=True)
class Server:
    """Where the scenario databases are created."""

    dsn: str
    label: str


@contextmanager
def server(cfg: RunConfig | ServerOptions) -> Iterator[Server]:
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
def fresh_database(
    admin_dsn: str, tag: str, setup: Callable[[str], None] = migrate.upgrade
) -> Iterator[str]:
    """A new database with a system's tables (default: angela-queue's); always dropped."""
    name = f"aq_bench_{tag.replace('-', '_')}_{uuid.uuid4().hex[:8]}"
    with connect(admin_dsn) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        dsn = make_conninfo(admin_dsn, dbname=name)
        setup(dsn)
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


# Settings inherited from the environment would make runs incomparable: only ours count.
_FOREIGN_ENV = ("ANGELA_QUEUE_", "PGQUEUER_", "PROCRASTINATE_", "BENCH_")


class WorkerGroup:
    """Worker processes of any system; whatever still runs on exit is killed.

    Their output goes to log files (a pipe nobody reads could block them).
    """

    def __init__(self, log_dir: Path) -> None:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(_FOREIGN_ENV) and k != "DATABASE_URL"
        }
        env["PYTHONUNBUFFERED"] = "1"
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

    def spawn(
        self, spec: WorkerSpec, count: int = 1, probe_dir: Path | None = None
    ) -> list[subprocess.Popen[bytes]]:
        env = {**self.env, **spec.env}
        if probe_dir is not None:
            env[PROBE_DIR_ENV] = str(probe_dir)
        started: list[subprocess.Popen[bytes]] = []
        for _ in range(count):
            log_path = self.log_dir / f"worker-{uuid.uuid4().hex[:8]}.log"
            with log_path.open("wb") as log:
                proc = subprocess.Popen(
                    spec.argv,
                    cwd=ROOT,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            self.procs.append((proc, log_path))
            started.append(proc)
        return started

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


def probe_dir(log_dir: Path, tag: str) -> Path:
    return Path(tempfile.mkdtemp(dir=log_dir, prefix=f"probe-{tag}-"))


def analyze(conn: psycopg.Connection[Any], system: System) -> None:
    """Fresh statistics, so that a result does not depend on when autovacuum gets there."""
    for table in system.tables:
        conn.execute(sql.SQL("ANALYZE {}").format(table_name(table)))


# -- scenarios: every system ----------------------------------------------------------------


def enqueue_bulk(prod: Producer, total: int, chunk: int, timeout_s: float, start: int = 0) -> None:
    started = time.perf_counter()
    for first in range(start, start + total, chunk):
        prod.bulk(first, min(chunk, start + total - first))
        check_elapsed(started, timeout_s, "the bulk enqueue")


def scenario_enqueue(cfg: RunConfig, system: System, dsn: str, log_dir: Path) -> list[Sample]:
    """Producer throughput: the bulk API in chunks, and one commit per task."""
    client = with_timeouts(dsn, cfg.timeout_s)
    with opened(system.producer(client, cfg.timeout_s)) as prod:
        prod.bulk(-1, 1)  # connections opened, statements prepared: not measured
        started = time.perf_counter()
        enqueue_bulk(prod, cfg.enqueue_tasks, cfg.chunk, cfg.timeout_s)
        bulk_s = time.perf_counter() - started

        started = time.perf_counter()
        for i in range(cfg.single_tasks):
            prod.one(i, time.time())
            if i % 100 == 0:
                check_elapsed(started, cfg.timeout_s, "the single-task enqueue")
        single_s = time.perf_counter() - started
    parallel_rate = enqueue_in_parallel(system, client, cfg)
    expected = (
        cfg.enqueue_tasks + cfg.single_tasks + 1 + PARALLEL_PRODUCERS * (1 + cfg.single_tasks)
    )
    with connect(client) as conn:
        live = scalar(conn, system.live_sql())
        found = scalar(
            conn, sql.SQL("SELECT count(*) FROM {}").format(table_name(system.tables[0]))
        )
    if not live or found != expected:
        raise BenchError(f"enqueue: expected {expected:,} tasks in the table, found {found:,}")
    return [
        Sample("bulk", "bulk enqueue", cfg.enqueue_tasks / bulk_s, "tasks/s"),
        Sample("single", "single enqueue, 1 commit each", cfg.single_tasks / single_s, "tasks/s"),
        Sample(
            "parallel",
            f"single enqueue, {PARALLEL_PRODUCERS} producers at once",
            parallel_rate,
            "tasks/s",
        ),
    ]


PARALLEL_PRODUCERS = 8


def enqueue_in_parallel(system: System, client: str, cfg: RunConfig) -> float:
    """Single-task enqueues from PARALLEL_PRODUCERS threads, each with its own producer and
    connection, one commit per task: what concurrent commits cost together (group commit;
    a NOTIFY in every commit would serialise them)."""
    producers = [system.producer(client, cfg.timeout_s) for _ in range(PARALLEL_PRODUCERS)]
    failures: list[BaseException] = []

    def send(prod: Producer) -> None:
        try:
            for i in range(cfg.single_tasks):
                prod.one(i, time.time())
        except BaseException as exc:  # reported below, after every thread ended
            failures.append(exc)

    try:
        for prod in producers:
            prod.one(-1, time.time())  # connections opened, statements prepared
        threads = [threading.Thread(target=send, args=(p,)) for p in producers]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(cfg.timeout_s)
        elapsed = time.perf_counter() - started
    finally:
        for prod in producers:
            prod.close()
    if failures or any(t.is_alive() for t in threads):
        raise BenchError(f"parallel enqueue: {first_line(failures[0]) if failures else 'hung'}")
    return PARALLEL_PRODUCERS * cfg.single_tasks / elapsed


def scenario_drain(cfg: RunConfig, system: System, dsn: str, log_dir: Path) -> list[Sample]:
    """Consumer throughput of the system's own worker processes, no-op handlers."""
    n = cfg.drain_tasks
    client = with_timeouts(dsn, cfg.timeout_s)
    with opened(system.producer(client, cfg.timeout_s)) as prod:
        enqueue_bulk(prod, n, cfg.chunk, cfg.timeout_s)
    probe = probe_dir(log_dir, system.key)
    processes = system.drain_processes(cfg.tuning)
    with connect(client) as conn:
        analyze(conn, system)

        def all_done() -> bool | None:
            return None if scalar(conn, system.live_sql()) else True

        with WorkerGroup(log_dir) as workers:
            spawned = time.time()
            procs = workers.spawn(system.worker(dsn, cfg.tuning), processes, probe)
            wait_until(
                lambda: f"the {system.label} drain of {n:,} tasks",
                all_done,
                cfg.timeout_s,
                on_tick=workers.check_alive,
                poll_s=DRAIN_POLL_S,
            )
            finished = time.time()
            rss = max(rss_mb(p.pid) for p in procs)
            workers.stop(cfg.timeout_s)
        done = int(scalar(conn, system.done_sql()))
    firsts = first_starts(probe)
    if not firsts:
        raise BenchError(f"drain: no {system.label} handler ever ran")
    if system.counts_done() and done != n:
        raise BenchError(f"drain: {done:,} of {n:,} {system.label} tasks succeeded")
    return [
        Sample("rate", "drain, first task → all done", n / (finished - min(firsts)), "tasks/s"),
        Sample("rate_spawn", "drain, from process spawn", n / (finished - spawned), "tasks/s"),
        Sample("rss_mb", "worker RSS after the drain (max)", rss, "MB"),
    ]


def drain_sweep(
    cfg: RunConfig, systems: Sequence[System], admin_dsn: str, log_dir: Path
) -> dict[str, list[Sample]]:
    """The drain of every system at each of ``cfg.drain_batches`` rows per claim (a system
    that does not batch runs once), interleaved so that drift hits all alike. Each system's
    ``rate`` is its best batch's, with that run's other figures; ``rate_<rows>`` keeps each."""
    runs: dict[str, list[tuple[int, list[Sample]]]] = {s.key: [] for s in systems}
    for rows in cfg.drain_batches or (0,):
        tuned = replace(cfg, tuning=cfg.tuning.with_batch(rows)) if rows else cfg
        for system in systems:
            if runs[system.key] and not system.batched:
                continue
            with fresh_database(admin_dsn, "drain", system.setup) as dsn:
                runs[system.key].append((rows, scenario_drain(tuned, system, dsn, log_dir)))
    return {key: sweep_samples(done) for key, done in runs.items()}


def sweep_samples(done: list[tuple[int, list[Sample]]]) -> list[Sample]:
    """One system's drain samples from its runs at several batch sizes (see drain_sweep)."""
    if len(done) == 1:
        return done[0][1]

    def rate(samples: list[Sample]) -> float:
        return next(s.value for s in samples if s.key == "rate")

    best_rows, best = max(done, key=lambda run: rate(run[1]))
    each = [
        Sample(f"rate_{rows}", f"drain at {rows:,} rows per claim", rate(samples), "tasks/s")
        for rows, samples in done
    ]
    return [
        *each,
        *(replace(s, label=f"{s.label} (best batch)") if s.key != "rss_mb" else s for s in best),
        Sample("batch", "rows per claim of the best drain", best_rows, "rows"),
    ]


def scenario_latency(cfg: RunConfig, system: System, dsn: str, log_dir: Path) -> list[Sample]:
    """How long after its enqueue call a task starts in one idle worker, at a steady rate."""
    n = cfg.latency_tasks
    client = with_timeouts(dsn, cfg.timeout_s)
    probe = probe_dir(log_dir, system.key)
    with (
        WorkerGroup(log_dir) as workers,
        opened(system.producer(client, cfg.timeout_s)) as prod,
    ):
        workers.spawn(system.worker(dsn, cfg.tuning), 1, probe)
        # Warm-up: tasks until the worker has run one (it is up, listening, connected).
        warmups = 0
        next_send = 0.0

        def warmed() -> bool | None:
            nonlocal warmups, next_send
            if latency_lines(probe):
                return True
            if time.monotonic() >= next_send:
                warmups += 1
                prod.one(-warmups, time.time())
                next_send = time.monotonic() + LATENCY_WARMUP_EVERY_S
            return None

        wait_until(
            lambda: f"a first {system.label} task to run",
            warmed,
            cfg.timeout_s,
            on_tick=workers.check_alive,
            poll_s=0.01,
        )
        wait_until(
            lambda: "the warm-up tasks",
            lambda: True if len(latency_lines(probe)) >= warmups else None,
            cfg.timeout_s,
            on_tick=workers.check_alive,
        )
        time.sleep(1.0)  # idle now: from here on a task has to wake it

        send_ms: list[float] = []
        started = time.perf_counter()
        for i in range(n):
            delay = started + i / cfg.latency_rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            t0 = time.perf_counter()
            prod.one(i, time.time())
            send_ms.append((time.perf_counter() - t0) * 1000)
            if i % 10 == 0:
                workers.check_alive()
                check_elapsed(started, cfg.timeout_s, "the latency send loop")
        sent_rate = n / (time.perf_counter() - started)

        def measured() -> list[float] | None:
            got = [ms for k, ms in latency_lines(probe) if k >= 0]
            return got if len(got) >= n else None

        waits = wait_until(
            lambda: f"the {n} {system.label} latency tasks to run",
            measured,
            cfg.timeout_s,
            on_tick=workers.check_alive,
        )
        workers.stop(cfg.timeout_s)
    return [
        Sample("p50", "p50 enqueue → start", percentile(waits, 0.50), "ms"),
        Sample("p95", "p95 enqueue → start", percentile(waits, 0.95), "ms"),
        Sample("p99", "p99 enqueue → start", percentile(waits, 0.99), "ms"),
        Sample("max", "max enqueue → start", max(waits), "ms"),
        Sample("send_p50", "p50 of the producer's enqueue call", percentile(send_ms, 0.50), "ms"),
        Sample("send_p99", "p99 of the producer's enqueue call", percentile(send_ms, 0.99), "ms"),
        Sample("offered_rate", "send rate achieved", sent_rate, "tasks/s"),
    ]


PerSystemRunner = Callable[[RunConfig, System, str, Path], list[Sample]]
PER_SYSTEM_RUNNERS: dict[str, PerSystemRunner] = {
    "enqueue": scenario_enqueue,
    "drain": scenario_drain,
    "latency": scenario_latency,
}


def db_counters(admin_dsn: str, names: Sequence[str]) -> dict[str, tuple[int, int]]:
    """Per database: transactions so far (commits + rollbacks) and connections now."""
    with connect(admin_dsn) as conn:
        rows = conn.execute(
            """SELECT d.datname, d.xact_commit + d.xact_rollback,
                      (SELECT count(*) FROM pg_stat_activity a
                        WHERE a.datname = d.datname AND a.backend_type = 'client backend')
                 FROM pg_stat_database d WHERE d.datname = ANY(%s)""",
            (list(names),),
        ).fetchall()
    return {str(r[0]): (int(r[1]), int(r[2])) for r in rows}


def wait_warmed_up(
    cfg: RunConfig, system: System, dsn: str, probe: Path, workers: WorkerGroup
) -> None:
    with connect(with_timeouts(dsn, cfg.timeout_s)) as conn:

        def idle_now() -> bool | None:
            live = scalar(conn, system.live_sql())
            return True if not live and first_starts(probe) else None

        wait_until(
            lambda: f"the {system.label} warm-up tasks",
            idle_now,
            cfg.timeout_s,
            on_tick=workers.check_alive,
        )


def scenario_idle(
    cfg: RunConfig, systems: Sequence[System], admin_dsn: str, log_dir: Path
) -> dict[str, list[Sample]]:
    """All systems' idle workers at once, each alone in its database: RSS and DB load."""
    with ExitStack() as stack:
        dsns = {
            s.key: stack.enter_context(fresh_database(admin_dsn, f"idle_{s.key}", s.setup))
            for s in systems
        }
        workers = stack.enter_context(WorkerGroup(log_dir))
        pids: dict[str, int] = {}
        probes: dict[str, Path] = {}
        for s in systems:
            probes[s.key] = probe_dir(log_dir, s.key)
            pids[s.key] = workers.spawn(s.worker(dsns[s.key], cfg.tuning), 1, probes[s.key])[0].pid
        for s in systems:
            client = with_timeouts(dsns[s.key], cfg.timeout_s)
            with opened(s.producer(client, cfg.timeout_s)) as prod:
                enqueue_bulk(prod, cfg.idle_warmup, cfg.chunk, cfg.timeout_s)
        for s in systems:  # every warm-up task has run; then no connection of ours is open
            wait_warmed_up(cfg, s, dsns[s.key], probes[s.key], workers)
        time.sleep(IDLE_SETTLE_S)
        workers.check_alive()
        names = {s.key: str(conninfo_to_dict(dsns[s.key])["dbname"]) for s in systems}
        before = db_counters(admin_dsn, list(names.values()))
        t0 = time.monotonic()
        time.sleep(cfg.idle_window_s)
        after = db_counters(admin_dsn, list(names.values()))
        elapsed = time.monotonic() - t0
        workers.check_alive()
        rss = {key: rss_mb(pid) for key, pid in pids.items()}
        workers.stop(cfg.timeout_s)
    out: dict[str, list[Sample]] = {}
    for s in systems:
        name = str(names[s.key])
        xacts = after[name][0] - before[name][0]
        out[s.key] = [
            Sample("qps", "idle worker's DB load", xacts / elapsed, "xact/s"),
            Sample("rss_mb", "idle worker RSS (after the warm-up)", rss[s.key], "MB"),
            Sample("conns", "connections held by an idle worker", after[name][1], "conns"),
        ]
    return out


# -- scenarios: angela-queue only -----------------------------------------------------------

BOUND_SIZE = 100  # a bounded queue as the profiles configure them (20, 50, 100)
BOUND_BACKLOG = 50  # live tasks kept in each queue while measuring: half full


def scenario_bound(cfg: RunConfig, dsn: str) -> list[Sample]:
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
                " SELECT 'bench.noop', %s FROM generate_series(1, %s::int)",
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


SCALE_WARMUP_ROUNDS = 1  # drain_scale rounds not counted: caches are cold at first
FILL_CHUNK = 250_000  # rows per INSERT … SELECT while filling drain_scale's big table


def fill_finished(conn: psycopg.Connection[Any], total: int, timeout_s: float) -> None:
    """``total`` finished tasks, fast: a few real ones (inserted through the trigger, then
    finished as a worker would), copied over and over with triggers off. Copying every
    column of real rows keeps them valid whatever columns the schema grows."""
    template = min(1_000, total)
    conn.execute(
        "INSERT INTO angela_queue.tasks (kind, payload)"
        " SELECT 'bench.noop', jsonb_build_object('n', g) FROM generate_series(1, %s::int) g",
        (template,),
    )
    conn.execute(
        """UPDATE angela_queue.tasks
              SET status = 'succeeded', attempts = 1, started_at = now(),
                  first_started_at = now(), finished_at = now()"""
    )
    columns = [
        str(r[0])
        for r in conn.execute(
            """SELECT column_name FROM information_schema.columns
                WHERE table_schema = 'angela_queue' AND table_name = 'tasks'
                  AND column_name <> 'id' AND is_generated = 'NEVER'
                ORDER BY ordinal_position"""
        )
    ]
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    started = time.perf_counter()
    left = total - template
    with conn.transaction():
        conn.execute("SET LOCAL session_replication_role = replica")  # no triggers
        while left > 0:
            copies = max(1, min(left, FILL_CHUNK) // template)
            conn.execute(
                sql.SQL(
                    "INSERT INTO angela_queue.tasks ({cols}) SELECT {cols} FROM"
                    " (SELECT * FROM angela_queue.tasks ORDER BY id LIMIT {n}) t,"
                    " generate_series(1, {copies})"
                ).format(cols=cols, n=template, copies=copies)
            )
            left -= copies * template
            check_elapsed(started, timeout_s, "filling finished rows")


def fill_pending(conn: psycopg.Connection[Any], total: int, timeout_s: float) -> None:
    """``total`` pending tasks through the real insert path (the trigger), in chunks."""
    started = time.perf_counter()
    for first in range(0, total, FILL_CHUNK):
        conn.execute(
            "INSERT INTO angela_queue.tasks (kind, payload) SELECT 'bench.noop',"
            " jsonb_build_object('n', g) FROM generate_series(%s::int, %s::int) g",
            (first, min(total, first + FILL_CHUNK) - 1),
        )
        check_elapsed(started, timeout_s, "filling pending tasks")


def drain_some(cfg: RunConfig, dsn: str, log_dir: Path, count: int) -> float:
    """Start the drain workers on the paused queue, wait until every one is idle and
    listening, unpause (with a NOTIFY, which wakes them together), and run until ``count``
    more tasks finished. The rate is by the database's clock: tasks finished ÷ (last
    finish − unpause), so that start-up and a worker's head start do not count."""
    system = AngelaQueue()
    processes = cfg.tuning.drain_processes
    with connect(with_timeouts(dsn, cfg.timeout_s)) as conn:
        conn.execute("UPDATE angela_queue.queues SET paused = true WHERE name = 'default'")
        counted = 0

        def enough() -> bool | None:
            nonlocal counted
            counted = int(
                scalar(
                    conn,
                    "SELECT count(*) FROM angela_queue.tasks WHERE finished_at >= %s",
                    (since,),
                )
            )
            return True if counted >= count else None

        with WorkerGroup(log_dir) as workers:
            pids = [p.pid for p in workers.spawn(system.worker(dsn, cfg.tuning), processes)]
            wait_until(
                lambda: f"{processes} idle, listening angela-queue workers",
                lambda: True if workers_ready(conn, pids) else None,
                cfg.timeout_s,
                on_tick=workers.check_alive,
            )
            with conn.transaction():
                since = scalar(
                    conn,
                    """UPDATE angela_queue.queues SET paused = false WHERE name = 'default'
                       RETURNING clock_timestamp()""",
                )
                conn.execute("SELECT pg_notify(%s, 'default')", (NOTIFY_CHANNEL,))
            wait_until(
                lambda: f"{count:,} tasks to finish ({counted:,} so far)",
                enough,
                cfg.timeout_s,
                on_tick=workers.check_alive,
                poll_s=DRAIN_POLL_S,
            )
            conn.execute("UPDATE angela_queue.queues SET paused = true WHERE name = 'default'")
            workers.stop(cfg.timeout_s)
        row = conn.execute(
            """SELECT count(*), extract(epoch FROM max(finished_at) - %(since)s)::float8,
                      count(*) FILTER (WHERE status <> 'succeeded')
                 FROM angela_queue.tasks WHERE finished_at >= %(since)s""",
            {"since": since},
        ).fetchone()
    if row is None or not row[1] or row[2]:
        raise BenchError(f"drain_scale: unexpected outcome {row}")
    return float(row[0]) / float(row[1])


def workers_ready(conn: psycopg.Connection[Any], pids: Sequence[int]) -> bool:
    """Every worker registered as idle, and as many LISTEN connections in the database."""
    row = conn.execute(
        """SELECT (SELECT count(*) FROM angela_queue.workers
                    WHERE pid = ANY(%(pids)s) AND status = 'idle'),
                  (SELECT count(*) FROM pg_stat_activity
                    WHERE datname = current_database() AND query ILIKE 'LISTEN %%')""",
        {"pids": list(pids)},
    ).fetchone()
    return row is not None and row[0] >= len(pids) and row[1] >= len(pids)


def scenario_drain_scale(cfg: RunConfig, admin_dsn: str, log_dir: Path) -> list[Sample]:
    """Drain rate of the same number of tasks from a small backlog and from a big one with
    millions of finished rows beside it. Each table is built once; every round drains
    ``scale_small`` tasks (the small table is refilled each round), see ``drain_some``;
    ``scale_rounds`` rounds are measured (medians; ``--repeat`` does not apply) after one
    that is not."""
    small = cfg.scale_small
    timeout = cfg.timeout_s
    samples: list[Sample] = []
    with fresh_database(admin_dsn, "scale_small") as dsn:
        app = App(Settings(dsn=with_timeouts(dsn, timeout)))
        try:
            for round_ in range(SCALE_WARMUP_ROUNDS + cfg.scale_rounds):
                app.enqueue_many(
                    [{"kind": "bench.noop", "payload": {"n": i}} for i in range(small)]
                )
                with connect(with_timeouts(dsn, timeout)) as conn:
                    conn.execute("ANALYZE angela_queue.tasks")
                rate = drain_some(cfg, dsn, log_dir, small)
                if round_ >= SCALE_WARMUP_ROUNDS:
                    samples.append(Sample("small", f"drain, {small:,} pending", rate, "tasks/s"))
        finally:
            app.close()
    label = f"drain, {cfg.scale_large:,} pending + {cfg.scale_finished:,} finished"
    with fresh_database(admin_dsn, "scale_large") as dsn:
        started = time.perf_counter()
        with connect(with_timeouts(dsn, timeout * 10)) as conn:
            fill_finished(conn, cfg.scale_finished, timeout * 10)
            fill_pending(conn, cfg.scale_large, timeout * 10)
            conn.execute("VACUUM (ANALYZE) angela_queue.tasks")
        print(f"  [drain_scale] big table built in {time.perf_counter() - started:.0f} s")
        for round_ in range(SCALE_WARMUP_ROUNDS + cfg.scale_rounds):
            rate = drain_some(cfg, dsn, log_dir, small)
            if round_ >= SCALE_WARMUP_ROUNDS:  # the first round reads a cold table
                samples.append(Sample("large", label, rate, "tasks/s"))
    return samples


# -- report ---------------------------------------------------------------------------------


def drain_batches_text(batches: tuple[int, ...]) -> str:
    """The drain's rows per claim, for its description ('' when the settings are used)."""
    if len(batches) == 1:
        return f"; at {batches[0]:,} rows per claim"
    if not batches:
        return ""
    return (
        f"; at {', '.join(f'{b:,}' for b in batches)} rows per claim (angela-queue's "
        "concurrency, PGQueuer's batch size and the SQL loops' LIMIT, whatever the settings "
        "below say), each system's best batch giving its drain rate"
    )


def describe(cfg: RunConfig, scenario: str) -> str:
    """What a scenario measured, in one line, for the report."""
    if scenario == "enqueue":
        return (
            f"{cfg.enqueue_tasks:,} no-op tasks through each system's bulk API in chunks of "
            f"{cfg.chunk:,} (angela-queue enqueue_many = one task_insert_many call; PGQueuer "
            "Queries.enqueue with lists; Procrastinate batch_defer_async; plain SQL COPY), then "
            f"{cfg.single_tasks:,} through its single-task API, one commit each, then "
            f"{cfg.single_tasks:,} from each of {PARALLEL_PRODUCERS} producer threads at once "
            "(own connection each, one commit per task)"
        )
    if scenario == "drain":
        return (
            f"{cfg.drain_tasks:,} pre-enqueued no-op tasks, then the worker processes are "
            "spawned; timed from the first task a handler sees (start-up and imports excluded) "
            "until the benchmark sees no task left (polled every "
            f"{DRAIN_POLL_S * 1000:.0f} ms); 'from spawn' includes start-up"
            + drain_batches_text(cfg.drain_batches)
        )
    if scenario == "latency":
        return (
            f"{cfg.latency_tasks:,} tasks sent at ~{cfg.latency_rate:g}/s through each "
            "system's single-task API to 1 idle worker (warmed up); time from just before the "
            "enqueue call (so its commit counts) to the start of the handler, same clock"
        )
    if scenario == "idle":
        return (
            f"1 worker per system, all at once, each alone in its database, after "
            f"{cfg.idle_warmup} warm-up tasks and {IDLE_SETTLE_S:g} s of settling: "
            f"transactions (xact_commit + xact_rollback of pg_stat_database; one per "
            f"statement in autocommit) over {cfg.idle_window_s:g} s, and the process's RSS"
        )
    if scenario == "bound":
        return (
            f"{cfg.bound_tasks:,} single-row INSERTs (autocommit) per queue, after a warm-up "
            f"round; both queues hold {BOUND_BACKLOG} live tasks; the bounded one has max_size "
            f"{BOUND_SIZE}"
        )
    return (
        f"{cfg.tuning.drain_processes} angela-queue workers drain {cfg.scale_small:,} tasks, "
        f"{cfg.scale_rounds} measured rounds after an unmeasured one: "
        f"from a table holding just those, and from one holding {cfg.scale_large:,} pending "
        f"and {cfg.scale_finished:,} finished tasks (vacuumed); the workers start on the "
        "paused queue, which is unpaused once they are all idle and listening; rate by the "
        "database's clock, unpause → last completion"
    )


def git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"
    return rev + (" (uncommitted changes)" if dirty else "")


def cpu_model() -> str:
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def machine_facts(srv: Server, cfg: RunConfig) -> dict[str, str]:
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
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return {
        "cpu": f"{os.cpu_count()} cores, {cpu_model()}",
        "memory": f"{psutil.virtual_memory().total / 2**30:.0f} GiB",
        "load": f"{load} (1/5/15 min, at the start: other work on the machine skews results)",
        "python": platform.python_version(),
        "postgresql": values["server_version"],
        "server": srv.label,
        "durability": durability,
        "revision": f"angela-queue {git_revision()}",
    }


def command_line() -> str:
    python = sys.executable
    with suppress(ValueError):
        rel = os.path.relpath(python)
        if not rel.startswith(".."):
            python = rel
    return shlex.join([python, *sys.argv])


def fmt(value: float, unit: str) -> str:
    if unit in ("ms", "µs", "MB", "xact/s"):
        return f"{value:,.1f}" if abs(value) < 1000 else f"{value:,.0f}"
    return f"{value:,.0f}"


@dataclass
class Report:
    """Everything a run produced, ready to print or write."""

    cfg: RunConfig
    metrics: list[Metric]
    facts: dict[str, str]
    command: str
    systems: list[System]
    skipped: dict[str, str]
    started_at: str

    def find(self, scenario: str, key: str, system: str) -> Metric | None:
        for m in self.metrics:
            if (m.scenario, m.key, m.system) == (scenario, key, system):
                return m
        return None

    def median(self, scenario: str, key: str, system: str) -> float | None:
        m = self.find(scenario, key, system)
        return m.median if m else None

    def comparison_rows(self) -> list[tuple[Metric, list[str]]]:
        """One row per metric measured for several systems: each system's median, and for
        the peers their ratio to angela-queue's median (peer ÷ angela-queue)."""
        keys: list[tuple[str, str]] = []
        for m in self.metrics:
            if m.scenario not in AQ_ONLY and (m.scenario, m.key) not in keys:
                keys.append((m.scenario, m.key))
        rows: list[tuple[Metric, list[str]]] = []
        for scenario, key in keys:
            ref = self.find(scenario, key, REFERENCE_KEY)
            first: Metric | None = None
            cells: list[str] = []
            for s in self.systems:
                found = self.find(scenario, key, s.key)
                if first is None:
                    first = found
                if found is None:
                    cells.append("—")
                    continue
                cell = fmt(found.median, found.unit)
                if s.key != REFERENCE_KEY and ref is not None and ref.median and ref.unit != "rows":
                    cell += f" ({found.median / ref.median:.2f}×)"
                cells.append(cell)
            if first is not None:
                rows.append((first, cells))
        return rows

    def targets(self) -> list[tuple[str, str, bool | None]]:
        """The issue's targets, from this run's medians: (target, measured, met)."""
        out: list[tuple[str, str, bool | None]] = []
        aq = REFERENCE_KEY

        def ratio(scenario: str, key: str, peers: Sequence[str]) -> tuple[float, str] | None:
            mine = self.median(scenario, key, aq)
            found = [(v, p) for p in peers if (v := self.median(scenario, key, p)) is not None]
            if mine is None or not found:
                return None
            best, who = max(found)
            return mine / best, who

        pgq = ("pgqueuer-asyncpg", "pgqueuer-psycopg")
        for what, scenario, key, peers, need in (
            ("drain ≥ 1.5× PGQueuer's best", "drain", "rate", pgq, 1.5),
            ("drain ≥ 50 % of the plain-SQL loop", "drain", "rate", ("sql",), 0.5),
            ("bulk enqueue ≥ 2× PGQueuer's", "enqueue", "bulk", pgq, 2.0),
            ("bulk enqueue ≥ 33 % of plain COPY", "enqueue", "bulk", ("sql",), 0.33),
        ):
            r = ratio(scenario, key, peers)
            if r is not None:
                out.append((what, f"{r[0]:.2f}× ({r[1]})", r[0] >= need))
        # Context, not a target: the same ratios against the loop that keeps each task's
        # row, which is what the issue asks of angela-queue (the DELETE loop keeps nothing).
        for what, scenario, key in (
            ("drain ÷ the history-keeping SQL loop (context)", "drain", "rate"),
            ("bulk enqueue ÷ COPY into the history table (context)", "enqueue", "bulk"),
        ):
            r = ratio(scenario, key, ("sql-history",))
            if r is not None:
                out.append((what, f"{r[0]:.2f}× ({r[1]})", None))
        for what, scenario, key, limit, unit in (
            ("idle latency p50 ≤ 2 ms", "latency", "p50", 2.0, "ms"),
            ("idle latency p99 ≤ 5 ms", "latency", "p99", 5.0, "ms"),
            ("idle worker ≤ 2 queries/s", "idle", "qps", 2.0, "xact/s"),
            ("worker RSS ≤ 80 MB (idle)", "idle", "rss_mb", 80.0, "MB"),
            ("worker RSS ≤ 80 MB (after the drain)", "drain", "rss_mb", 80.0, "MB"),
        ):
            v = self.median(scenario, key, aq)
            if v is not None:
                out.append((what, f"{fmt(v, unit)} {unit}", v <= limit))
        small = self.median("drain_scale", "small", aq)
        large = self.median("drain_scale", "large", aq)
        if small and large is not None:
            share = large / small
            out.append(
                ("drain with a big table ≥ 80 % of a small one", f"{share:.0%}", share >= 0.8)
            )
        return out

    def settings(self) -> dict[str, str]:
        t = self.cfg.tuning
        return {
            s.label: f"{s.drain_processes(t)} process(es) in the drain, 1 in latency/idle; "
            + s.settings(t)
            for s in self.systems
        }

    def versions(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for s in self.systems:
            out.update(s.versions())
        return out


def print_report(r: Report) -> None:
    console = Console(width=max(160, shutil.get_terminal_size().columns))
    cfg = r.cfg
    title = f"side by side — median of {cfg.repeat} run(s); (×) = system ÷ angela-queue"
    table = Table(title=title, title_justify="left")
    table.add_column("metric", no_wrap=True)
    table.add_column("unit")
    for s in r.systems:
        table.add_column(s.label, justify="right", no_wrap=True)
    rows = r.comparison_rows()
    for m, cells in rows:
        table.add_row(m.label, m.unit, *cells)
    if rows:
        console.print(table)
    only = [m for m in r.metrics if m.scenario in AQ_ONLY]
    if only:
        t2 = Table(title="angela-queue only", title_justify="left")
        t2.add_column("scenario")
        t2.add_column("metric")
        t2.add_column("median", justify="right")
        t2.add_column("unit")
        t2.add_column("runs", justify="right")
        for m in only:
            runs = " / ".join(fmt(v, m.unit) for v in m.runs)
            t2.add_row(m.scenario, m.label, fmt(m.median, m.unit), m.unit, runs)
        console.print(t2)
    targets = r.targets()
    if targets:
        t3 = Table(title="issue 9 targets (angela-queue)", title_justify="left")
        t3.add_column("target")
        t3.add_column("this run", justify="right")
        t3.add_column("met")
        for what, value, met in targets:
            t3.add_row(what, value, "—" if met is None else "yes" if met else "NO")
        console.print(t3)
    # Plain prints: long lines here must wrap like text, not be padded like a table.
    print("settings:")
    for label, text in r.settings().items():
        print(f"  {label}: {text}")
    for key, why in r.skipped.items():
        print(f"  {key}: skipped — {why}")
    print("scenarios:")
    for scenario in cfg.only:
        print(f"  {scenario}: {describe(cfg, scenario)}")
    print()
    versions = ", ".join(f"{k} {v}" for k, v in r.versions().items())
    for name, value in {**r.facts, "packages": versions, "command": r.command}.items():
        print(f"{name:<11} {value}")


def markdown(r: Report) -> str:
    cfg = r.cfg
    lines = [
        f"# angela-queue benchmark — {r.started_at}",
        "",
        f"Median of {cfg.repeat} run(s); (×) = system ÷ angela-queue. Mode: {cfg.mode}.",
        "",
        "| metric | unit | " + " | ".join(s.label for s in r.systems) + " |",
        "|---|---|" + "---:|" * len(r.systems),
    ]
    for m, cells in r.comparison_rows():
        lines.append(f"| {m.label} | {m.unit} | " + " | ".join(cells) + " |")
    only = [m for m in r.metrics if m.scenario in AQ_ONLY]
    if only:
        lines += ["", "## angela-queue only", "", "| scenario | metric | median | unit | runs |"]
        lines.append("|---|---|---:|---|---:|")
        for m in only:
            runs = " / ".join(fmt(v, m.unit) for v in m.runs)
            lines.append(
                f"| {m.scenario} | {m.label} | {fmt(m.median, m.unit)} | {m.unit} | {runs} |"
            )
    targets = r.targets()
    if targets:
        lines += ["", "## Issue 9 targets (angela-queue)", "", "| target | this run | met |"]
        lines.append("|---|---:|---|")
        verdict = {None: "—", True: "yes", False: "**no**"}
        lines += [f"| {w} | {v} | {verdict[met]} |" for w, v, met in targets]
    lines += ["", "## Settings", ""]
    lines += [f"- **{label}**: {text}" for label, text in r.settings().items()]
    lines += [f"- **{key}**: skipped — {why}" for key, why in r.skipped.items()]
    lines += ["", "## Scenarios", ""]
    lines += [f"- **{s}**: {describe(cfg, s)}" for s in cfg.only]
    lines += ["", "## Machine", ""]
    lines += [f"- {k}: {v}" for k, v in r.facts.items()]
    lines.append("- packages: " + ", ".join(f"{k} {v}" for k, v in r.versions().items()))
    lines += ["", "Command:", "", "```", r.command, "```", ""]
    return "\n".join(lines)


def as_json(r: Report) -> dict[str, Any]:
    cfg = r.cfg
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    config["dsn"] = redact_dsn(cfg.dsn) if cfg.dsn else None
    return {
        "started_at": r.started_at,
        "command": r.command,
        "machine": r.facts,
        "packages": r.versions(),
        "config": config,
        "systems": {s.key: s.label for s in r.systems},
        "skipped": r.skipped,
        "settings": r.settings(),
        "scenarios": {s: describe(cfg, s) for s in cfg.only},
        "results": [
            {
                "scenario": m.scenario,
                "metric": m.key,
                "system": m.system,
                "label": m.label,
                "unit": m.unit,
                "median": m.median,
                "runs": m.runs,
            }
            for m in r.metrics
        ],
        "targets": [{"target": w, "value": v, "met": met} for w, v, met in r.targets()],
    }


def write_results(r: Report) -> list[Path]:
    stamp = r.started_at.replace(":", "").replace("-", "").replace(" ", "-")
    out = r.cfg.out_dir
    out.mkdir(parents=True, exist_ok=True)
    data = json.dumps(as_json(r), indent=2, ensure_ascii=False) + "\n"
    paths = [out / f"bench-{stamp}.json", out / f"bench-{stamp}.md"]
    paths[0].write_text(data)
    paths[1].write_text(markdown(r))
    if r.cfg.json_path is not None:
        r.cfg.json_path.parent.mkdir(parents=True, exist_ok=True)
        r.cfg.json_path.write_text(data)
        paths.append(r.cfg.json_path)
    return paths


# -- main -----------------------------------------------------------------------------------


def available_systems(cfg: RunConfig) -> tuple[list[System], dict[str, str]]:
    systems: list[System] = []
    skipped: dict[str, str] = {}
    for key in cfg.systems:
        system = by_key(key)
        why = system.missing()
        if why:
            skipped[system.label] = why
        else:
            systems.append(system)
    return systems, skipped


def run(cfg: RunConfig, log_dir: Path, report: Report) -> None:
    metrics: dict[tuple[str, str, str], Metric] = {}

    def record(scenario: str, system: str, samples: list[Sample], attempt: str) -> None:
        shown = "; ".join(f"{s.label} {fmt(s.value, s.unit)} {s.unit}" for s in samples)
        print(f"[{scenario} {attempt} {system}] {shown}", flush=True)
        for s in samples:
            metric = metrics.setdefault(
                (scenario, s.key, system), Metric(scenario, s.key, s.label, s.unit, system)
            )
            metric.runs.append(s.value)
            if metric not in report.metrics:
                report.metrics.append(metric)

    with server(cfg) as srv:
        report.facts = machine_facts(srv, cfg)
        print(
            f"PostgreSQL {report.facts['postgresql']} ({srv.label}), "
            f"{report.facts['durability']}; load {os.getloadavg()[0]:.2f}",
            flush=True,
        )
        for why in report.skipped.items():
            print(f"skipping {why[0]}: {why[1]}", flush=True)
        for scenario in cfg.only:
            if scenario == "drain_scale":
                print("[drain_scale] building the tables (this takes a while) …", flush=True)
                record(scenario, REFERENCE_KEY, scenario_drain_scale(cfg, srv.dsn, log_dir), "")
                continue
            for attempt in range(1, cfg.repeat + 1):
                tag = f"{attempt}/{cfg.repeat}"
                if scenario == "bound":
                    with fresh_database(srv.dsn, scenario) as dsn:
                        record(scenario, REFERENCE_KEY, scenario_bound(cfg, dsn), tag)
                elif scenario == "drain":
                    for key, samples in drain_sweep(cfg, report.systems, srv.dsn, log_dir).items():
                        record(scenario, key, samples, tag)
                elif scenario == "idle":
                    for key, samples in scenario_idle(
                        cfg, report.systems, srv.dsn, log_dir
                    ).items():
                        record(scenario, key, samples, tag)
                else:
                    for system in report.systems:  # interleaved: drift hits all alike
                        with fresh_database(srv.dsn, scenario, system.setup) as dsn:
                            samples = PER_SYSTEM_RUNNERS[scenario](cfg, system, dsn, log_dir)
                        record(scenario, system.key, samples, tag)


def fail(message: str, log_dir: Path, code: int = 1, *, keep_logs: bool = True) -> int:
    """One line on stderr; the worker logs are kept when they may explain the failure."""
    if keep_logs and any(log_dir.glob("*.log")):
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
    systems, skipped = available_systems(cfg)
    report = Report(
        cfg=cfg,
        metrics=[],
        facts={},
        command=command,
        systems=systems,
        skipped=skipped,
        started_at=datetime.now().strftime("%Y-%m-%d %H:%M:%S"),
    )
    log_dir = Path(tempfile.mkdtemp(prefix="angela-bench-"))
    try:
        run(cfg, log_dir, report)
    except KeyboardInterrupt:
        message = "interrupted; workers killed and databases dropped"
        return fail(message, log_dir, 130, keep_logs=False)
    except BenchError as exc:
        return fail(str(exc), log_dir)
    except Exception as exc:
        return fail(f"{type(exc).__name__}: {first_line(exc)}", log_dir)
    shutil.rmtree(log_dir, ignore_errors=True)
    print()
    print_report(report)
    paths = write_results(report)
    print("results written to " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
