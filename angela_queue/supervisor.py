"""Supervisor: keeps this host's worker processes in line with the backlog (DESIGN.md §6).

``run_once`` is one decision, for cron: take the host's lock, check the workers the
database knows against the process table (dead ones are marked, stuck or wedged ones
killed), read the backlog, decide (scaling.desired_workers), then start detached workers
or ask the idlest to stop. Started workers are in their own session, so they outlive a
cron-run supervisor; the next run finds them through the workers table.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from angela_queue.client import connect
from angela_queue.scaling import Decision, ScalingPolicy, desired_workers
from angela_queue.settings import Settings
from angela_queue.store import TaskStore

log = logging.getLogger("angela_queue.supervisor")
PENDING_CAP = 100_000


@dataclass
class SupervisorConfig:
    """What the supervisor runs: an app spec, its queues, and the scaling numbers."""

    app_spec: str
    queues: tuple[str, ...]
    settings: Settings
    concurrency: int | None = None
    log_dir: Path = field(
        default_factory=lambda: Path(
            os.environ.get(
                "ANGELA_QUEUE_LOG_DIR", Path("/tmp") / f"angela-queue-{os.getuid()}" / "logs"
            )
        )
    )

    @property
    def policy(self) -> ScalingPolicy:
        s = self.settings
        return ScalingPolicy(
            base_workers=s.base_workers,
            min_workers=s.min_workers,
            max_workers=s.max_workers,
            scale_up_threshold=s.scale_up_threshold,
            scale_down_threshold=s.scale_down_threshold,
            max_spawn_per_check=s.max_spawn_per_check,
        )


@dataclass
class RunResult:
    """What one check did."""

    acted: bool
    decision: Decision | None = None
    started: list[int] = field(default_factory=list)
    stop_requested: list[int] = field(default_factory=list)
    killed: list[int] = field(default_factory=list)
    marked_dead: list[int] = field(default_factory=list)


class Supervisor:
    """One host's supervisor. Only processes that are angela-queue workers of this host are
    ever signalled: each pid is checked against its command line and start time."""

    def __init__(self, config: SupervisorConfig, dsn: str) -> None:
        self.config = config
        self.dsn = dsn
        self.hostname = socket.gethostname()
        self.children: dict[int, subprocess.Popen[bytes]] = {}
        self.registered: set[int] = set()  # children seen in the workers table

    def run_once(self) -> RunResult:
        """One check in one transaction, which holds the host's lock (pooler-safe)."""
        with connect(self.dsn) as conn, conn.transaction():
            store = TaskStore(conn)
            if not store.supervisor_lock(self.hostname):
                log.info("another supervisor is acting on host %s; skipping", self.hostname)
                return RunResult(acted=False)
            return self._check(store)

    def _check(self, store: TaskStore) -> RunResult:
        result = RunResult(acted=True)
        live: list[dict[str, Any]] = []
        for row in store.worker_list_host(self.hostname):
            proc = self._worker_process(row)
            if proc is None:
                store.worker_mark_dead(row["id"])
                result.marked_dead.append(row["id"])
                log.warning("worker %s (pid %s) is gone: marked dead", row["id"], row["pid"])
            elif self._is_stuck(row, proc):
                self._kill(proc, row)
                store.worker_mark_dead(row["id"])
                result.killed.append(row["id"])
            else:
                live.append(row)
        self._reap_children()
        # Only the workers of this supervisor's queues are counted and may be asked to stop:
        # another supervisor of the same host may serve other queues.
        queues = self.config.queues
        live = [w for w in live if set(w["queues"]) == set(queues)]
        # Workers this process started that never registered yet (Python still starting)
        # count too, or a check soon after a spawn would start the same workers again. One
        # seen registered once no longer counts here, also while it exits after a stop.
        self.registered.update(int(row["pid"]) for row in live)
        starting = [pid for pid in self.children if pid not in self.registered]
        pending = store.queue_count_ready(queues, PENDING_CAP)
        at_risk = store.supervisor_tiers_at_risk(queues)
        active = [w for w in live if not w["stop_requested"]]
        decision = desired_workers(
            len(active) + len(starting),
            pending,
            self.config.policy,
            tier_at_risk=at_risk[0] if at_risk else None,
        )
        result.decision = decision
        if decision.target > decision.current:
            result.started = [self._spawn() for _ in range(decision.target - decision.current)]
        elif decision.target < decision.current:
            for row in _idlest(active)[: decision.current - decision.target]:
                store.worker_request_stop(row["id"])
                result.stop_requested.append(row["id"])
        log.info(
            "supervisor %s: pending=%d workers=%d target=%d action=%s (%s)%s",
            self.hostname,
            pending,
            decision.current,
            decision.target,
            decision.action,
            decision.reason,
            _extras(result),
        )
        store.decision_insert(
            {
                "hostname": self.hostname,
                "pending": pending,
                "workers": decision.current,
                "target": decision.target,
                "action": decision.action + _extras(result),
                "reason": decision.reason,
            }
        )
        return result

    # -- processes ----------------------------------------------------------------------------

    def _worker_process(self, row: dict[str, Any]) -> psutil.Process | None:
        """The live process of a worker row, or None when the pid is gone or is not it."""
        try:
            proc = psutil.Process(int(row["pid"]))
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            started: datetime = row["started_at"]
            # A pid reused by a later process is not our worker.
            if proc.create_time() > started.timestamp() + 5:
                return None
            return proc if is_worker_command(proc.cmdline()) else None
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return None

    def _is_stuck(self, row: dict[str, Any], proc: psutil.Process) -> bool:
        if row["status"] == "stuck":
            return True
        timeout = self.config.settings.heartbeat_timeout_s
        return row["heartbeat_age_s"] is not None and row["heartbeat_age_s"] > timeout

    def _kill(self, proc: psutil.Process, row: dict[str, Any]) -> None:
        grace = self.config.settings.supervisor_kill_grace_s
        log.warning(
            "worker %s (pid %s) is %s (heartbeat %.0f s ago): SIGTERM, SIGKILL after %.0f s",
            row["id"],
            proc.pid,
            row["status"],
            row["heartbeat_age_s"],
            grace,
        )
        try:
            if proc.status() == psutil.STATUS_STOPPED:
                proc.kill()  # a stopped process cannot handle SIGTERM
            else:
                proc.terminate()
                try:
                    proc.wait(grace)
                except psutil.TimeoutExpired:
                    proc.kill()
            proc.wait(10)
        except psutil.NoSuchProcess:
            pass
        except psutil.TimeoutExpired:
            log.error("worker pid %s survived SIGKILL for 10 s", proc.pid)

    def _spawn(self) -> int:
        self.config.log_dir.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        log_path = self.config.log_dir / f"worker-{stamp}-{len(self.children)}.log"
        command = [
            sys.executable,
            "-m",
            "angela_queue.cli",
            "worker",
            "--app",
            self.config.app_spec,
        ]
        for queue in self.config.queues:
            command += ["--queue", queue]
        if self.config.concurrency:
            command += ["--concurrency", str(self.config.concurrency)]
        # The DSN goes through the environment: a command line is visible to every user.
        env = {**os.environ, "ANGELA_QUEUE_DSN": self.dsn}
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=os.getcwd(),
                start_new_session=True,
                close_fds=True,
            )
        self.children[proc.pid] = proc
        log.info("started worker pid %s (log %s)", proc.pid, log_path)
        return proc.pid

    def _reap_children(self) -> None:
        for pid, proc in list(self.children.items()):
            if proc.poll() is not None:
                del self.children[pid]
                self.registered.discard(pid)

    def stop_children(self, grace_s: float) -> None:
        """Ask the workers this process started to stop (SIGTERM: graceful), then wait."""
        for proc in self.children.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for proc in self.children.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
        self.children.clear()


def is_worker_command(cmdline: Sequence[str]) -> bool:
    """Whether a command line is an angela-queue worker (pure)."""
    joined = " ".join(cmdline)
    return "worker" in cmdline and ("angela_queue.cli" in joined or "angela-queue" in joined)


def _idlest(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Idle workers first, the longest idle first; busy ones last."""
    epoch = datetime.min.replace(tzinfo=UTC)
    return sorted(
        rows,
        key=lambda r: (
            r["status"] != "idle",
            r["current_task_id"] is not None,
            r["last_active_at"] or epoch,
        ),
    )


def _extras(result: RunResult) -> str:
    parts = []
    if result.marked_dead:
        parts.append(f"{len(result.marked_dead)} gone marked dead")
    if result.killed:
        parts.append(f"{len(result.killed)} stuck killed")
    return "; " + ", ".join(parts) if parts else ""


def run_forever(supervisor: Supervisor, interval_s: float, stop: Any) -> None:
    """Check every ``interval_s`` until ``stop`` (a threading.Event) is set."""
    while not stop.is_set():
        try:
            supervisor.run_once()
        except Exception as exc:  # keep supervising through a database outage
            log.error("supervisor check failed: %s", str(exc).strip().splitlines()[0])
        stop.wait(interval_s)
