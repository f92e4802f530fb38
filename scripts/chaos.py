"""Chaos: SIGKILL random workers while tasks flow; not one task may be lost.

Scenario ``kill``: N tasks (default 5,000, each sleeping U[10, 500] ms), 4 workers of
concurrency 4; every 2 s a random worker gets SIGKILL and a fresh one takes its place,
until every task is done. Then it prints the figures — tasks, lost (must be 0),
duplicates (tasks run more than once: at-least-once delivery, visible in ``attempts``),
and the reclaim latency (from a kill to the moment none of the killed worker's tasks is
still running under it) — and exits 1 when a task was lost or the time limit was hit.

    python scripts/chaos.py kill [--tasks 5000] [--workers 4] [--kill-every 2] [--dsn DSN]

The database: --dsn, else ANGELA_QUEUE_DSN, else an embedded throwaway server. A scratch
database is created next to the DSN's (its role needs CREATEDB) and dropped afterwards.
Every process the script starts is stopped when it exits or gets SIGTERM/Ctrl-C (exit
130), and on Linux also when the script itself is SIGKILLed (only the scratch database
is left behind then).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from angela_queue import App, Task

ROOT = Path(__file__).resolve().parents[1]
KIND = "chaos.work"
CREATE_RUNS = """CREATE TABLE IF NOT EXISTS chaos_runs (
    task_id bigint NOT NULL, attempt int NOT NULL, pid int NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp())"""

app = App()
_local = threading.local()


@app.task(KIND, max_attempts=25)
def work(task: Task) -> None:
    """Record the start on its own autocommit connection (it survives a kill), then work."""
    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        conn = _local.conn = psycopg.connect(app.dsn, autocommit=True)
    conn.execute(
        "INSERT INTO chaos_runs (task_id, attempt, pid) VALUES (%s, %s, %s)",
        (task.id, task.attempts, os.getpid()),
    )
    time.sleep(float(task.payload["ms"]) / 1000)


@dataclass
class Kill:
    """One SIGKILL and the tasks it orphaned."""

    at: float
    worker_id: int | None
    task_ids: list[int]
    reclaimed_after_s: float | None = None


@dataclass
class ChaosReport:
    tasks: int
    workers: int
    kill_every_s: float
    succeeded: int = 0
    failed: int = 0
    lost: int = 0
    duplicates: int = 0
    extra_runs: int = 0
    elapsed_s: float = 0.0
    timed_out: bool = False
    kills: list[Kill] = field(default_factory=list)

    @property
    def latencies(self) -> list[float]:
        return [k.reclaimed_after_s for k in self.kills if k.reclaimed_after_s is not None]

    @property
    def unresolved(self) -> int:
        """Kills whose orphaned tasks were still running under the dead worker at the end."""
        return sum(1 for k in self.kills if k.task_ids and k.reclaimed_after_s is None)

    @property
    def ok(self) -> bool:
        return self.lost == 0 and not self.timed_out and self.unresolved == 0

    def lines(self) -> list[str]:
        lat = self.latencies
        orphaned = sum(len(k.task_ids) for k in self.kills)
        return [
            f"chaos kill: {self.tasks} tasks, {self.workers} workers, "
            f"SIGKILL every {self.kill_every_s:g} s",
            f"  finished in {self.elapsed_s:.1f} s{' (TIME LIMIT HIT)' if self.timed_out else ''}"
            f": {self.succeeded} succeeded, {self.failed} failed, lost {self.lost}",
            f"  kills {len(self.kills)}, orphaning {orphaned} running task(s); reclaim latency "
            + (
                f"max {max(lat):.2f} s, median {statistics.median(lat):.2f} s "
                f"over {len(lat)} kill(s)"
                if lat
                else "not measured (no kill caught a running task)"
            )
            + (f"; {self.unresolved} never reclaimed" if self.unresolved else ""),
            f"  duplicates: {self.duplicates} task(s) ran more than once "
            f"({self.extra_runs} extra run(s))",
        ]


def run_kill(
    dsn: str,
    *,
    tasks: int = 5000,
    workers: int = 4,
    kill_every_s: float = 2.0,
    concurrency: int = 4,
    task_ms: tuple[int, int] = (10, 500),
    heartbeat_s: float = 0.5,
    heartbeat_timeout_s: float = 2.0,
    time_limit_s: float = 600.0,
    seed: int | None = None,
    log_dir: Path | None = None,
    say: Callable[[str], object] = print,
) -> ChaosReport:
    """The ``kill`` scenario on a migrated database; returns the figures."""
    rand = random.Random(seed)
    report = ChaosReport(tasks, workers, kill_every_s)
    env = {
        **os.environ,
        "ANGELA_QUEUE_DSN": dsn,
        "ANGELA_QUEUE_HEARTBEAT_S": str(heartbeat_s),
        "ANGELA_QUEUE_HEARTBEAT_TIMEOUT_S": str(heartbeat_timeout_s),
        "ANGELA_QUEUE_RETRY_BASE_S": "0.1",
        "PYTHONUNBUFFERED": "1",
    }
    logs = log_dir or Path(tempfile.mkdtemp(prefix="angela-chaos-"))
    with psycopg.connect(dsn, autocommit=True) as conn, _processes(logs) as procs:
        conn.execute(CREATE_RUNS)
        producer = App(dsn=dsn)
        try:
            producer.enqueue_many(
                # Every reclaim counts an attempt: leave room for a task hit by many kills.
                [
                    {"kind": KIND, "payload": {"ms": rand.randint(*task_ms)}, "max_attempts": 25}
                    for _ in range(tasks)
                ]
            )
        finally:
            producer.close()

        def spawn() -> None:
            with (logs / f"worker-{len(procs)}.log").open("w") as out:
                procs.append(_start_worker(env, concurrency, out))

        for _ in range(workers):
            spawn()
        say(f"{tasks} tasks, {workers} workers; a SIGKILL every {kill_every_s:g} s")
        start = time.monotonic()
        next_kill = start + kill_every_s
        live = list(procs)
        while _count(conn, "succeeded", "failed") < tasks:
            now = time.monotonic()
            if now - start > time_limit_s:
                report.timed_out = True
                break
            if now >= next_kill:
                victim = rand.choice(live)
                report.kills.append(_kill(conn, victim))
                live.remove(victim)
                spawn()
                live.append(procs[-1])
                next_kill += kill_every_s
            _measure_reclaims(conn, report.kills)
            time.sleep(0.05)
        _measure_reclaims(conn, report.kills)
        report.elapsed_s = time.monotonic() - start
    with psycopg.connect(dsn, autocommit=True) as conn:
        _tally(conn, report)  # after the workers stopped: nothing moves any more
    if report.ok and log_dir is None:
        shutil.rmtree(logs, ignore_errors=True)
    else:
        say(f"worker logs in {logs}")
    return report


def _start_worker(env: dict[str, str], concurrency: int, out: Any) -> subprocess.Popen[bytes]:
    command = ["worker", "--app", "scripts.chaos:app", "--concurrency", str(concurrency)]
    return subprocess.Popen(
        [sys.executable, "-m", "angela_queue.cli", *command],
        cwd=ROOT,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        preexec_fn=_die_with_parent,
    )


def _die_with_parent() -> None:
    """Linux: the kernel SIGKILLs the child when this script dies, even by SIGKILL."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@contextmanager
def _processes(logs: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Every process started inside is stopped on the way out (SIGTERM, then SIGKILL)."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    except BaseException:
        print(f"worker logs kept in {logs}", file=sys.stderr)
        raise
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + 10
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _kill(conn: psycopg.Connection[Any], victim: subprocess.Popen[bytes]) -> Kill:
    row = conn.execute(
        "SELECT id FROM angela_queue.workers WHERE pid = %s ORDER BY id DESC LIMIT 1",
        (victim.pid,),
    ).fetchone()
    victim.kill()
    victim.wait()
    at = time.monotonic()
    worker_id = None if row is None else int(row[0])
    orphaned = conn.execute(
        "SELECT id FROM angela_queue.tasks WHERE status = 'running' AND worker_id = %s",
        (worker_id,),
    ).fetchall()
    return Kill(at, worker_id, [int(r[0]) for r in orphaned])


def _measure_reclaims(conn: psycopg.Connection[Any], kills: list[Kill]) -> None:
    for k in kills:
        if not k.task_ids or k.reclaimed_after_s is not None:
            continue
        still = conn.execute(
            "SELECT count(*) FROM angela_queue.tasks"
            " WHERE id = ANY(%s) AND status = 'running' AND worker_id = %s",
            (k.task_ids, k.worker_id),
        ).fetchone()
        if still is not None and still[0] == 0:
            k.reclaimed_after_s = time.monotonic() - k.at


def _count(conn: psycopg.Connection[Any], *statuses: str) -> int:
    row = conn.execute(
        "SELECT count(*) FROM angela_queue.tasks WHERE status = ANY(%s)", (list(statuses),)
    ).fetchone()
    return 0 if row is None else int(row[0])


def _tally(conn: psycopg.Connection[Any], report: ChaosReport) -> None:
    report.succeeded = _count(conn, "succeeded")
    report.failed = _count(conn, "failed")
    report.lost = report.tasks - report.succeeded
    row = conn.execute(
        "SELECT count(*) FILTER (WHERE n > 1), coalesce(sum(n - 1), 0)"
        " FROM (SELECT count(*) AS n FROM chaos_runs GROUP BY task_id) r"
    ).fetchone()
    assert row is not None
    report.duplicates, report.extra_runs = int(row[0]), int(row[1])


@contextmanager
def _scratch_database(server_dsn: str) -> Iterator[str]:
    """A fresh, migrated database on the server of ``server_dsn``, dropped afterwards."""
    from angela_queue import migrate

    name = f"angela_chaos_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        dsn = make_conninfo(server_dsn, dbname=name)
        migrate.upgrade(dsn)
        yield dsn
    finally:
        with psycopg.connect(server_dsn, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@contextmanager
def _server(dsn: str | None) -> Iterator[str]:
    if dsn:
        yield dsn
        return
    from angela_queue.embedded import EphemeralServer

    server = EphemeralServer()
    server.tune_for_tests()
    try:
        yield server.dsn
    finally:
        server.stop()


def _interrupt(*_: object) -> None:
    """SIGTERM unwinds like Ctrl-C, so that every started process is stopped."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", choices=["kill"])
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--kill-every", type=float, default=2.0, help="seconds between kills")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--heartbeat-s", type=float, default=0.5)
    parser.add_argument("--heartbeat-timeout-s", type=float, default=2.0)
    parser.add_argument("--time-limit", type=float, default=600.0, help="seconds")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--dsn", default=os.environ.get("ANGELA_QUEUE_DSN"))
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with _server(args.dsn) as server, _scratch_database(server) as dsn:
            report = _run_from_args(dsn, args)
    except KeyboardInterrupt:
        print("interrupted: every process it started was stopped", file=sys.stderr)
        return 130
    print("\n".join(report.lines()))
    return 0 if report.ok else 1


def _run_from_args(dsn: str, args: argparse.Namespace) -> ChaosReport:
    return run_kill(
        dsn,
        tasks=args.tasks,
        workers=args.workers,
        kill_every_s=args.kill_every,
        concurrency=args.concurrency,
        heartbeat_s=args.heartbeat_s,
        heartbeat_timeout_s=args.heartbeat_timeout_s,
        time_limit_s=args.time_limit,
        seed=args.seed,
    )


if __name__ == "__main__":
    sys.exit(main())
