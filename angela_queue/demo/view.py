"""What the demo shows: the live view and the summary, read with plain SQL.

Everything here is a query on ``angela_queue.tasks`` an operator could type (DESIGN.md §1:
the database is the API), rendered with rich: a live panel on a terminal, one line every
two seconds in logs and CI, and tables for the summary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import class_row
from rich import box
from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table

from angela_queue.demo.app import KINDS, QUEUE, WORK_S

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
THROUGHPUT = """
SELECT count(*), extract(epoch FROM max(finished_at) - min(started_at))::float8
  FROM angela_queue.tasks WHERE queue = %(queue)s AND status = 'succeeded'"""
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


@dataclass
class Snapshot:
    """Counts per tier (pending, running, done, failed) and the latest starts."""

    counts: dict[str, tuple[int, ...]] = field(default_factory=dict)
    recent: list[Started] = field(default_factory=list)

    def total(self, column: int) -> int:
        return sum(c[column] for c in self.counts.values())


@dataclass(frozen=True)
class Setup:
    """What the view names: worker numbers by worker row id, and the slots."""

    workers: dict[int, int]
    processes: int
    concurrency: int


def one(conn: psycopg.Connection[Any], query: str, **params: Any) -> tuple[Any, ...]:
    """The one row of a query about the demo's queue."""
    row = conn.execute(query, {"queue": QUEUE, **params}).fetchone()
    assert row is not None
    return tuple(row)


def started(conn: psycopg.Connection[Any], query: str) -> list[Started]:
    with conn.cursor(row_factory=class_row(Started)) as cur:
        return cur.execute(query, {"queue": QUEUE}).fetchall()


def snapshot(conn: psycopg.Connection[Any]) -> Snapshot:
    """What an operator would see with plain SQL on the tasks table."""
    snap = Snapshot()
    for tier, *nums in conn.execute(TIER_COUNTS, {"queue": QUEUE}).fetchall():
        snap.counts[tier] = tuple(int(n) for n in nums)
    snap.recent = started(conn, RECENT)
    return snap


def show_rules(console: Console, conn: psycopg.Connection[Any]) -> None:
    """The rules are data in the database; so is what they did at insert."""
    table = Table(title="boost rules (enabled)", box=box.SIMPLE_HEAD, title_justify="left")
    for col in ("rule", "boost", "predicate (jsonpath)"):
        table.add_column(col, overflow="fold")
    for name, boost, predicate in conn.execute(RULES).fetchall():
        table.add_row(name, f"{boost:+d}", predicate)
    console.print(table)
    counts = conn.execute(BOOSTS, {"queue": QUEUE}).fetchall()
    shown = ", ".join(f"{b:+d} × {n}" for b, n in counts)
    console.print(f"  boosts the insert trigger gave the analyses: {shown}")


def render(
    snap: Snapshot, planned: int, rate: float, elapsed: float, setup: Setup
) -> RenderableType:
    """The live view: tiers draining in order, progress, and what the claims just took."""
    tiers = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for col in ("tier", "target wait", "pending", "running", "done"):
        tiers.add_column(col, justify="left" if col in ("tier", "target wait") else "right")
    for tier in TIERS:
        p, r, d, _ = snap.counts.get(tier, (0, 0, 0, 0))
        tiers.add_row(tier, TARGET[tier], str(p), str(r), str(d))
    done = snap.total(2)
    progress = Table.grid(padding=(0, 2))
    progress.add_row(
        ProgressBar(total=planned, completed=done, width=40),
        f"{done}/{planned} done · {snap.total(1)} running · {rate:.1f} tasks/s · {elapsed:.1f} s",
    )
    recent = started_table(snap.recent, setup.workers, "last tasks started, newest first")
    recent.show_edge = False
    return Panel(
        Group(tiers, "", progress, "", recent),
        title="angela-queue demo · the assistant's learning workers",
        subtitle=f"{setup.processes} workers × {setup.concurrency} slots · Ctrl-C stops",
    )


def plain_line(snap: Snapshot, planned: int, rate: float, elapsed: float) -> str:
    """The live view as one line, for logs and CI (pending/running/done per tier)."""
    tiers = " ".join(
        f"{t} {'/'.join(str(n) for n in snap.counts.get(t, (0, 0, 0, 0))[:3])}" for t in TIERS
    )
    return (
        f"{elapsed:5.1f} s  {snap.total(2):3d}/{planned} done, {snap.total(1)} running, "
        f"{snap.total(0):3d} pending, {rate:4.1f} tasks/s | {tiers}"
    )


def fmt_wait(seconds: float) -> str:
    """Seconds for queue waits, minutes for the imported tasks' 40."""
    if seconds < 60:
        return f"{seconds:.2f} s"
    return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"


def started_table(rows: Sequence[Started], workers: dict[int, int], title: str) -> Table:
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
            f"w{workers.get(r.worker_id, '?')}",
            r.note,
        )
    return table


def summary(
    console: Console, conn: psycopg.Connection[Any], setup: Setup, urgent_id: int | None
) -> bool:
    """Start order, waits by tier, the live and urgent messages, throughput against the plan.

    Returns True when every task succeeded.
    """
    c = console
    c.print()
    first = started(conn, FIRST)
    c.print(started_table(first, setup.workers, "the order tasks started in (first 15)"))
    waits = Table(title="waits by tier", box=box.SIMPLE_HEAD, title_justify="left")
    for col in ("tier", "tasks", "avg wait", "max wait", "target", "met target"):
        waits.add_column(col, justify="left" if col == "tier" else "right")
    rows = {r[0]: r for r in conn.execute(WAITS_BY_TIER, {"queue": QUEUE}).fetchall()}
    for tier in (t for t in TIERS if t in rows):
        _, n, avg, worst, met = rows[tier]
        waits.add_row(tier, str(n), fmt_wait(avg), fmt_wait(worst), TARGET[tier], f"{met}/{n}")
    c.print(waits)
    c.print("  (the imported tasks, enqueued 40 minutes ago, are left out of the waits)")
    missed = [t for t, r in rows.items() if r[4] < r[1]]
    if missed:
        c.print(
            f"  {' and '.join(missed)}: more tasks arrived at once than "
            f"{setup.processes * setup.concurrency} slots can start within target; "
            "`angela-queue supervise` adds workers when a tier is about to miss it "
            "(not part of this demo)."
        )
    n_live, live_avg, live_max = one(conn, LIVE_WAITS)
    if n_live:
        c.print(
            f"live conversations: their {n_live} analyses started {fmt_wait(live_avg)} after "
            f"arriving on average (max {fmt_wait(live_max)}; equal priority: oldest first)."
        )
    if urgent_id is not None:
        tier, prio, boost, waited, overtook = one(conn, OVERTOOK, id=urgent_id)
        c.print(
            f"david's urgent message (task {urgent_id}): priority {prio} {boost:+d} by the "
            f"rules → {tier}; started {fmt_wait(waited)} after arriving, ahead of "
            f"{overtook} older tasks."
        )
    done, span = one(conn, THROUGHPUT)
    rate = done / span if span else 0.0
    low = min(lo for lo, _ in WORK_S.values())
    high = max(hi for _, hi in WORK_S.values())
    c.print(
        f"throughput: {done} tasks in {span:.1f} s = [bold]{rate:.1f} tasks/s[/] "
        f"({setup.processes} workers × {setup.concurrency} slots; handlers sleep "
        f"{low}–{high} s by kind: {', '.join(KINDS)})"
    )
    lo, hi = PLAN_TASKS_PER_S
    verdict = "[green]OK[/]" if rate >= lo else "[red]BELOW PLAN[/] (is the machine busy?)"
    if rate > hi:
        verdict += " (above the plan's range)"
    c.print(f"check: seed plan expects {lo:.0f}–{hi:.0f} tasks/s; measured {rate:.1f} → {verdict}")
    failed = one(conn, NOT_SUCCEEDED)[0]
    if failed:
        c.print(f"[red]{failed} task(s) did not succeed[/]")
    return not failed
