"""What every chaos scenario shares: the server, scratch databases, worker processes, a
reconnecting connection, the audit of task transitions, and the result of a scenario."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, LiteralString

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from scripts.chaos_app import CREATE_LEDGERS

ROOT = Path(__file__).resolve().parents[1]
APP = "scripts.chaos_app:app"
TERMINAL = ("succeeded", "failed", "cancelled", "dropped")

# Every change of a task's status or attempt, with its owner before and after: the harness's
# own instrumentation (a trigger in the scratch database, never part of the schema). A
# "stale write" is any change to a row that had already finished.
CREATE_AUDIT = """
CREATE TABLE IF NOT EXISTS chaos_transitions (
    task_id bigint NOT NULL, old_status text NOT NULL, new_status text NOT NULL,
    old_worker bigint, new_worker bigint, old_attempts int NOT NULL, new_attempts int NOT NULL,
    last_error text, at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE IF NOT EXISTS chaos_worker_deaths (
    worker_id bigint NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE OR REPLACE FUNCTION chaos_audit_task() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.chaos_transitions (task_id, old_status, new_status, old_worker,
                new_worker, old_attempts, new_attempts, last_error)
    VALUES (NEW.id, OLD.status, NEW.status, OLD.worker_id, NEW.worker_id, OLD.attempts,
            NEW.attempts, left(NEW.last_error, 60));
    RETURN NULL;
END $$;
CREATE OR REPLACE FUNCTION chaos_audit_worker() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.chaos_worker_deaths (worker_id) VALUES (NEW.id);
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER chaos_audit AFTER UPDATE ON angela_queue.tasks FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.attempts IS DISTINCT FROM NEW.attempts)
    EXECUTE FUNCTION chaos_audit_task();
CREATE OR REPLACE TRIGGER chaos_audit AFTER UPDATE ON angela_queue.workers FOR EACH ROW
    WHEN (OLD.status <> 'dead' AND NEW.status = 'dead')
    EXECUTE FUNCTION chaos_audit_worker();
"""


# -- the server -----------------------------------------------------------------------------


@dataclass
class Server:
    """The PostgreSQL server of a run, and how (whether) the script may restart it."""

    dsn: str
    restart: Callable[[], None] | None
    how: str  # one line for the output: who owns the server, how it is restarted


@contextmanager
def server(dsn: str | None, restart_cmd: str | None, down_s: float = 1.0) -> Iterator[Server]:
    """The given server (restarted only through ``restart_cmd``), or an embedded one of our own."""
    if dsn:
        if restart_cmd:

            def run_cmd() -> None:
                subprocess.run(restart_cmd, shell=True, check=True, timeout=120)

            yield Server(dsn, run_cmd, f"external server, restarted with: {restart_cmd}")
        else:
            yield Server(dsn, None, "external server (--dsn): not restarted (no --restart-cmd)")
        return
    from angela_queue.embedded import EphemeralServer

    own = EphemeralServer()
    own.tune_for_tests()
    with connect(own.dsn) as conn:
        # Durable commits, as in production: a crash must not undo a committed completion
        # (fsync stays off: the operating system does not crash here, only PostgreSQL).
        conn.execute("ALTER SYSTEM SET synchronous_commit = on")
        conn.execute("SELECT pg_reload_conf()")
    try:
        yield Server(
            own.dsn,
            lambda: own.restart(down_s),
            f"embedded PostgreSQL 18 of its own, crashed (stop -m immediate) and restarted "
            f"after {down_s:g} s",
        )
    finally:
        own.stop()


@contextmanager
def scratch_database(server_dsn: str) -> Iterator[str]:
    """A fresh, migrated database on the server of ``server_dsn``, dropped afterwards."""
    from angela_queue import migrate

    name = f"angela_chaos_{uuid.uuid4().hex[:10]}"
    with connect(server_dsn) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        dsn = make_conninfo(server_dsn, dbname=name)
        migrate.upgrade(dsn)
        yield dsn
    finally:
        with connect(server_dsn, wait_s=60) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def prepare(dsn: str) -> None:
    """The ledgers and the audit triggers, in a migrated database (idempotent); every
    scenario calls it first, so that a test can hand it a database of its own."""
    with connect(dsn) as conn:
        conn.execute(CREATE_LEDGERS)
        conn.execute(CREATE_AUDIT)


def connect(dsn: str, wait_s: float = 30.0) -> psycopg.Connection[Any]:
    """An autocommit connection, retried for ``wait_s`` (the server may be restarting)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return psycopg.connect(dsn, autocommit=True, connect_timeout=5)
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


class Db:
    """The harness's own connection: every query is retried across a server restart."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._conn: psycopg.Connection[Any] | None = None

    def rows(
        self, query: LiteralString, params: Sequence[Any] | Mapping[str, Any] | None = None
    ) -> list[Any]:
        deadline = time.monotonic() + 60
        while True:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = connect(self.dsn)
                cur = self._conn.execute(query, params)
                return cur.fetchall() if cur.description else []
            except psycopg.OperationalError:
                self.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def one(self, query: LiteralString, params: Sequence[Any] | None = None) -> Any:
        """The first column of the first row."""
        rows = self.rows(query, params)
        return rows[0][0] if rows else None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None


# -- worker processes -----------------------------------------------------------------------


def worker_env(
    dsn: str, heartbeat_s: float, heartbeat_timeout_s: float, **extra: str
) -> dict[str, str]:
    return {
        **os.environ,
        "ANGELA_QUEUE_DSN": dsn,
        "ANGELA_QUEUE_HEARTBEAT_S": str(heartbeat_s),
        "ANGELA_QUEUE_HEARTBEAT_TIMEOUT_S": str(heartbeat_timeout_s),
        "ANGELA_QUEUE_RETRY_BASE_S": "0.1",
        "ANGELA_QUEUE_SHUTDOWN_GRACE_S": "5",
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


class Processes:
    """Every process started here is stopped on the way out (SIGCONT, SIGTERM, then SIGKILL)."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: list[subprocess.Popen[bytes]] = []
        self.log_paths: dict[int, Path] = {}

    def start(
        self,
        command: Sequence[str],
        env: dict[str, str],
        name: str,
        module: str = "angela_queue.cli",
    ) -> subprocess.Popen[bytes]:
        path = self.logs / f"{name}-{len(self.procs)}.log"
        with path.open("w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", module, *command],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        self.procs.append(proc)
        self.log_paths[proc.pid] = path
        return proc

    def worker(self, env: dict[str, str], concurrency: int, *args: str) -> subprocess.Popen[bytes]:
        command = ["worker", "--app", APP, "--concurrency", str(concurrency), *args]
        return self.start(command, env, "worker")

    def log_of(self, proc: subprocess.Popen[bytes]) -> str:
        return self.log_paths[proc.pid].read_text(errors="replace")

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                with suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGCONT)
                p.terminate()
        deadline = time.monotonic() + 15
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@contextmanager
def processes(logs: Path) -> Iterator[Processes]:
    procs = Processes(logs)
    try:
        yield procs
    finally:
        procs.stop_all()


def _die_with_parent() -> None:
    """Linux: the kernel SIGKILLs the child when this script dies, even by SIGKILL."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def worker_id_of(db: Db, pid: int, timeout_s: float = 30.0) -> int:
    """The workers-table id of the worker process ``pid`` (waits for it to register)."""
    deadline = time.monotonic() + timeout_s
    while True:
        wid = db.one(
            "SELECT id FROM angela_queue.workers WHERE pid = %s ORDER BY id DESC LIMIT 1", (pid,)
        )
        if wid is not None:
            return int(wid)
        if time.monotonic() > deadline:
            raise RuntimeError(f"worker process {pid} did not register within {timeout_s} s")
        time.sleep(0.05)


def wait_until(predicate: Callable[[], Any], timeout_s: float, interval_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval_s)
    return True


# -- figures --------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def stale_writes(db: Db) -> int:
    """Changes applied to tasks that had already finished (must be 0)."""
    return int(
        db.one(
            "SELECT count(*) FROM chaos_transitions WHERE old_status = ANY(%s)", (list(TERMINAL),)
        )
    )


@dataclass
class Result:
    """One scenario's figures and promises."""

    scenario: str
    figures: dict[str, Any] = field(default_factory=dict)
    promises: list[tuple[str, bool]] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    logs: str | None = None

    def promise(self, text: str, kept: bool) -> None:
        self.promises.append((text, kept))

    @property
    def ok(self) -> bool:
        return bool(self.promises) and all(kept for _, kept in self.promises)

    def report(self) -> list[str]:
        out = [f"== {self.scenario} ({self.elapsed_s:.0f} s): {'OK' if self.ok else 'BROKEN'}"]
        out += [f"  {line}" for line in self.lines]
        out += [f"  [{'kept' if kept else 'BROKEN'}] {text}" for text, kept in self.promises]
        if self.logs and not self.ok:
            out.append(f"  logs kept in {self.logs}")
        return out
