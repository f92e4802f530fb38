"""The one seam to the database: a typed method per named query, errors translated here.

``TaskStore`` (sync) and ``AsyncTaskStore`` (async) have identical method names. Both run
on a connection they are given and never commit: the caller owns the transaction. The hot
path lives here; operator, supervisor and monitoring queries in store_admin.py, the
translation of database errors in store_errors.py.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, NamedTuple

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from angela_queue import errors
from angela_queue.sql import QUERIES as Q
from angela_queue.store_admin import AdminQueries
from angela_queue.store_errors import translate_errors
from angela_queue.types import EnqueueRequest, Task

NOTIFY_CHANNEL = "angela_queue"
INSERT_CHUNK = 500  # tasks per statement of a bulk insert (see TaskStore.task_insert_many)
OUTCOME_CHUNK = 100  # outcomes per statement (see AsyncTaskStore.task_record_and_claim)


@dataclass(slots=True)  # not frozen: built once per task, and a frozen __init__ costs 2×
class Outcome:
    """The result of one attempt, ready to be written (see task_complete_many/task_fail_many)."""

    task_id: int
    attempts: int
    succeeded: bool
    result: Any = None
    error: str | None = None
    # Seconds until the retry, counted on the database's clock; None: failed for good.
    retry_in_s: float | None = None


class Recorded(NamedTuple):
    """What task_record_and_claim did: outcomes still ours, tasks claimed, offer withdrawn."""

    kept: set[int]
    claimed: list[Task]
    offer: int | None = None


@dataclass(frozen=True, slots=True)
class Reclaimed:
    """A task a reaper took back: ``status`` is ``pending`` (retried) or ``failed``."""

    task_id: int
    status: str
    queue: str
    worker_id: int | None


def reclaimed_rows(rows: Sequence[tuple[Any, ...]]) -> list[Reclaimed]:
    """Rows of task_reclaim_orphaned/task_reclaim_overdue as values (pure)."""
    return [Reclaimed(int(r[0]), str(r[1]), str(r[2]), r[3]) for r in rows]


def insert_params(req: EnqueueRequest, push_at_insert: bool = False) -> dict[str, Any]:
    """Parameters of task_insert for one request (pure). ``push_at_insert``: the statement
    is its own transaction (an autocommit connection), see migration 0018."""
    return {
        "push_at_insert": "on" if push_at_insert else "",
        "queue": req.queue,
        "kind": req.kind,
        "payload": Jsonb(req.payload),
        "priority": req.priority,
        "run_at": req.run_at,
        "enqueued_at": req.enqueued_at,
        "max_attempts": req.max_attempts,
        "timeout_s": req.timeout_s,
        "batch_key": req.batch_key,
        "dedupe_key": req.dedupe_key,
    }


# One task of a bulk insert: task_insert_many's columns, in the order of its arrays.
InsertRow = tuple[
    str, str, Any, int, datetime | None, datetime | None, int | None, int | None, str | None
]


def insert_row(req: EnqueueRequest) -> InsertRow:
    """The bulk insert's row for one request (pure)."""
    return (
        req.queue,
        req.kind,
        req.payload,
        req.priority,
        req.run_at,
        req.enqueued_at,
        req.max_attempts,
        req.timeout_s,
        req.batch_key,
    )


def insert_many_params(rows: Sequence[InsertRow]) -> dict[str, Any]:
    """Parameters of task_insert_many: one array per column, in the order of ``rows`` (pure)."""
    queues, kinds, payloads, priorities, run_ats, enqueued_ats, attempts, timeouts, keys = map(
        list, zip(*rows, strict=True)
    )
    return {
        "queues": queues,
        "kinds": kinds,
        "payloads": Jsonb(payloads),  # one JSON array (see the query)
        "priorities": priorities,
        "run_ats": run_ats,
        "enqueued_ats": enqueued_ats,
        "max_attempts": attempts,
        "timeouts": timeouts,
        "batch_keys": keys,
    }


def complete_params(worker_id: int, outcomes: Sequence[Outcome]) -> dict[str, Any]:
    # One JSON object (one json.dumps) rather than parallel arrays: see task_complete_many.
    return {
        "worker_id": worker_id,
        "ids": [o.task_id for o in outcomes],
        "outcomes": Jsonb(
            {
                str(o.task_id): [o.attempts] if o.result is None else [o.attempts, o.result]
                for o in outcomes
            }
        ),
    }


def fail_params(worker_id: int, outcomes: Sequence[Outcome]) -> dict[str, Any]:
    return {
        "worker_id": worker_id,
        "ids": [o.task_id for o in outcomes],
        "outcomes": Jsonb({str(o.task_id): [o.attempts, o.error, o.retry_in_s] for o in outcomes}),
    }


TASK_FIELDS = tuple(f.name for f in fields(Task) if f.name != "conn")


def task_row(cursor: psycopg.AsyncCursor[Any]) -> Callable[[Sequence[Any]], Task]:
    """Row factory of the claims: Task(*values), the names checked once per statement (a
    keyword call per row, as class_row makes, costs a microsecond more per task)."""
    names = tuple(c.name for c in cursor.description or ())
    if names != TASK_FIELDS:
        raise errors.SchemaError(f"a claim returned columns {names}, expected {TASK_FIELDS}")
    return lambda values: Task(*values)


def claim_params(
    worker_id: int,
    queues: Sequence[str],
    kinds: Sequence[str],
    limit: int,
    now: datetime | None,
) -> dict[str, Any]:
    return {
        "worker_id": worker_id,
        "queues": list(queues),
        "kinds": list(kinds),
        "limit": limit,
        "now": now,
    }


class TaskStore(AdminQueries):
    """Synchronous store on one psycopg connection."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def task_insert(self, req: EnqueueRequest) -> int | None:
        """Insert one task; None when a live task has the same dedupe_key. On an autocommit
        connection the statement is its own transaction, and it may hand the task to an
        idle worker as it inserts (migration 0018)."""
        with translate_errors(req.queue):
            params = insert_params(req, self.conn.autocommit)
            row = self.conn.execute(Q["task_insert"], params).fetchone()
        return None if row is None else int(row[0])

    def task_get_live_by_dedupe_key(self, dedupe_key: str) -> int | None:
        row = self.conn.execute(
            Q["task_get_live_by_dedupe_key"], {"dedupe_key": dedupe_key}
        ).fetchone()
        return None if row is None else int(row[0])

    def task_insert_many(self, rows: Iterable[InsertRow]) -> dict[int, tuple[int, str]]:
        """Insert many tasks (no dedupe keys), in the caller's transaction. Returns, by
        position in ``rows``, the task's id and status; a position is missing when a full
        bounded queue skipped its task (the session's overflow mode 'skip').

        Chunks of INSERT_CHUNK go out in one pipeline: the server inserts one while this
        process encodes the next, instead of each side waiting for the other. ``rows`` may
        be lazy: it is read a chunk at a time, as the chunks are sent."""
        pending = iter(rows)
        chunk = list(itertools.islice(pending, INSERT_CHUNK))
        if not chunk:
            return {}
        placed: dict[int, tuple[int, str]] = {}
        with translate_errors():  # the queue of an error is in its message
            if len(chunk) < INSERT_CHUNK:
                sent = [(0, self.conn.execute(Q["task_insert_many"], insert_many_params(chunk)))]
            else:
                sent = []
                with self.conn.pipeline():
                    while chunk:
                        cur = self.conn.cursor()
                        cur.execute(Q["task_insert_many"], insert_many_params(chunk))
                        sent.append((len(sent) * INSERT_CHUNK, cur))
                        chunk = list(itertools.islice(pending, INSERT_CHUNK))
            for start, cur in sent:
                for r in cur.fetchall():
                    placed[start + int(r[0]) - 1] = (int(r[1]), str(r[2]))
        return placed

    def task_complete_many(self, worker_id: int, outcomes: Sequence[Outcome]) -> set[int]:
        """Mark tasks succeeded; returns the ids that were still ours (fencing)."""
        with translate_errors():
            rows = self.conn.execute(
                Q["task_complete_many"], complete_params(worker_id, outcomes)
            ).fetchall()
        return {int(r[0]) for r in rows}

    def database_now(self) -> datetime:
        """The database's clock; also a cheap proof that the connection works."""
        with translate_errors():
            row = self.conn.execute(Q["database_now"]).fetchone()
        assert row is not None
        return row[0]  # type: ignore[no-any-return]

    def queue_get(self, name: str) -> dict[str, Any] | None:
        with translate_errors(), self.conn.cursor(row_factory=dict_row) as cur:
            return cur.execute(Q["queue_get"], {"name": name}).fetchone()

    def queue_list(self) -> list[dict[str, Any]]:
        with translate_errors(), self.conn.cursor(row_factory=dict_row) as cur:
            return cur.execute(Q["queue_list"]).fetchall()

    def queue_upsert(
        self, name: str, aging_rate: float | None = None, paused: bool | None = None
    ) -> dict[str, Any]:
        with translate_errors(), self.conn.cursor(row_factory=dict_row) as cur:
            row = cur.execute(
                Q["queue_upsert"], {"name": name, "aging_rate": aging_rate, "paused": paused}
            ).fetchone()
        assert row is not None
        return row

    def worker_heartbeat(self, params: dict[str, Any]) -> bool | None:
        """Beat; returns stop_requested, or None when the row is gone or dead."""
        with translate_errors():
            row = self.conn.execute(Q["worker_heartbeat"], params).fetchone()
        return None if row is None else bool(row[0])

    def claim_floor_raise(
        self, queues: Sequence[str], kinds: Sequence[str], min_interval_s: float = 1.0
    ) -> int:
        """Raise the claim floors of these queues' kinds (migration 0014); returns how many
        were written. A queue with a producer in flight is left for the next call, and so is
        a floor raised less than ``min_interval_s`` ago."""
        params = {"queues": list(queues), "kinds": list(kinds), "min_interval_s": min_interval_s}
        with translate_errors():
            row = self.conn.execute(Q["claim_floor_raise"], params).fetchone()
        return int(row[0]) if row is not None else 0

    def worker_mark_dead(self, worker_id: int) -> None:
        with translate_errors():
            self.conn.execute(Q["worker_mark_dead"], {"id": worker_id})

    def worker_mark_dead_stale(self, timeout_s: float, now: datetime | None = None) -> list[int]:
        """Mark workers silent for over ``timeout_s`` dead; returns the ids this call marked."""
        with translate_errors():
            rows = self.conn.execute(
                Q["worker_mark_dead_stale"], {"timeout_s": timeout_s, "now": now}
            ).fetchall()
        return sorted(int(r[0]) for r in rows)

    def task_reclaim_orphaned(self, limit: int, now: datetime | None = None) -> list[Reclaimed]:
        """Take back up to ``limit`` tasks running under dead or missing workers."""
        with translate_errors():
            rows = self.conn.execute(
                Q["task_reclaim_orphaned"], {"limit": limit, "now": now}
            ).fetchall()
        return reclaimed_rows(rows)

    def task_reclaim_overdue(
        self, grace_s: float, limit: int, now: datetime | None = None
    ) -> list[Reclaimed]:
        """Take back up to ``limit`` tasks still running ``grace_s`` past their timeout_s."""
        with translate_errors():
            rows = self.conn.execute(
                Q["task_reclaim_overdue"], {"grace_s": grace_s, "limit": limit, "now": now}
            ).fetchall()
        return reclaimed_rows(rows)


class AsyncTaskStore:
    """Asynchronous store on one psycopg async connection (the worker's hot path)."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn

    async def task_insert(self, req: EnqueueRequest) -> int | None:
        with translate_errors(req.queue):
            params = insert_params(req, self.conn.autocommit)
            cur = await self.conn.execute(Q["task_insert"], params)
            row = await cur.fetchone()
        return None if row is None else int(row[0])

    async def task_get_live_by_dedupe_key(self, dedupe_key: str) -> int | None:
        cur = await self.conn.execute(Q["task_get_live_by_dedupe_key"], {"dedupe_key": dedupe_key})
        row = await cur.fetchone()
        return None if row is None else int(row[0])

    async def task_claim(
        self,
        worker_id: int,
        queues: Sequence[str],
        kinds: Sequence[str],
        limit: int,
        now: datetime | None = None,
    ) -> list[Task]:
        """Claim up to ``limit`` due tasks in effective-priority order (see queries.sql)."""
        with translate_errors():
            async with self.conn.cursor(row_factory=task_row) as cur:
                await cur.execute(
                    Q["task_claim"], claim_params(worker_id, queues, kinds, limit, now)
                )
                return await cur.fetchall()

    async def task_claim_batch(
        self, worker_id: int, queue: str, kind: str, batch_key: str, limit: int
    ) -> list[Task]:
        """Claim up to ``limit`` low-tier mates of a batch (same queue, kind, batch_key)."""
        params = {
            "worker_id": worker_id,
            "queue": queue,
            "kind": kind,
            "batch_key": batch_key,
            "limit": limit,
        }
        with translate_errors():
            async with self.conn.cursor(row_factory=task_row) as cur:
                await cur.execute(Q["task_claim_batch"], params)
                return await cur.fetchall()

    async def task_complete_many(self, worker_id: int, outcomes: Sequence[Outcome]) -> set[int]:
        """Mark tasks succeeded; returns the ids that were still ours (fencing)."""
        with translate_errors():
            cur = await self.conn.execute(
                Q["task_complete_many"], complete_params(worker_id, outcomes)
            )
            return {int(r[0]) for r in await cur.fetchall()}

    async def task_record_and_claim(
        self,
        worker_id: int,
        outcomes: Sequence[Outcome],
        queues: Sequence[str],
        kinds: Sequence[str],
        limit: int,
        *,
        withdraw_offer: bool = False,
    ) -> Recorded:
        """Record ``outcomes`` (as task_complete_many and task_fail_many) and claim up to
        ``limit`` tasks (as task_claim), all in one round trip and one transaction: a busy
        worker pays one commit per batch instead of two. Returns the ids of ``outcomes``
        that were still ours, and the claimed tasks. Nothing is written if any part fails.

        ``withdraw_offer`` first deletes the worker's offer (migration 0017): ``offer`` is
        then the id of the offer deleted, None if a producer had filled it.

        A claim with no outcomes beside it commits without waiting for its WAL flush (an
        idle worker's wake-up, 0.1–0.2 ms sooner): a server crash may forget it, and the task
        then runs again, which a crash of the server does to any running task anyway.
        Outcomes always wait for the flush.
        """
        done = [o for o in outcomes if o.succeeded]
        failed = [o for o in outcomes if not o.succeeded]
        with translate_errors():
            # One implicit transaction until the pipeline's Sync (autocommit connection):
            # the claimed tasks are ours only once that commit returned.
            async with self.conn.pipeline():
                # First: waiting for a producer that is filling the offer, it holds nothing.
                withdrawal = (
                    await self.conn.execute(Q["offer_withdraw"], {"worker_id": worker_id})
                    if withdraw_offer
                    else None
                )
                recorded = []
                # At most OUTCOME_CHUNK outcomes per statement: bounded parameters.
                for start in range(0, len(done), OUTCOME_CHUNK):
                    params = complete_params(worker_id, done[start : start + OUTCOME_CHUNK])
                    recorded.append(await self.conn.execute(Q["task_complete_many"], params))
                for start in range(0, len(failed), OUTCOME_CHUNK):
                    params = fail_params(worker_id, failed[start : start + OUTCOME_CHUNK])
                    recorded.append(await self.conn.execute(Q["task_fail_many"], params))
                claim = None
                if limit > 0 and not outcomes:
                    await self.conn.execute(Q["claim_commit_async"])
                if limit > 0:
                    claim = self.conn.cursor(row_factory=task_row)
                    await claim.execute(
                        Q["task_claim"], claim_params(worker_id, queues, kinds, limit, None)
                    )
            kept = {int(r[0]) for cur in recorded for r in await cur.fetchall()}
            claimed = await claim.fetchall() if claim is not None else []
            deleted = await withdrawal.fetchone() if withdrawal is not None else None
        return Recorded(kept, claimed, None if deleted is None else int(deleted[0]))

    async def task_fail_many(self, worker_id: int, outcomes: Sequence[Outcome]) -> set[int]:
        """Record failures (retry or final); returns the ids that were still ours."""
        with translate_errors():
            cur = await self.conn.execute(Q["task_fail_many"], fail_params(worker_id, outcomes))
            return {int(r[0]) for r in await cur.fetchall()}

    async def task_release_unknown(self, worker_id: int, known_ids: Sequence[int]) -> list[int]:
        """Put back tasks running under ``worker_id`` that it does not know (lost claim replies)."""
        with translate_errors():
            cur = await self.conn.execute(
                Q["task_release_unknown"], {"worker_id": worker_id, "known_ids": list(known_ids)}
            )
            return sorted(int(r[0]) for r in await cur.fetchall())

    async def task_promote_due(self, limit: int = 1000) -> list[str]:
        """Move due scheduled tasks into the claim path; returns the queues that got work."""
        with translate_errors():
            cur = await self.conn.execute(Q["task_promote_due"], {"limit": limit})
            return [str(r[0]) for r in await cur.fetchall()]

    async def queue_count_ready(self, queues: Sequence[str], cap: int) -> int:
        with translate_errors():
            cur = await self.conn.execute(
                Q["queue_count_ready"], {"queues": list(queues), "cap": cap}
            )
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def queue_arm(self, queue: str) -> None:
        """Ask producers of ``queue`` to NOTIFY (migration 0012); its own transaction."""
        with translate_errors(queue):
            await self.conn.execute(Q["queue_arm"], {"queue": queue})

    async def queue_listen(self, also: sql.Composable | None = None) -> None:
        """Subscribe this connection to the wake-up channel (NOTIFY_CHANNEL), and run
        ``also`` (another LISTEN) in the same round trip."""
        parts = [sql.SQL(Q["queue_listen"]), *([also] if also is not None else [])]
        await self.conn.execute(sql.SQL("; ").join(parts))

    async def queue_offer(
        self, worker_id: int, offer_id: int, queues: Sequence[str], kinds: Sequence[str]
    ) -> str:
        """Arm ``queues`` and leave an offer (migration 0017): 'offered', 'due' or 'busy'."""
        params = {
            "worker_id": worker_id,
            "offer_id": offer_id,
            "queues": list(queues),
            "kinds": list(kinds),
        }
        with translate_errors():
            cur = await self.conn.execute(Q["queue_offer"], params)
            row = await cur.fetchone()
        assert row is not None
        return str(row[0])

    async def offer_withdraw(self, worker_id: int) -> int | None:
        """Delete the worker's offer: its id, or None when a producer filled it."""
        with translate_errors():
            cur = await self.conn.execute(Q["offer_withdraw"], {"worker_id": worker_id})
            row = await cur.fetchone()
        return None if row is None else int(row[0])

    async def task_adopt_unknown(self, worker_id: int, known_ids: Sequence[int]) -> list[Task]:
        """Withdraw the worker's offer, then return the tasks running under it that it does
        not know (pushes whose notification was lost, claims whose reply was), in one
        transaction: every push filled before the withdrawal is among them."""
        with translate_errors():
            async with self.conn.pipeline():
                await self.conn.execute(Q["offer_withdraw"], {"worker_id": worker_id})
                cur = self.conn.cursor(row_factory=task_row)
                await cur.execute(
                    Q["task_adopt_unknown"], {"worker_id": worker_id, "known_ids": list(known_ids)}
                )
            return await cur.fetchall()

    async def worker_hold_listener_lock(self, worker_id: int) -> bool:
        """Take the lock that proves this session alive to producers (migration 0017)."""
        cur = await self.conn.execute(Q["worker_hold_listener_lock"], {"worker_id": worker_id})
        row = await cur.fetchone()
        return bool(row and row[0])

    async def queue_get(self, name: str) -> dict[str, Any] | None:
        with translate_errors():
            async with self.conn.cursor(row_factory=dict_row) as cur:
                await cur.execute(Q["queue_get"], {"name": name})
                return await cur.fetchone()

    async def worker_register(
        self,
        hostname: str,
        pid: int,
        queues: Sequence[str],
        kinds: Sequence[str],
        concurrency: int,
    ) -> int:
        with translate_errors():
            cur = await self.conn.execute(
                Q["worker_register"],
                {
                    "hostname": hostname,
                    "pid": pid,
                    "queues": list(queues),
                    "kinds": list(kinds),
                    "concurrency": concurrency,
                },
            )
            row = await cur.fetchone()
        assert row is not None
        return int(row[0])

    async def worker_mark_dead(self, worker_id: int) -> None:
        with translate_errors():
            await self.conn.execute(Q["worker_mark_dead"], {"id": worker_id})
