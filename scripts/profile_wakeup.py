"""Where an idle worker's enqueue → start latency goes (`python scripts/profile_wakeup.py`).

scripts/bench.py measures the latency end to end; this splits that of the claim path (push
off: a pushed task starts without a claim). One worker (run as
``python -m scripts.profile_wakeup worker``) timestamps each step of its wake-up path: the
NOTIFY reaching its listener, the claim sent, the claim back, the handler started. A
producer sends ``--tasks`` single enqueues at ``--rate`` per second, like bench.py's
latency scenario, noting each send's time. Every step is reported as time since the send
(p50/p90/p99). Then the server-side cost of one insert is read from ``EXPLAIN ANALYZE``:
its execution and its two triggers (the row trigger prices the task; the statement
trigger locks, lowers claim floors and notifies). Without ``--dsn`` (or ANGELA_QUEUE_DSN)
a throwaway embedded server is used.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from angela_queue import App, Settings, Task
from scripts.bench import ServerOptions, fresh_database, server

STEPS = ("notified", "claim_sent", "claim_back", "start")
KIND = "profile.wakeup"
INSERT = "INSERT INTO angela_queue.tasks (kind, payload) VALUES ('profile.wakeup', '{\"n\": -1}')"


def run_worker(out_path: Path) -> None:
    """The worker side: angela-queue's own worker, with its wake-up steps timestamped."""
    from angela_queue import store, worker

    out = out_path.open("a", buffering=1)

    def mark(step: str) -> None:
        out.write(f"{step} {time.time():.6f}\n")

    notified = worker.Worker._notified

    def timed_notified(self: worker.Worker) -> None:
        mark("notified")
        notified(self)

    claim = store.AsyncTaskStore.task_record_and_claim

    async def timed_claim(self: store.AsyncTaskStore, *args: Any, **kwargs: Any) -> store.Recorded:
        mark("claim_sent")
        recorded = await claim(self, *args, **kwargs)
        if recorded.claimed:
            mark("claim_back")
        return recorded

    worker.Worker._notified = timed_notified  # type: ignore[method-assign]
    store.AsyncTaskStore.task_record_and_claim = timed_claim  # type: ignore[method-assign]
    app = App()

    @app.task(KIND)
    async def wakeup(task: Task) -> None:
        out.write(f"start {time.time():.6f} {task.payload['n']} {task.payload['sent']}\n")

    worker.run_worker(app, concurrency=10)


def steps_since_send(path: Path) -> tuple[dict[str, list[float]], int]:
    """For each task its own NOTIFY woke: milliseconds from its send to each step before
    its start. Also returns how many tasks something else started (on a loaded machine a
    claim that records the previous outcome may find the task before its NOTIFY is read):
    their last marks belong to other wake-ups, so they are left out, not mis-timed."""
    last: dict[str, float] = {}
    since: dict[str, list[float]] = {s: [] for s in STEPS}
    other = 0
    for line in path.read_text().splitlines():
        parts = line.split()
        if parts[0] != "start":
            last[parts[0]] = float(parts[1])
            continue
        at, n, sent = float(parts[1]), int(parts[2]), float(parts[3])
        if n < 0 or any(s not in last for s in STEPS[:-1]):
            continue  # a warm-up task
        marks = [sent] + [last[step] for step in STEPS[:-1]] + [at]
        if any(a > b for a, b in itertools.pairwise(marks)):
            other += 1
            continue
        for step in STEPS[:-1]:
            since[step].append((last[step] - sent) * 1000)
        since["start"].append((at - sent) * 1000)
    return since, other


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def insert_cost(dsn: str, runs: int) -> dict[str, float]:
    """Median server time of one insert, and of each trigger, from EXPLAIN ANALYZE."""
    found: dict[str, list[float]] = {"execution": [], "row trigger": [], "statement trigger": []}
    patterns = {
        "execution": r"Execution Time: ([\d.]+)",
        "row trigger": r"tasks_before_insert: time=([\d.]+)",
        "statement trigger": r"tasks_notify_inserted: time=([\d.]+)",
    }
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(runs):
            with conn.transaction(force_rollback=True):
                plan = "\n".join(r[0] for r in conn.execute("EXPLAIN ANALYZE " + INSERT))
            for name, pattern in patterns.items():
                match = re.search(pattern, plan)
                if match:
                    found[name].append(float(match.group(1)))
    return {name: statistics.median(v) for name, v in found.items() if v}


def measure(dsn: str, tasks: int, rate: float) -> None:
    folder = Path(tempfile.mkdtemp(prefix="aq-wakeup-"))
    steps = folder / "steps.txt"
    # The claim path: with push (the default) a woken idle worker would not claim at all.
    env = {
        **os.environ,
        "ANGELA_QUEUE_DSN": dsn,
        "ANGELA_QUEUE_LOG_LEVEL": "warning",
        "ANGELA_QUEUE_PUSH": "false",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "scripts.profile_wakeup", "worker", str(steps)],
        cwd=Path(__file__).resolve().parents[1],
        env=env,
    )
    app = App(Settings(dsn=dsn))
    send_ms: list[float] = []
    try:
        deadline = time.monotonic() + 30
        while not (steps.exists() and "start" in steps.read_text()):  # up and listening
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("error: the profiled worker did not start")
            app.enqueue(KIND, {"n": -1, "sent": time.time()})
            time.sleep(0.2)
        time.sleep(1.0)  # idle: from here on each task has to wake it
        began = time.perf_counter()
        for i in range(tasks):
            delay = began + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            sent = time.time()
            app.enqueue(KIND, {"n": i, "sent": sent})
            send_ms.append((time.time() - sent) * 1000)
        time.sleep(1.0)
    finally:
        app.close()
        proc.terminate()
        proc.wait(30)
    since, other = steps_since_send(steps)
    print(
        f"{len(since['start'])} of {tasks} tasks at {rate:g}/s woken by their own NOTIFY"
        f" ({other} started otherwise), ms since the send:"
    )
    rows = [("enqueue call returned", send_ms)] + [(s, since[s]) for s in STEPS]
    for name, values in rows:
        if values:
            print(
                f"  {name:22s} p50 {percentile(values, 0.5):6.2f}"
                f"  p90 {percentile(values, 0.9):6.2f}  p99 {percentile(values, 0.99):6.2f}"
            )
    print("one insert on the server (median of 200, EXPLAIN ANALYZE, rolled back):")
    for name, ms in insert_cost(dsn, 200).items():
        print(f"  {name:22s} {ms:.3f} ms")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["worker"]:
        run_worker(Path(args[1]))
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dsn", help="server to use; its role needs CREATEDB (default: embedded)")
    p.add_argument("--tasks", type=int, default=300, help="tasks to time")
    p.add_argument("--rate", type=float, default=50.0, help="tasks sent per second")
    a = p.parse_args(args)
    with (
        server(ServerOptions(a.dsn or os.environ.get("ANGELA_QUEUE_DSN"))) as srv,
        fresh_database(srv.dsn, "wakeup") as dsn,
    ):
        measure(dsn, a.tasks, a.rate)
    return 0


if __name__ == "__main__":
    sys.exit(main())
