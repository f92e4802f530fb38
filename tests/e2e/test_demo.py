"""`angela-queue demo` with real processes: a whole quick run, and Ctrl-C at any moment
leaves nothing running (supervisor, workers, the embedded PostgreSQL it started)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from angela_queue import embedded
from tests.e2e.helpers import ROOT, start_worker, stop, wait_for, wait_for_live_workers

pytestmark = pytest.mark.slow


def start_demo(tmp_path: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], Path]:
    """The demo in a session of its own, as a terminal would run it; output to a file."""
    out = tmp_path / "demo.out"
    base = {k: v for k, v in os.environ.items() if k not in ("ANGELA_QUEUE_DSN", "DATABASE_URL")}
    with out.open("wb") as sink:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [sys.executable, "-m", "angela_queue.cli", "demo", "--quick"],
            cwd=ROOT,
            env={**base, "PYTHONUNBUFFERED": "1", **env},
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return proc, out


def family(proc: subprocess.Popen[bytes], seen: dict[int, psutil.Process]) -> None:
    """Remember every descendant of the demo (the supervisor, its workers)."""
    try:
        for child in psutil.Process(proc.pid).children(recursive=True):
            seen.setdefault(child.pid, child)
    except psutil.NoSuchProcess:
        pass


def running(processes: dict[int, psutil.Process], pgdata: str | None = None) -> list[str]:
    """What is still alive of ``processes``, and any process serving ``pgdata``."""
    left = []
    for p in processes.values():
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{p.pid} {' '.join(p.cmdline())}")
        except psutil.NoSuchProcess:
            pass
    if pgdata:
        for p in psutil.process_iter(["pid", "cmdline"]):
            if pgdata in " ".join(p.info["cmdline"] or []):
                left.append(f"{p.info['pid']} {' '.join(p.info['cmdline'])}")
    return left


def test_a_quick_run_supervises_batches_and_stops_everything(dsn, conn, tmp_path):
    """Also README "Troubleshooting": the demo runs beside a worker of another queue and
    leaves it alone (one demo run for both claims: a run costs ~12 s)."""
    bystander = start_worker(dsn)  # the queue 'default'
    try:
        wait_for_live_workers(conn)
        proc, out = start_demo(tmp_path, {"ANGELA_QUEUE_DSN": dsn})
        seen: dict[int, psutil.Process] = {}
        deadline = time.monotonic() + 100
        while proc.poll() is None and time.monotonic() < deadline:
            family(proc, seen)
            time.sleep(0.1)
        assert proc.wait(timeout=10) == 0, out.read_text()
        assert bystander.poll() is None  # neither stopped nor killed by the demo's supervisor
        asked = conn.execute(
            "SELECT stop_requested FROM angela_queue.workers WHERE pid = %s", (bystander.pid,)
        ).fetchone()
    finally:
        code, output = stop(bystander)
    assert asked == (False,)
    assert code == 0, output
    text = out.read_text()
    for line in ("the supervisor's decisions", "against the seed plan", "batches: ", "start 4"):
        assert line in text, text
    assert conn.execute(
        "SELECT count(*) FILTER (WHERE status = 'succeeded'), count(*)"
        " FROM angela_queue.tasks WHERE queue = 'learning'"
    ).fetchone() == (224, 224)
    actions = [r[0] for r in conn.execute("SELECT action FROM angela_queue.supervisor_decisions")]
    assert actions[0] == "start 4" and "start 1" in actions and "stop 1" in actions, actions
    batch_sizes = conn.execute(
        "SELECT max((result ->> 'batch_size')::int), count(DISTINCT result ->> 'batch')"
        " FROM angela_queue.tasks WHERE kind = 'memory.consolidate'"
    ).fetchone()
    assert batch_sizes[0] == 5 and batch_sizes[1] < 56, batch_sizes
    pids = [
        r[0]
        for r in conn.execute(
            "SELECT pid FROM angela_queue.workers WHERE pid <> %s", (bystander.pid,)
        )
    ]
    assert len(pids) >= 6 and len(seen) >= 7  # the supervisor and its workers, all seen
    assert conn.execute(
        "SELECT count(*) FROM angela_queue.workers WHERE status <> 'dead' AND pid <> %s",
        (bystander.pid,),
    ).fetchone() == (0,)
    assert running(seen) == []


@pytest.mark.parametrize(
    ("moment", "whom"),
    [
        ("while the embedded server starts", "group"),
        ("once the workers run", "group"),
        ("once the workers run", "demo"),
        ("while the tasks drain", "demo"),
    ],
)
def test_ctrl_c_at_any_moment_leaves_nothing_running(tmp_path, moment, whom):
    """SIGINT to the process group (a terminal's Ctrl-C) or to the demo alone."""
    pgdata = str(tmp_path / "pgdata")
    proc, out = start_demo(tmp_path, {"ANGELA_QUEUE_PGDATA": pgdata})
    seen: dict[int, psutil.Process] = {}

    def reached() -> bool:
        family(proc, seen)
        assert proc.poll() is None, out.read_text()
        text = out.read_text()
        if moment == "while the embedded server starts":
            return any(pgdata in " ".join(p.cmdline()) for p in seen.values() if _alive(p))
        workers = sum("angela_queue.cli worker" in _cmdline(p) for p in seen.values())
        if moment == "once the workers run":
            return workers >= 4 and "conversations end at once" not in text
        return "tasks/s" in text and "done," in text

    try:
        wait_for(reached, timeout=90, interval=0.02)
        if whom == "group":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            os.kill(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=40)
        text = out.read_text()
        assert code == 130, text
        assert "interrupted: stopping everything the demo started" in text, text
        assert "Traceback" not in text, text
        wait_for(lambda: not running(seen, pgdata), timeout=5)
        assert not embedded.status(pgdata).running
    finally:
        for p in seen.values():  # nothing may outlive a failed test either
            if _alive(p):
                p.kill()
        if proc.poll() is None:
            proc.kill()
        if embedded.status(pgdata).running:
            embedded.stop(pgdata)


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:
        return ""


def test_a_sigkilled_demo_takes_its_supervisor_and_workers_along_and_db_stop_ends_the_server(
    tmp_path,
):
    """SIGKILL cannot be handled: the supervisor learns of its parent's death (Linux
    PDEATHSIG) and stops its workers; the embedded server keeps running until `db stop`."""
    pgdata = str(tmp_path / "pgdata")
    proc, out = start_demo(tmp_path, {"ANGELA_QUEUE_PGDATA": pgdata})
    seen: dict[int, psutil.Process] = {}

    def workers_run() -> bool:
        family(proc, seen)
        assert proc.poll() is None, out.read_text()
        return sum("angela_queue.cli worker" in _cmdline(p) for p in seen.values()) >= 4

    env = {**os.environ, "ANGELA_QUEUE_PGDATA": pgdata}
    try:
        wait_for(workers_run, timeout=90, interval=0.02)
        # Only the server (a descendant while pg_ctl started it) may stay.
        ours = {pid: p for pid, p in seen.items() if "angela_queue" in _cmdline(p)}
        assert len(ours) >= 5  # the supervisor and its workers
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        wait_for(lambda: not running(ours), timeout=20)
        assert embedded.status(pgdata).running  # left running, and found again by the CLI
        db = [sys.executable, "-m", "angela_queue.cli", "db"]
        status = subprocess.run([*db, "status"], env=env, capture_output=True, text=True)
        assert status.returncode == 0 and "running" in status.stdout, status.stdout
        stopped = subprocess.run([*db, "stop"], env=env, capture_output=True, text=True)
        assert stopped.stdout.strip() == "stopped", stopped.stdout + stopped.stderr
        assert not embedded.status(pgdata).running
        assert running({}, pgdata) == []
    finally:
        for p in seen.values():
            if _alive(p) and "angela_queue" in _cmdline(p):
                p.kill()
        if embedded.status(pgdata).running:
            embedded.stop(pgdata)
