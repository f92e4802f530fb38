"""Scenario ``kill``: SIGKILL a random worker every 2 s, and restart PostgreSQL once, while
tasks flow; not one task may be lost, and no transactional effect may happen twice."""

from __future__ import annotations

import random
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from angela_queue import App
from scripts.chaos_app import TX, WORK
from scripts.chaos_lib import Db, Processes, prepare, processes, stale_writes, worker_env


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
    tx_tasks: int = 0
    succeeded: int = 0
    failed: int = 0
    lost: int = 0
    duplicates: int = 0
    extra_runs: int = 0
    # Runs repeated although their process was neither SIGKILLed nor left declared dead:
    # a rerun must always follow a run cut short (0 is the promise the tests check).
    unexplained_reruns: int = 0
    duplicate_effects: int = 0
    missing_effects: int = 0
    stale_writes: int = 0
    elapsed_s: float = 0.0
    timed_out: bool = False
    kills: list[Kill] = field(default_factory=list)
    own_exits: dict[int, int] = field(default_factory=dict)  # exit code → count
    cut_short_pids: set[int] = field(default_factory=set)  # killed, or exited non-zero
    restart: tuple[float, float] | None = None  # monotonic start and end of the outage
    restart_note: str = ""
    recovery_s: float | None = None  # server back → next task finished
    reclaim_bound_s: float = 0.0

    @property
    def latencies(self) -> list[float]:
        return [k.reclaimed_after_s for k in self.kills if k.reclaimed_after_s is not None]

    def near_restart(self, k: Kill) -> bool:
        """A kill whose reclaim window overlaps the outage (reapers wait it out on purpose)."""
        if self.restart is None:
            return False
        start, end = self.restart
        return start - self.reclaim_bound_s <= k.at <= end + self.reclaim_bound_s

    @property
    def clear_latencies(self) -> list[float]:
        return [
            k.reclaimed_after_s
            for k in self.kills
            if k.reclaimed_after_s is not None and not self.near_restart(k)
        ]

    @property
    def unresolved(self) -> int:
        """Kills whose orphaned tasks were still running under the dead worker at the end."""
        return sum(1 for k in self.kills if k.task_ids and k.reclaimed_after_s is None)

    @property
    def ok(self) -> bool:
        return (
            self.lost == 0
            and not self.timed_out
            and self.unresolved == 0
            and self.duplicate_effects == 0
            and self.missing_effects == 0
            and self.stale_writes == 0
        )

    def lines(self) -> list[str]:
        lat = self.latencies
        clear = self.clear_latencies
        orphaned = sum(len(k.task_ids) for k in self.kills)
        out = [
            f"{self.tasks} tasks ({self.tx_tasks} with transactional completion), "
            f"{self.workers} workers, SIGKILL every {self.kill_every_s:g} s",
            f"finished in {self.elapsed_s:.1f} s{' (TIME LIMIT HIT)' if self.timed_out else ''}"
            f": {self.succeeded} succeeded, {self.failed} failed, lost {self.lost}",
            f"kills {len(self.kills)}, orphaning {orphaned} running task(s); reclaim latency "
            + (
                f"max {max(lat):.2f} s, median {statistics.median(lat):.2f} s "
                f"over {len(lat)} kill(s)"
                if lat
                else "not measured (no kill caught a running task)"
            )
            + (f"; {self.unresolved} never reclaimed" if self.unresolved else ""),
            f"duplicates: {self.duplicates} task(s) ran more than once "
            f"({self.extra_runs} extra run(s)); transactional effects: "
            f"{self.duplicate_effects} duplicated, {self.missing_effects} missing; "
            f"{self.unexplained_reruns} rerun(s) of a run whose process was neither killed "
            "nor declared dead",
            f"stale writes (changes to finished tasks): {self.stale_writes}",
        ]
        if self.restart is not None:
            down = self.restart[1] - self.restart[0]
            rec = "n/a" if self.recovery_s is None else f"{self.recovery_s:.2f} s"
            out.append(
                f"PostgreSQL restart: outage {down:.2f} s; first task finished {rec} after "
                f"the server was back; max reclaim latency of the kills away from it "
                f"{max(clear) if clear else 0:.2f} s"
            )
        if self.restart_note:
            out.append(self.restart_note)
        if self.own_exits:
            codes = ", ".join(f"exit {c}: {n}" for c, n in sorted(self.own_exits.items()))
            out.append(f"workers that exited by themselves (replaced): {codes}")
        return out


def run_kill(
    dsn: str,
    *,
    tasks: int = 10_000,
    workers: int = 4,
    kill_every_s: float = 2.0,
    concurrency: int = 4,
    task_ms: tuple[int, int] = (10, 500),
    heartbeat_s: float = 0.5,
    heartbeat_timeout_s: float = 2.0,
    tx_share: float = 0.5,
    restart: Callable[[], None] | None = None,
    restart_note: str = "",
    time_limit_s: float = 900.0,
    seed: int | None = None,
    log_dir: Path | None = None,
    say: Callable[[str], object] = print,
) -> ChaosReport:
    """The ``kill`` scenario on a scratch database (chaos_lib.scratch_database).

    A share ``tx_share`` of the tasks are ``chaos.tx`` (transactional completion); with
    ``restart``, the server is restarted once, when half the tasks are done.
    """
    prepare(dsn)
    rand = random.Random(seed)
    report = ChaosReport(tasks, workers, kill_every_s, restart_note=restart_note)
    report.reclaim_bound_s = heartbeat_timeout_s + heartbeat_s + 1.5
    env = worker_env(dsn, heartbeat_s, heartbeat_timeout_s)
    logs = log_dir or Path(tempfile.mkdtemp(prefix="angela-chaos-kill-"))
    db = Db(dsn)
    kinds = [TX if rand.random() < tx_share else WORK for _ in range(tasks)]
    report.tx_tasks = kinds.count(TX)
    producer = App(dsn=dsn)
    try:
        # Every reclaim counts an attempt: leave room for a task hit by many kills.
        producer.enqueue_many(
            [
                {"kind": k, "payload": {"ms": rand.randint(*task_ms)}, "max_attempts": 25}
                for k in kinds
            ]
        )
    finally:
        producer.close()
    with processes(logs) as procs:
        live = [procs.worker(env, concurrency) for _ in range(workers)]
        say(
            f"kill: {tasks} tasks, {workers} workers; a SIGKILL every {kill_every_s:g} s"
            + ("; PostgreSQL restarted at half-way" if restart else "")
        )
        start = time.monotonic()
        next_kill = start + kill_every_s
        while (done := _count(db, "succeeded", "failed")) < tasks:
            now = time.monotonic()
            if now - start > time_limit_s:
                report.timed_out = True
                break
            if restart is not None and report.restart is None and done >= tasks // 2:
                _restart(db, restart, report, say)
                continue
            if now >= next_kill:
                victim = rand.choice(live)
                report.kills.append(_kill(db, victim))
                report.cut_short_pids.add(victim.pid)
                live.remove(victim)
                live.append(procs.worker(env, concurrency))
                next_kill += kill_every_s
            _replace_exited(procs, live, env, concurrency, report)
            _measure_reclaims(db, report.kills)
            time.sleep(0.05)
        _measure_reclaims(db, report.kills)
        report.elapsed_s = time.monotonic() - start
    _tally(db, report)  # after the workers stopped: nothing moves any more
    db.close()
    if not report.ok or log_dir is not None:
        say(f"worker logs in {logs}")
    return report


def _restart(
    db: Db, restart: Callable[[], None], report: ChaosReport, say: Callable[[str], object]
) -> None:
    before = _count(db, "succeeded", "failed")
    db.close()
    say("kill: restarting PostgreSQL")
    began = time.monotonic()
    restart()
    back = time.monotonic()
    report.restart = (began, back)
    while _count(db, "succeeded", "failed") <= before:
        if time.monotonic() - back > 120:
            return
        time.sleep(0.02)
    report.recovery_s = time.monotonic() - back


def _replace_exited(
    procs: Processes,
    live: list[subprocess.Popen[bytes]],
    env: dict[str, str],
    concurrency: int,
    report: ChaosReport,
) -> None:
    """A worker that left by itself (e.g. exit 3, declared dead) is replaced, as systemd would.

    A non-zero exit means its tasks were (or will be) reclaimed and run again elsewhere.
    """
    for p in list(live):
        code = p.poll()
        if code is not None:
            report.own_exits[code] = report.own_exits.get(code, 0) + 1
            if code != 0:
                report.cut_short_pids.add(p.pid)
            live.remove(p)
            live.append(procs.worker(env, concurrency))


def _kill(db: Db, victim: subprocess.Popen[bytes]) -> Kill:
    wid = db.one(
        "SELECT id FROM angela_queue.workers WHERE pid = %s ORDER BY id DESC LIMIT 1",
        (victim.pid,),
    )
    victim.kill()
    victim.wait()
    at = time.monotonic()
    worker_id = None if wid is None else int(wid)
    orphaned = db.rows(
        "SELECT id FROM angela_queue.tasks WHERE status = 'running' AND worker_id = %s",
        (worker_id,),
    )
    return Kill(at, worker_id, [int(r[0]) for r in orphaned])


def _measure_reclaims(db: Db, kills: list[Kill]) -> None:
    for k in kills:
        if not k.task_ids or k.reclaimed_after_s is not None:
            continue
        still = db.one(
            "SELECT count(*) FROM angela_queue.tasks"
            " WHERE id = ANY(%s) AND status = 'running' AND worker_id = %s",
            (k.task_ids, k.worker_id),
        )
        if still == 0:
            k.reclaimed_after_s = time.monotonic() - k.at


def _count(db: Db, *statuses: str) -> int:
    return int(
        db.one("SELECT count(*) FROM angela_queue.tasks WHERE status = ANY(%s)", (list(statuses),))
    )


def _tally(db: Db, report: ChaosReport) -> None:
    report.succeeded = _count(db, "succeeded")
    report.failed = _count(db, "failed")
    report.lost = report.tasks - report.succeeded
    dup, extra = db.rows(
        "SELECT count(*) FILTER (WHERE n > 1), coalesce(sum(n - 1), 0)"
        " FROM (SELECT count(*) AS n FROM chaos_runs GROUP BY task_id) r"
    )[0]
    report.duplicates, report.extra_runs = int(dup), int(extra)
    # Every run but a task's last was cut short; its process must be one the harness killed
    # or one that exited declaring itself dead (the heartbeat lagged past the timeout).
    report.unexplained_reruns = int(
        db.one(
            "SELECT count(*) FROM chaos_runs r"
            " WHERE EXISTS (SELECT 1 FROM chaos_runs later WHERE later.task_id = r.task_id"
            "                  AND (later.at, later.attempt) > (r.at, r.attempt))"
            "   AND r.pid <> ALL(%s)",
            (sorted(report.cut_short_pids),),
        )
    )
    dup_fx, missing_fx = db.rows(
        "SELECT count(*) FILTER (WHERE coalesce(e.n, 0) > 1),"
        "       count(*) FILTER (WHERE t.status = 'succeeded' AND coalesce(e.n, 0) = 0)"
        "  FROM angela_queue.tasks t"
        "  LEFT JOIN (SELECT task_id, count(*) AS n FROM chaos_effects GROUP BY task_id) e"
        "    ON e.task_id = t.id"
        " WHERE t.kind = %s",
        (TX,),
    )[0]
    report.duplicate_effects, report.missing_effects = int(dup_fx), int(missing_fx)
    report.stale_writes = stale_writes(db)
