"""What the demo shows: the live view and the summary, read with plain SQL.

Everything here is a query an operator could type on ``angela_queue.tasks``, ``workers``
and ``supervisor_decisions`` (DESIGN.md §1: the database is the API), rendered with rich: a
live panel on a terminal, one line every two seconds in logs and CI, and tables for the
summary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import class_row
from rich import box
from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table

from angela_queue.demo.app import QUEUE, WORK_S

PLAN_TASKS_PER_S = (10.0, 15.0)  # the seed plan's expectation for this setup
TIERS = ("critical", "high", "medium", "low")
TARGET = {"critical": "≤ 1 s", "high": "≤ 1 min", "medium": "≤ 5 min", "low": "≤ 30 min"}

RULES = """
SELECT name, boost, predicate::text FROM angela_queue.boost_rules
 WHERE enabled ORDER BY boost DESC, name"""
# What the insert trigger made of the rules: analyses per boost.
BOOSTS = """
SELECT boost, count(*) FROM angela_queue.tasks
 WHERE queue = %(queue)s AND kind = 'conversation.analyze' GROUP BY boost ORDER BY boost DESC"""
TIER_COUNTS = """
SELECT tier, count(*) FILTER (WHERE status = 'pending'),
       count(*) FILTER (WHERE status = 'running'),
       count(*) FILTER (WHERE status = 'succeeded'),
       count(*) FILTER (WHERE status IN ('failed', 'cancelled', 'dropped'))
  FROM angela_queue.tasks WHERE queue = %(queue)s GROUP BY tier"""
# The effective priority the claim saw, from public columns: base + aging_rate × minutes.
STARTED = """
SELECT t.id, t.kind, t.priority, t.boost, t.tier, coalesce(t.worker_id, 0) AS worker_id,
       extract(epoch FROM t.started_at - t.enqueued_at)::float8 AS waited_s,
       (greatest(1, least(10, t.priority + t.boost))
        + q.aging_rate * extract(epoch FROM t.started_at - t.enqueued_at) / 60)::float8
           AS effective,
       coalesce(t.payload ->> 'note', '') AS note
  FROM angela_queue.tasks t JOIN angela_queue.queues q ON q.name = t.queue
 WHERE t.queue = %(queue)s AND t.started_at IS NOT NULL"""
WAITS_BY_TIER = """
SELECT tier, count(*), avg(w), max(w), count(*) FILTER (WHERE started_at <= deadline_at)
  FROM (SELECT tier, started_at, deadline_at,
               extract(epoch FROM started_at - enqueued_at)::float8 AS w
          FROM angela_queue.tasks
         WHERE queue = %(queue)s AND status = 'succeeded' AND NOT payload ? 'imported') s
 GROUP BY tier"""
# The drain rate while there was a backlog: the burst (with the imported tasks) from its
# first start to its last finish. The live conversations only trickle in afterwards.
BURST_AT = """(SELECT max(enqueued_at) FROM angela_queue.tasks
   WHERE queue = %(queue)s AND kind = 'conversation.analyze' AND NOT payload ? 'live')"""
THROUGHPUT = f"""
SELECT count(*), extract(epoch FROM max(finished_at) - min(started_at))::float8
  FROM angela_queue.tasks
 WHERE queue = %(queue)s AND status = 'succeeded' AND enqueued_at <= {BURST_AT}"""
LIVE_WAITS = """
SELECT count(*), avg(extract(epoch FROM started_at - enqueued_at))::float8,
       max(extract(epoch FROM started_at - enqueued_at))::float8
  FROM angela_queue.tasks
 WHERE queue = %(queue)s AND kind = 'conversation.analyze' AND payload ? 'live'"""
OVERTOOK = """
SELECT u.tier, u.priority, u.boost, extract(epoch FROM u.started_at - u.enqueued_at)::float8,
       (SELECT count(*) FROM angela_queue.tasks o
         WHERE o.queue = u.queue AND o.id <> u.id AND o.enqueued_at <= u.enqueued_at
           AND o.started_at > u.started_at)
  FROM angela_queue.tasks u WHERE u.id = %(id)s"""
RECENT = STARTED + " ORDER BY t.started_at DESC, effective, t.id DESC LIMIT 6"
FIRST = STARTED + " ORDER BY t.started_at, effective DESC, t.id LIMIT 15"
NOT_SUCCEEDED = """
SELECT count(*) FROM angela_queue.tasks WHERE queue = %(queue)s AND status <> 'succeeded'"""


# The demo's workers: this host's, serving the demo's queue, registered since it began.
DEMO_WORKERS = """
SELECT w.id, w.status, w.stop_requested, w.concurrency, w.batches_run, w.batch_tasks,
       (SELECT count(*) FROM angela_queue.tasks t
         WHERE t.status = 'running' AND t.worker_id = w.id) AS running
  FROM angela_queue.workers w
 WHERE w.hostname = %(hostname)s AND %(queue)s = ANY(w.queues) AND w.started_at >= %(since)s
 ORDER BY w.id"""
# The batch handler records its batch (the first task's id) in every task's result.
BATCHES = """
SELECT count(DISTINCT result ->> 'batch'), count(*) FROM angela_queue.tasks
 WHERE queue = %(queue)s AND status = 'succeeded' AND result ? 'batch'"""
BATCH_SIZES = """
SELECT size, count(*) FROM (
  SELECT count(*) AS size FROM angela_queue.tasks
   WHERE queue = %(queue)s AND status = 'succeeded' AND result ? 'batch'
   GROUP BY result ->> 'batch') b
 GROUP BY size ORDER BY size DESC"""
DECISIONS = """
SELECT id, extract(epoch FROM at - %(origin)s)::float8 AS at_s, pending, workers, target,
       action, reason
  FROM angela_queue.supervisor_decisions
 WHERE hostname = %(hostname)s AND at >= %(since)s ORDER BY id"""
# Slot time: a single task holds a slot from its start to its finish, a batch from its
# first task's start to its finish; workers offer `concurrency` slots while they live.
UTILISATION = """
WITH runs AS (
    SELECT min(started_at) AS s, max(finished_at) AS f FROM angela_queue.tasks
     WHERE queue = %(queue)s AND status = 'succeeded'
     GROUP BY coalesce(result ->> 'batch', id::text)
), slots AS (
    SELECT concurrency, started_at AS s,
           CASE WHEN status = 'dead' THEN heartbeat_at ELSE now() END AS f
      FROM angela_queue.workers
     WHERE hostname = %(hostname)s AND %(queue)s = ANY(queues) AND started_at >= %(since)s
)
SELECT (SELECT sum(greatest(0, extract(epoch FROM least(f, %(b)s) - greatest(s, %(a)s))))
          FROM runs)::float8,
       (SELECT sum(concurrency * greatest(0, extract(epoch FROM least(f, %(b)s)
                                                         - greatest(s, %(a)s))))
          FROM slots)::float8"""
# From the first start to the last finish, and to the last start of a task of the burst
# (while a backlog waited).
WINDOWS = f"""
SELECT min(started_at), max(finished_at),
       max(started_at) FILTER (WHERE enqueued_at <= {BURST_AT})
  FROM angela_queue.tasks WHERE queue = %(queue)s AND status = 'succeeded'"""
# Analyses that arrived one at a time (live) and met their tier's target wait.
LIVE_MET = """
SELECT count(*) FILTER (WHERE started_at <= deadline_at), count(*)
  FROM angela_queue.tasks
 WHERE queue = %(queue)s AND kind = 'conversation.analyze' AND payload ? 'live'"""


@dataclass
class Started:
    """A task as its claim saw it."""

    id: int
    kind: str
    priority: int
    boost: int
    tier: str
    worker_id: int
    waited_s: float
    effective: float
    note: str


@dataclass(frozen=True)
class Setup:
    """What the demo runs: which workers are its own, and the supervisor's numbers."""

    hostname: str
    since: datetime  # when the demo began: its workers and decisions are the later ones
    origin: datetime  # the burst: times are shown from here
    profile: str
    concurrency: int
    min_workers: int
    max_workers: int

    def params(self, **more: Any) -> dict[str, Any]:
        base = {"queue": QUEUE, "hostname": self.hostname, "since": self.since}
        return {**base, "origin": self.origin, **more}


@dataclass
class Worker:
    """One of the demo's workers, numbered in the order the supervisor started them."""

    number: int
    id: int
    status: str
    stop_requested: bool
    concurrency: int
    batches_run: int
    batch_tasks: int
    running: int


@dataclass
class Decision:
    """One row of angela_queue.supervisor_decisions."""

    id: int
    at_s: float
    pending: int
    workers: int
    target: int
    action: str
    reason: str


@dataclass
class Snapshot:
    """Counts per tier (pending, running, done, failed), the latest starts, the live
    workers, batches so far and the supervisor's decisions."""

    counts: dict[str, tuple[int, ...]] = field(default_factory=dict)
    recent: list[Started] = field(default_factory=list)
    workers: list[Worker] = field(default_factory=list)
    numbers: dict[int, int] = field(default_factory=dict)  # worker row id → number
    batches: int = 0
    batched_tasks: int = 0
    decisions: list[Decision] = field(default_factory=list)

    def total(self, column: int) -> int:
        return sum(c[column] for c in self.counts.values())


def one(conn: psycopg.Connection[Any], query: str, **params: Any) -> tuple[Any, ...]:
    """The one row of a query about the demo's queue."""
    row = conn.execute(query, {"queue": QUEUE, **params}).fetchone()
    assert row is not None
    return tuple(row)


def started(conn: psycopg.Connection[Any], query: str) -> list[Started]:
    with conn.cursor(row_factory=class_row(Started)) as cur:
        return cur.execute(query, {"queue": QUEUE}).fetchall()


def all_workers(conn: psycopg.Connection[Any], setup: Setup) -> list[Worker]:
    """Every worker of the demo, dead ones included."""
    rows = conn.execute(DEMO_WORKERS, setup.params()).fetchall()
    return [Worker(n, *row) for n, row in enumerate(rows, start=1)]


def workers(conn: psycopg.Connection[Any], setup: Setup) -> list[Worker]:
    """The demo's live workers."""
    return [w for w in all_workers(conn, setup) if w.status != "dead"]


def decisions(conn: psycopg.Connection[Any], setup: Setup) -> list[Decision]:
    with conn.cursor(row_factory=class_row(Decision)) as cur:
        return cur.execute(DECISIONS, setup.params()).fetchall()


def snapshot(conn: psycopg.Connection[Any], setup: Setup) -> Snapshot:
    """What an operator would see with plain SQL on the tables."""
    snap = Snapshot()
    for tier, *nums in conn.execute(TIER_COUNTS, {"queue": QUEUE}).fetchall():
        snap.counts[tier] = tuple(int(n) for n in nums)
    snap.recent = started(conn, RECENT)
    everyone = all_workers(conn, setup)
    snap.numbers = {w.id: w.number for w in everyone}
    snap.workers = [w for w in everyone if w.status != "dead"]
    snap.batches, snap.batched_tasks = one(conn, BATCHES)
    snap.decisions = decisions(conn, setup)
    return snap


def show_rules(console: Console, conn: psycopg.Connection[Any]) -> None:
    """The rules are data in the database; so is what they did at insert."""
    table = Table(title="boost rules (enabled)", box=box.SIMPLE_HEAD, title_justify="left")
    for col in ("rule", "boost", "predicate (jsonpath)"):
        table.add_column(col, overflow="fold")
    for name, boost, predicate in conn.execute(RULES).fetchall():
        table.add_row(name, f"{boost:+d}", predicate)
    console.print(table)
    console.print(f"  boosts the insert trigger gave the analyses: {boosts(conn)}")


def boosts(conn: psycopg.Connection[Any]) -> str:
    counts = conn.execute(BOOSTS, {"queue": QUEUE}).fetchall()
    return ", ".join(f"{b:+d} × {n}" for b, n in counts)


def decision_line(d: Decision) -> str:
    return (
        f"supervisor: {d.pending} pending, {d.workers} workers → {d.target}: "
        f"{d.action} ({d.reason})"
    )


def batch_line(snap: Snapshot) -> str:
    if not snap.batches:
        return "batches: none yet (routine consolidations wait up to 2 s for mates)"
    avg = snap.batched_tasks / snap.batches
    return (
        f"batches: {snap.batches} run, {snap.batched_tasks} consolidations, "
        f"{avg:.1f} per batch (up to 5)"
    )


def render(
    snap: Snapshot, planned: int, rate: float, elapsed: float, setup: Setup
) -> RenderableType:
    """The live view: tiers draining in order, workers and their slots, batches, the
    supervisor's decisions, and what the claims just took."""
    tiers = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for col in ("tier", "target wait", "pending", "running", "done", "progress"):
        tiers.add_column(col, justify="left" if col in ("tier", "target wait") else "right")
    for tier in TIERS:
        p, r, d, f = snap.counts.get(tier, (0, 0, 0, 0))
        bar = ProgressBar(total=max(1, p + r + d + f), completed=d + f, width=24)
        tiers.add_row(tier, TARGET[tier], str(p), str(r), str(d), bar)
    done = snap.total(2)
    progress = Table.grid(padding=(0, 2))
    progress.add_row(
        ProgressBar(total=planned, completed=done, width=40),
        f"{done}/{planned} done · {snap.total(1)} running · {rate:.1f} tasks/s · {elapsed:.1f} s",
    )
    slots = "  ".join(
        f"w{w.number} {'■' * min(w.running, w.concurrency)}"
        f"{'□' * max(0, w.concurrency - w.running)}{' (stopping)' if w.stop_requested else ''}"
        for w in snap.workers
    )
    people = (
        f"workers ({setup.profile} profile, {setup.min_workers}–{setup.max_workers}): "
        f"{len(snap.workers)}  {slots}"
    )
    recent = started_table(snap.recent, snap.numbers, "last tasks started, newest first")
    recent.show_edge = False
    parts: list[RenderableType] = [tiers, "", progress, "", people, batch_line(snap)]
    parts += [f"{d.at_s:5.1f} s  {decision_line(d)}" for d in snap.decisions[-4:]]
    return Panel(
        Group(*parts, "", recent),
        title="angela-queue demo · the assistant's learning workers",
        subtitle="Ctrl-C stops everything",
    )


def plain_line(snap: Snapshot, planned: int, rate: float, elapsed: float) -> str:
    """The live view as one line, for logs and CI (pending/running/done per tier)."""
    tiers = " ".join(
        f"{t} {'/'.join(str(n) for n in snap.counts.get(t, (0, 0, 0, 0))[:3])}" for t in TIERS
    )
    return (
        f"{elapsed:5.1f} s  {snap.total(2):3d}/{planned} done, {snap.total(1):2d} running, "
        f"{snap.total(0):3d} pending, {rate:4.1f} tasks/s | {tiers} | "
        f"{len(snap.workers)} workers, {snap.batches} batches"
    )


def fmt_wait(seconds: float) -> str:
    """Seconds for queue waits, minutes for the imported tasks' 40."""
    if seconds < 60:
        return f"{seconds:.2f} s"
    return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"


def started_table(rows: Sequence[Started], numbers: dict[int, int], title: str) -> Table:
    """Claims as the worker saw them: base priority, boost, and the aged effective value."""
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False)
    for col in ("id", "kind", "prio", "boost", "eff.", "tier", "waited", "worker", "note"):
        right = col in ("id", "prio", "boost", "eff.", "waited")
        table.add_column(col, justify="right" if right else "left", no_wrap=col != "note")
    for r in rows:
        table.add_row(
            str(r.id),
            r.kind,
            str(r.priority),
            f"{r.boost:+d}",
            f"{r.effective:.1f}",
            r.tier,
            fmt_wait(r.waited_s),
            f"w{numbers.get(r.worker_id, '?')}",
            r.note,
        )
    return table


def summary(
    console: Console, conn: psycopg.Connection[Any], setup: Setup, urgent_id: int | None
) -> bool:
    """Start order, waits by tier, batches, the supervisor's decisions, and the run against
    the seed plan. Returns True when every task succeeded."""
    c = console
    snap = snapshot(conn, setup)
    c.print()
    first = started(conn, FIRST)
    c.print(started_table(first, snap.numbers, "the order tasks started in (first 15)"))
    c.print(f"  boosts the rules gave the analyses: {boosts(conn)}")
    waits = Table(title="waits by tier", box=box.SIMPLE_HEAD, title_justify="left")
    for col in ("tier", "tasks", "avg wait", "max wait", "target", "met target"):
        waits.add_column(col, justify="left" if col == "tier" else "right")
    rows = {r[0]: r for r in conn.execute(WAITS_BY_TIER, {"queue": QUEUE}).fetchall()}
    for tier in (t for t in TIERS if t in rows):
        _, n, avg, worst, met = rows[tier]
        waits.add_row(tier, str(n), fmt_wait(avg), fmt_wait(worst), TARGET[tier], f"{met}/{n}")
    c.print(waits)
    c.print("  (the imported tasks, enqueued 40 minutes ago, are left out of the waits)")
    n_live, live_avg, live_max = one(conn, LIVE_WAITS)
    if n_live:
        c.print(
            f"live conversations: their {n_live} analyses started {fmt_wait(live_avg)} after "
            f"arriving on average (max {fmt_wait(live_max)})."
        )
    urgent_wait = None
    if urgent_id is not None:
        tier, prio, boost, urgent_wait, overtook = one(conn, OVERTOOK, id=urgent_id)
        c.print(
            f"david's urgent message (task {urgent_id}): priority {prio} {boost:+d} by the "
            f"rules → {tier}; started {fmt_wait(urgent_wait)} after arriving, ahead of "
            f"{overtook} older tasks."
        )

    sizes = conn.execute(BATCH_SIZES, {"queue": QUEUE}).fetchall()
    shown = ", ".join(f"{n} × {size}" for size, n in sizes)
    c.print(f"{batch_line(snap)}; sizes: {shown or '-'}")
    per_worker = ", ".join(
        f"w{w.number} {w.batch_tasks / w.batches_run:.1f}"
        for w in all_workers(conn, setup)
        if w.batches_run
    )
    c.print(f"  worker_stats.avg_batch_size: {per_worker or '-'}")

    table = Table(title="the supervisor's decisions", box=box.SIMPLE_HEAD, title_justify="left")
    for col in ("at", "pending", "workers", "target", "action", "reason"):
        table.add_column(col, justify="left" if col in ("action", "reason") else "right")
    holds = 0
    for d in snap.decisions:
        if d.action == "hold":
            holds += 1
            continue
        table.add_row(
            f"{d.at_s:.1f} s", str(d.pending), str(d.workers), str(d.target), d.action, d.reason
        )
    c.print(table)
    c.print(f"  (times from the burst; {holds} more check(s) changed nothing)")

    a, b, backlog_end = one(conn, WINDOWS)
    busy, avail = one(conn, UTILISATION, a=a, b=b, hostname=setup.hostname, since=setup.since)
    b_busy, b_avail = one(
        conn, UTILISATION, a=a, b=backlog_end, hostname=setup.hostname, since=setup.since
    )
    overall = busy / avail if avail else 0.0
    under_backlog = b_busy / b_avail if b_avail else 0.0
    done, span = one(conn, THROUGHPUT)
    rate = done / span if span else 0.0
    peak = max((d.target for d in snap.decisions), default=0)
    final = len(snap.workers)
    live_met, live_n = one(conn, LIVE_MET)

    plan = Table(title="against the seed plan", box=box.SIMPLE_HEAD, title_justify="left")
    for col in ("", "expected", "this run", "verdict"):
        plan.add_column(col, overflow="fold")
    lo, hi = PLAN_TASKS_PER_S
    ok, below = "[green]OK[/]", "[red]BELOW PLAN[/] (is the machine busy?)"
    plan.add_row(
        "throughput",
        f"{lo:.0f}–{hi:.0f} tasks/s or better",
        f"the burst's {done} tasks in {span:.1f} s = [bold]{rate:.1f} tasks/s[/]",
        ok if rate >= lo else below,
    )
    latency_ok = live_met == live_n and (urgent_wait is None or urgent_wait <= 1.0)
    plan.add_row(
        "high-priority latency",
        "critical starts ≤ 1 s, high ≤ 1 min after arriving",
        f"{live_met}/{live_n} live analyses within their tier's target; the urgent message "
        f"in {fmt_wait(urgent_wait or 0.0)}",
        ok if latency_ok else "[red]MISSED[/]",
    )
    util_ok = under_backlog >= 0.75 and final <= setup.min_workers
    plan.add_row(
        "worker utilisation",
        "slots ≥ 75 % busy while work waits; idle workers released",
        f"{under_backlog:.0%} busy while the burst waited, {overall:.0%} over the run; "
        f"workers {setup.min_workers}–{setup.max_workers}: peak {peak}, now {final}",
        ok if util_ok else "[yellow]LOW[/]",
    )
    c.print(plan)
    burst_missed = [t for t, r in rows.items() if r[4] < r[1]]
    if burst_missed:
        c.print(
            f"  ({' and '.join(burst_missed)}: the burst put more such tasks in at one "
            "instant than the slots could start within target; tasks arriving one at a "
            "time start at once)"
        )
    low = min(lo for lo, _ in WORK_S.values())
    high = max(hi for _, hi in WORK_S.values())
    c.print(f"  (handlers sleep {low}–{high} s per task in place of model calls)")
    failed = one(conn, NOT_SUCCEEDED)[0]
    if failed:
        c.print(f"[red]{failed} task(s) did not succeed[/]")
    return not failed
