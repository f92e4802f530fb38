"""Scenarios ``zombie``, ``listener``, ``poison`` and ``reapers`` (see scripts/chaos.py)."""

from __future__ import annotations

import functools
import os
import re
import signal
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from angela_queue import App
from scripts.chaos_app import NOOP, POISON, POISON_EXIT_CODE, TX, WORK
from scripts.chaos_lib import (
    Db,
    Result,
    percentile,
    prepare,
    processes,
    stale_writes,
    wait_until,
    worker_env,
    worker_id_of,
)

HEARTBEAT_S = 0.5
HEARTBEAT_TIMEOUT_S = 2.0
EXIT_DECLARED_DEAD = 3


# -- zombie ---------------------------------------------------------------------------------


def run_zombie(dsn: str, logs: Path) -> Result:
    """SIGSTOP a worker mid-task past the heartbeat timeout, let another rerun its tasks, SIGCONT.

    Worker A runs a ``chaos.tx`` task (its effect row commits with its completion) and a
    ``chaos.work`` task (its result names the process). Both sleep 4 s. A is stopped, B
    starts, a reaper declares A dead, B reruns and finishes both; then A resumes, its
    handlers return and try to complete. The database must show only B's work.
    """
    prepare(dsn)
    result = Result("zombie")
    db = Db(dsn)
    env = worker_env(dsn, HEARTBEAT_S, HEARTBEAT_TIMEOUT_S)
    producer = App(dsn=dsn)
    try:
        tx_id = producer.enqueue(TX, {"ms": 4000}, max_attempts=5)
        work_id = producer.enqueue(WORK, {"ms": 4000}, max_attempts=5)
    finally:
        producer.close()
    ids = [tx_id, work_id]
    with processes(logs) as procs:
        a = procs.worker(env, 2)
        a_id = worker_id_of(db, a.pid)
        running = wait_until(
            lambda: (
                db.one(
                    "SELECT count(*) FROM angela_queue.tasks WHERE id = ANY(%s)"
                    " AND status = 'running' AND worker_id = %s",
                    (ids, a_id),
                )
                == 2
            ),
            30,
        )
        time.sleep(0.3)  # both handlers are in their sleep now
        os.kill(a.pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        b = procs.worker(env, 2)
        b_id = worker_id_of(db, b.pid)
        finished = wait_until(
            lambda: (
                db.one(
                    "SELECT count(*) FROM angela_queue.tasks WHERE id = ANY(%s)"
                    " AND status = 'succeeded'",
                    (ids,),
                )
                == 2
            ),
            60,
        )
        paused_s = time.monotonic() - stopped_at
        os.kill(a.pid, signal.SIGCONT)
        try:
            a_code: int | None = a.wait(30)
        except subprocess.TimeoutExpired:
            a_code = None
        time.sleep(1.0)  # any late write of A would have landed by now
        a_log = procs.log_of(a)
    rows = db.rows(
        "SELECT id, status, worker_id, attempts, result->>'pid' FROM angela_queue.tasks"
        " WHERE id = ANY(%s) ORDER BY id",
        (ids,),
    )
    effects = db.rows(
        "SELECT attempt, pid FROM chaos_effects WHERE task_id = %s ORDER BY at", (tx_id,)
    )
    succeeded_twice = int(
        db.one(
            "SELECT count(*) FROM (SELECT task_id FROM chaos_transitions"
            " WHERE new_status = 'succeeded' GROUP BY task_id HAVING count(*) > 1) d"
        )
    )
    stale = stale_writes(db)
    db.close()
    b_rows = [r for r in rows if r[1] == "succeeded" and r[2] == b_id and r[3] == 2]
    b_pid_results = [r for r in rows if r[4] == str(b.pid)]
    rolled_back = "reclaimed while running; its writes were rolled back" in a_log
    late_ignored = f"late result of task {work_id} ignored" in a_log
    result.lines = [
        f"worker A (id {a_id}) stopped {paused_s:.1f} s with tasks {tx_id} (transactional) "
        f"and {work_id}; worker B (id {b_id}) reran them",
        "tasks after SIGCONT: "
        + "; ".join(
            f"{r[0]}: {r[1]}, worker {r[2]}, attempt {r[3]}, result pid {r[4]}" for r in rows
        ),
        f"effect rows of task {tx_id}: {len(effects)} "
        f"({', '.join(f'attempt {e[0]} by pid {e[1]}' for e in effects)})",
        f"A's log: transactional writes rolled back: {'yes' if rolled_back else 'no'}; "
        f"late result ignored: {'yes' if late_ignored else 'no'}; A exited {a_code} "
        f"(3 = declared dead)",
        f"stale writes (changes to finished tasks): {stale}; tasks completed twice: "
        f"{succeeded_twice}",
    ]
    result.figures = {
        "paused_s": round(paused_s, 1),
        "stale_writes": stale,
        "completed_twice": succeeded_twice,
        "effect_rows": len(effects),
        "zombie_exit_code": a_code,
    }
    result.promise("A held both tasks when it was stopped", bool(running))
    result.promise("B finished both tasks while A was stopped", bool(finished))
    result.promise(
        "0 stale writes accepted: result, owner and attempt are B's (attempt 2)",
        stale == 0 and succeeded_twice == 0 and len(b_rows) == 2 and len(b_pid_results) == 2,
    )
    result.promise(
        "the transactional effect exists once, B's",
        len(effects) == 1 and effects[0][1] == b.pid,
    )
    result.promise(
        "A's late completions were refused (logged) and A left as declared dead (exit 3)",
        rolled_back and late_ignored and a_code == EXIT_DECLARED_DEAD,
    )
    return result


# -- listener -------------------------------------------------------------------------------

LISTENER_SQL = (
    "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
    " AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
    " AND query ILIKE %s ORDER BY backend_start DESC"
)
LISTEN_PATTERN = "%LISTEN angela_queue%"
POLL_IDLE_S = 1.0
CLAIM_MARGIN_S = 0.25
RELISTEN_BOUND_S = 5.0


def run_listener(dsn: str, logs: Path, *, quick: bool) -> Result:
    """Kill the worker's LISTEN backend while a task arrives every 0.1 s (see chaos.py)."""
    prepare(dsn)
    result = Result("listener")
    db = Db(dsn)
    env = worker_env(
        dsn, HEARTBEAT_S, HEARTBEAT_TIMEOUT_S, ANGELA_QUEUE_POLL_IDLE_S=str(POLL_IDLE_S)
    )
    # One single cut, then stretches during which every new LISTEN backend is killed at once.
    cuts = [0.0, 2.0] if quick else [0.0, 0.0, 5.0, 5.0]
    outages: list[tuple[Any, Any]] = []  # database-clock windows without a listener
    relisten_s: list[float] = []
    stop = threading.Event()
    with processes(logs) as procs:
        w = procs.worker(env, 4)
        worker_id_of(db, w.pid)
        wait_until(lambda: db.rows(LISTENER_SQL, (LISTEN_PATTERN,)), 30)
        producer = threading.Thread(target=_trickle, args=(dsn, stop), daemon=True)
        producer.start()
        time.sleep(3.0)  # a healthy stretch first
        for sustain_s in cuts:
            took, outage = _cut(db, sustain_s)
            relisten_s.append(took)
            outages.append(outage)
            time.sleep(2.0)
        stop.set()
        producer.join()
        wait_until(
            lambda: (
                db.one("SELECT count(*) FROM angela_queue.tasks WHERE status <> 'succeeded'") == 0
            ),
            15,
        )
        log = procs.log_of(w)
    unfinished = int(db.one("SELECT count(*) FROM angela_queue.tasks WHERE status <> 'succeeded'"))
    waits = db.rows(
        "SELECT enqueued_at, extract(epoch FROM first_started_at - enqueued_at)::float8"
        " FROM angela_queue.tasks WHERE first_started_at IS NOT NULL"
    )
    db.close()
    during = [w_ for at, w_ in waits if any(a <= at <= b for a, b in outages)]
    healthy = [w_ for at, w_ in waits if not any(a <= at <= b for a, b in outages)]
    logged = log.count("listener connection lost")
    during_s = sum((b - a).total_seconds() for a, b in outages)
    bound = POLL_IDLE_S + CLAIM_MARGIN_S
    problems = result.lines
    result.lines = [
        f"{len(waits)} tasks at 20/s; LISTEN backend cut {len(relisten_s)} times "
        f"(sustained for {', '.join(f'{c:g}' for c in cuts)} s)",
        "LISTEN re-established after "
        + ", ".join(f"{x:.2f}" for x in relisten_s)
        + f" s (worker logged the loss {logged} times)",
        f"waits with a listener: p50 {percentile(healthy, 50) * 1000:.0f} ms, p99 "
        f"{percentile(healthy, 99) * 1000:.0f} ms, max {max(healthy, default=0) * 1000:.0f} ms",
        f"waits without one ({during_s:.1f} s in all, {len(during)} tasks enqueued): max "
        f"{max(during, default=0) * 1000:.0f} ms (poll interval {POLL_IDLE_S:g} s)",
        *problems,
    ]
    result.figures = {
        "cuts": len(relisten_s),
        "relisten_max_s": round(max(relisten_s, default=0), 2),
        "wait_p99_healthy_ms": round(percentile(healthy, 99) * 1000),
        "wait_max_during_outage_ms": round(max(during, default=0) * 1000),
        "tasks_during_outage": len(during),
    }
    result.promise(
        f"LISTEN re-established within {RELISTEN_BOUND_S:g} s every time",
        len(relisten_s) == len(cuts) and max(relisten_s) <= RELISTEN_BOUND_S,
    )
    result.promise(
        f"meanwhile no task waited longer than one poll interval + {CLAIM_MARGIN_S:g} s",
        max(during, default=0) <= bound,
    )
    result.promise(f"every task succeeded ({unfinished} did not)", unfinished == 0 and bool(waits))
    return result


def _cut(db: Db, sustain_s: float) -> tuple[float, tuple[Any, Any]]:
    """Kill the LISTEN backend (and, for ``sustain_s``, each one that replaces it); returns
    the time from the last kill to a new LISTEN, and the outage on the database clock."""
    cut_at = db.one("SELECT clock_timestamp()")
    until = time.monotonic() + sustain_s
    give_up = until + 30  # no LISTEN backend to kill at all: report it, never hang
    killed: set[int] = set()
    while True:
        for (pid,) in db.rows(LISTENER_SQL, (LISTEN_PATTERN,)):
            if pid not in killed:
                db.one("SELECT pg_terminate_backend(%s)", (pid,))
                killed.add(pid)
        if (killed and time.monotonic() >= until) or time.monotonic() > give_up:
            break
        time.sleep(0.005)
    if not killed:
        return float("inf"), (cut_at, db.one("SELECT clock_timestamp()"))
    last = time.monotonic()

    def relistened() -> bool:
        return any(pid not in killed for (pid,) in db.rows(LISTENER_SQL, (LISTEN_PATTERN,)))

    back = wait_until(relistened, 30, 0.01)
    took = time.monotonic() - last if back else float("inf")
    return took, (cut_at, db.one("SELECT clock_timestamp()"))


def _trickle(dsn: str, stop: threading.Event) -> None:
    """One task every 0.05 s until ``stop``."""
    producer = App(dsn=dsn)
    try:
        while not stop.is_set():
            producer.enqueue(NOOP, {})
            stop.wait(0.05)
    finally:
        producer.close()


# -- poison ---------------------------------------------------------------------------------

POISON_FLOW_BOUND = 0.6


def run_poison(dsn: str, logs: Path, *, quick: bool) -> Result:
    """A poison pill among ordinary tasks; dead workers are replaced (see chaos.py).

    Throughput is measured on the database clock: ordinary tasks finished per second from
    the first start to the last finish without the pill, and from the first start to the
    pill's end (or the last ordinary finish, if earlier) beside it: the window where the
    pill costs something. There, each death takes one of the four worker processes away
    for its restart (about 1.5 s on a loaded 2-core machine) and cuts its other running
    tasks short (they run again once reclaimed), hence a bound below 100 %.
    """
    prepare(dsn)
    result = Result("poison")
    db = Db(dsn)
    env = worker_env(dsn, HEARTBEAT_S, HEARTBEAT_TIMEOUT_S)
    n = 800 if quick else 3000
    workers = 4
    with processes(logs) as procs:
        base_ids, _, _ = _flow(db, dsn, procs, env, workers, n, poison=False)
        ids, deaths, pill = _flow(db, dsn, procs, env, workers, n, poison=True)
    row = db.rows(
        "SELECT status, attempts, max_attempts FROM angela_queue.tasks WHERE id = %s", (pill,)
    )[0]
    others_ok = int(
        db.one(
            "SELECT count(*) FROM angela_queue.tasks WHERE kind = %s AND status = 'succeeded'",
            (WORK,),
        )
    )
    base_rate, base_window = _rate(db, base_ids, None)
    rate, window = _rate(db, ids, pill)
    db.close()
    ratio = rate / base_rate if base_rate else 0.0
    result.lines = [
        f"{n} ordinary tasks (U[50, 150] ms) on {workers} workers × 4: {base_rate:.0f}/s alone "
        f"(over {base_window:.1f} s), {rate:.0f}/s beside the poison pill (over the "
        f"{window:.1f} s it lived): {ratio * 100:.0f} %",
        f"poison pill: {row[0]} after {row[1]}/{row[2]} attempts; worker deaths "
        f"{deaths.get(POISON_EXIT_CODE, 0)} (exit codes: {deaths or 'none'})",
        f"ordinary tasks succeeded: {others_ok}/{2 * n}",
    ]
    result.figures = {
        "poison_status": row[0],
        "poison_attempts": row[1],
        "worker_deaths": sum(deaths.values()),
        "others_rate_alone_per_s": round(base_rate),
        "others_rate_beside_poison_per_s": round(rate),
        "others_throughput_ratio": round(ratio, 2),
    }
    result.promise(
        "the poison pill is failed after exactly max_attempts worker deaths",
        row[0] == "failed" and row[1] == row[2] and deaths == {POISON_EXIT_CODE: row[2]},
    )
    result.promise("every other task succeeded", others_ok == 2 * n)
    result.promise(
        f"the others keep flowing: at least {POISON_FLOW_BOUND:.0%} of their throughput "
        f"without the pill, over the pill's whole life",
        ratio >= POISON_FLOW_BOUND,
    )
    return result


def _rate(db: Db, ids: list[int], pill: int | None) -> tuple[float, float]:
    """Ordinary tasks finished per second, and the window it was measured over."""
    row = db.rows(
        "WITH w AS ("
        "  SELECT least(max(finished_at) FILTER (WHERE id <> ALL(%s)),"
        "               max(finished_at) FILTER (WHERE id = %s)) AS until,"
        "         min(first_started_at) AS since"
        "    FROM angela_queue.tasks WHERE id = ANY(%s) OR id = %s)"
        " SELECT extract(epoch FROM w.until - w.since)::float8,"
        "        (SELECT count(*) FROM angela_queue.tasks t"
        "          WHERE t.id = ANY(%s) AND t.status = 'succeeded' AND t.finished_at <= w.until)"
        "   FROM w",
        ([pill or 0], pill or 0, ids, pill or 0, ids),
    )[0]
    window, done = float(row[0] or 0), int(row[1] or 0)
    return (done / window if window else 0.0), window


def _flow(
    db: Db,
    dsn: str,
    procs: Any,
    env: dict[str, str],
    workers: int,
    n: int,
    *,
    poison: bool,
) -> tuple[list[int], dict[int, int], int]:
    """Run ``n`` ordinary tasks (plus the pill) to the end, replacing workers that die;
    returns the ordinary tasks' ids, the exit codes of the deaths, and the pill's id."""
    import random

    rand = random.Random(7)
    producer = App(dsn=dsn)
    try:
        pill = producer.enqueue(POISON, {}, max_attempts=3) if poison else 0
        ids = [
            int(e.id or 0)
            for e in producer.enqueue_many(
                [{"kind": WORK, "payload": {"ms": rand.randint(50, 150)}} for _ in range(n)]
            )
        ]
    finally:
        producer.close()
    live = [procs.worker(env, 4) for _ in range(workers)]
    deaths: dict[int, int] = {}
    start = time.monotonic()
    while time.monotonic() - start < 300:
        for p in list(live):
            code = p.poll()
            if code is not None:
                deaths[code] = deaths.get(code, 0) + 1
                live.remove(p)
                live.append(procs.worker(env, 4))
        left = db.one(
            "SELECT count(*) FROM angela_queue.tasks"
            " WHERE (id = ANY(%s) OR id = %s) AND status NOT IN ('succeeded', 'failed')",
            (ids, pill),
        )
        if left == 0:
            break
        time.sleep(0.05)
    for p in live:
        p.terminate()
    for p in live:
        p.wait(30)
    return ids, deaths, pill


# -- reapers --------------------------------------------------------------------------------

REAPER_HEARTBEAT_S = 0.3
REAPER_TIMEOUT_S = 1.5

FABRICATE = """
WITH fake AS (
    INSERT INTO angela_queue.workers (hostname, pid, queues, kinds, concurrency, status,
                                      heartbeat_at)
    SELECT 'chaos-expired', 0, ARRAY['default'], ARRAY['chaos.noop'], 4, 'active',
           now() - interval '1 hour'
      FROM generate_series(1, %(workers)s)
    RETURNING id
), numbered AS (
    SELECT id, row_number() OVER (ORDER BY id) - 1 AS n FROM fake
), leased AS (
    SELECT t.id, (SELECT id FROM numbered WHERE n = t.rn %% %(workers)s) AS worker_id,
           t.rn %% 5 = 0 AS last_attempt
      FROM (SELECT id, row_number() OVER (ORDER BY id) AS rn
              FROM angela_queue.tasks WHERE id = ANY(%(ids)s)) t
)
UPDATE angela_queue.tasks t
   SET status = 'running', worker_id = l.worker_id, started_at = now() - interval '1 hour',
       attempts = CASE WHEN l.last_attempt THEN t.max_attempts ELSE 1 END
  FROM leased l
 WHERE t.id = l.id
"""


def run_reapers(dsn: str, logs: Path, *, quick: bool) -> Result:
    """Many reapers race over rounds of expired leases (see chaos.py)."""
    prepare(dsn)
    result = Result("reapers")
    db = Db(dsn)
    reapers, rounds, per_round, fake_workers = (8, 3, 300, 10) if quick else (8, 10, 1000, 20)
    env = worker_env(dsn, REAPER_HEARTBEAT_S, REAPER_TIMEOUT_S)
    round_s: list[float] = []
    with processes(logs) as procs:
        # 3 `angela-queue reap` (1,000 rows per statement), the others taking 20 rows
        # at a time, so that they interleave within a round.
        cli = ["reap", "--interval", "0.05", "--heartbeat-timeout", str(REAPER_TIMEOUT_S)]
        small = [dsn, str(REAPER_TIMEOUT_S), "0.05", "20"]
        reaper_procs = [
            procs.start([*cli, "--log-level", "INFO"], env, "reaper")
            if i < 3
            else procs.start(small, env, "reaper-small", module="scripts.chaos_reaper")
            for i in range(reapers)
        ]
        live = [procs.worker(env, 4) for _ in range(2)]
        live_ids = [worker_id_of(db, p.pid) for p in live]
        time.sleep(REAPER_TIMEOUT_S + 1.5)  # every reaper is connected and judging by now
        producer = App(dsn=dsn)
        later = datetime.now(UTC) + timedelta(hours=1)
        try:
            for _ in range(rounds):
                # Scheduled an hour ahead, so that no live worker claims them before they
                # become leases held by workers silent for an hour (one statement).
                ids = [
                    int(e.id or 0)
                    for e in producer.enqueue_many(
                        [{"kind": NOOP, "payload": {}, "run_at": later} for _ in range(per_round)]
                    )
                ]
                began = time.monotonic()
                db.rows(FABRICATE, {"workers": fake_workers, "ids": ids})
                wait_until(functools.partial(_no_leases_left, db, ids), 60)
                round_s.append(time.monotonic() - began)
        finally:
            producer.close()
        wait_until(
            lambda: (
                db.one(
                    "SELECT count(*) FROM angela_queue.tasks WHERE status IN ('pending', 'running')"
                )
                == 0
            ),
            60,
        )
        for p in reaper_procs:
            p.terminate()
        for p in reaper_procs:
            p.wait(30)
        reaper_logs = [procs.log_of(p) for p in reaper_procs]
    leases = rounds * per_round
    per_lease = db.rows(
        "SELECT count(*) FROM chaos_transitions c JOIN angela_queue.workers w"
        "  ON w.id = c.old_worker"
        " WHERE w.hostname = 'chaos-expired' AND c.old_status = 'running'"
        " GROUP BY c.task_id, c.old_attempts"
    )
    reclaimed = sum(int(r[0]) for r in per_lease)
    double = sum(1 for r in per_lease if int(r[0]) > 1)
    false_reclaims = int(
        db.one(
            "SELECT count(*) FROM chaos_transitions WHERE old_status = 'running'"
            " AND new_status IN ('pending', 'failed') AND old_worker = ANY(%s)"
            " AND last_error LIKE 'Reclaimed%%'",
            (live_ids,),
        )
    )
    deaths = db.rows(
        "SELECT count(*) FROM chaos_worker_deaths d JOIN angela_queue.workers w"
        " ON w.id = d.worker_id WHERE w.hostname = 'chaos-expired' GROUP BY d.worker_id"
    )
    stale = stale_writes(db)
    db.close()
    by_log = [
        sum(int(n) for n in re.findall(r"(\d+) task\(s\) reclaimed", log)) for log in reaper_logs
    ]
    active = sum(1 for n in by_log if n)
    result.lines = [
        f"{reapers} reaper processes + 2 workers (every worker reaps too); {rounds} rounds of "
        f"{per_round} expired leases under {fake_workers} silent workers",
        f"reclaims {reclaimed}/{leases}; leases reclaimed twice: {double}; live workers' "
        f"tasks reclaimed: {false_reclaims}; stale writes: {stale}",
        f"silent workers marked dead: {len(deaths)}/{rounds * fake_workers}, "
        f"twice: {sum(1 for d in deaths if int(d[0]) > 1)}",
        f"reaper processes that reclaimed something: {active}/{reapers} "
        f"(their logs add up to {sum(by_log)}); a round took at most "
        f"{max(round_s, default=0):.2f} s",
    ]
    result.figures = {
        "leases": leases,
        "reclaimed": reclaimed,
        "double_reclaims": double,
        "false_reclaims": false_reclaims,
        "stale_writes": stale,
        "reapers_active": active,
        "round_max_s": round(max(round_s, default=0), 2),
    }
    result.promise(
        "each expired lease reclaimed exactly once (0 double, 0 missed)",
        reclaimed == leases and double == 0 and len(per_lease) == leases,
    )
    result.promise(
        "each silent worker marked dead once",
        len(deaths) == rounds * fake_workers and all(int(d[0]) == 1 for d in deaths),
    )
    result.promise(
        "no live worker's task reclaimed, 0 stale writes", false_reclaims == 0 and stale == 0
    )
    return result


def _no_leases_left(db: Db, ids: list[int]) -> bool:
    left = db.one(
        "SELECT count(*) FROM angela_queue.tasks t"
        " JOIN angela_queue.workers w ON w.id = t.worker_id"
        " WHERE t.id = ANY(%s) AND t.status = 'running' AND w.hostname = 'chaos-expired'",
        (ids,),
    )
    return int(left) == 0
