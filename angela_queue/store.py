"""The one seam to the database: a typed method per named query, errors translated here.

``TaskStore`` (sync) and ``AsyncTaskStore`` (async) have identical method names. Both run
on a connection they are given and never commit: the caller owns the transaction.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.rows import class_row, dict_row
from psycopg.types.json import Jsonb

from angela_queue import errors
from angela_queue.sql import QUERIES as Q
from angela_queue.types import EnqueueRequest, Task

NOTIFY_CHANNEL = "angela_queue"
COPY_COLUMNS = 11

# Friendly messages for the CHECK constraints a producer can trip.
_CONSTRAINT_MESSAGES = {
    "tasks_kind_check": (
        "invalid kind: use a lowercase dotted identifier like 'conversation.analyze'"
    ),
    "tasks_priority_check": "priority must be between 1 and 10",
    "tasks_payload_check": "payload must be a JSON object",
    "tasks_max_attempts_check": "max_attempts must be between 1 and 1000",
    "tasks_timeout_s_check": "timeout_s must be between 1 and 604800 seconds",
    "tasks_dedupe_key_check": "dedupe_key must be at most 500 characters",
    "queues_name_check": "invalid queue name: lowercase letters, digits, '_', '.', '-'",
    "queues_aging_rate_check": "aging_rate must be between 0 and 60 points per minute",
    "boost_rules_boost_check": "boost must be between -9 and 9",
    "boost_rules_name_check": "invalid rule name: lowercase letters, digits, '_', '.', '-'",
    "rule_vars_name_check": "invalid variable name: lowercase letters, digits and '_'",
    "tiers_target_wait_check": "a target wait cannot be negative",
    "queues_max_size_check": "max_size must be at least 1",
    "queues_overflow_policy_check": "overflow_policy must be drop_low or reject",
    "queues_drop_below_priority_check": "drop_below_priority must be between 1 and 11",
}


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one attempt, ready to be written (see task_complete_many/task_fail_many)."""

    task_id: int
    attempts: int
    succeeded: bool
    result: Any = None
    error: str | None = None
    retry_at: datetime | None = None


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


@contextlib.contextmanager
def translate_errors(queue: str | None = None) -> Iterator[None]:
    """Turn psycopg errors into angela-queue errors, keyed by SQLSTATE and constraint."""
    try:
        yield
    except psycopg.Error as exc:
        raise translate(exc, queue) from exc


def translate(exc: psycopg.Error, queue: str | None = None) -> errors.AngelaQueueError:
    """The domain error for a database error."""
    diag = exc.diag
    message = diag.message_primary or str(exc)
    if exc.sqlstate == "AQ001":
        return errors.UnknownQueue(queue or message)
    if exc.sqlstate == "AQ003":
        return errors.PayloadTooLarge(message)
    if exc.sqlstate == "AQ002":
        return errors.QueueFull(queue or "?", message)
    if exc.sqlstate == "AQ005":
        return errors.InvalidTask(message)
    if isinstance(exc, pg_errors.CheckViolation | pg_errors.NotNullViolation):
        constraint = diag.constraint_name
        text = _CONSTRAINT_MESSAGES.get(constraint or "", message)
        return errors.InvalidTask(text, constraint=constraint)
    if isinstance(exc, pg_errors.UndefinedTable | pg_errors.InvalidSchemaName):
        return errors.SchemaError()
    if isinstance(exc, pg_errors.InvalidTextRepresentation | pg_errors.NumericValueOutOfRange):
        return errors.InvalidTask(message)
    return errors.DatabaseError(message)


def _rule_error(exc: psycopg.Error) -> errors.AngelaQueueError:
    message = (exc.diag.message_primary or str(exc)).strip()
    if exc.sqlstate == "AQ004":
        return errors.InvalidRule(message)
    if isinstance(exc, pg_errors.CheckViolation):
        return errors.InvalidRule(_CONSTRAINT_MESSAGES.get(exc.diag.constraint_name or "", message))
    if isinstance(exc, pg_errors.SyntaxError | pg_errors.UndefinedObject | pg_errors.DataError):
        return errors.InvalidRule(f"invalid predicate: {message}")
    return translate(exc)


def insert_params(req: EnqueueRequest) -> dict[str, Any]:
    """Parameters of task_insert for one request (pure)."""
    return {
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


def copy_row(task_id: int, req: EnqueueRequest) -> tuple[Any, ...]:
    """One COPY row of task_insert_many_copy (pure)."""
    return (
        task_id,
        req.queue,
        req.kind,
        Jsonb(req.payload),
        req.priority,
        req.run_at,
        req.enqueued_at,
        req.max_attempts,
        req.timeout_s,
        req.batch_key,
        req.dedupe_key,
    )


def complete_params(worker_id: int, outcomes: Sequence[Outcome]) -> dict[str, Any]:
    return {
        "worker_id": worker_id,
        "ids": [o.task_id for o in outcomes],
        "attempts": [o.attempts for o in outcomes],
        "results": [None if o.result is None else Jsonb(o.result) for o in outcomes],
    }


def fail_params(worker_id: int, outcomes: Sequence[Outcome]) -> dict[str, Any]:
    return {
        "worker_id": worker_id,
        "ids": [o.task_id for o in outcomes],
        "attempts": [o.attempts for o in outcomes],
        "errors": [o.error for o in outcomes],
        "retry_ats": [o.retry_at for o in outcomes],
    }


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


class TaskStore:
    """Synchronous store on one psycopg connection."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def task_insert(self, req: EnqueueRequest) -> int | None:
        """Insert one task; None when a live task has the same dedupe_key."""
        with translate_errors(req.queue):
            row = self.conn.execute(Q["task_insert"], insert_params(req)).fetchone()
        return None if row is None else int(row[0])

    def task_get_live_by_dedupe_key(self, dedupe_key: str) -> int | None:
        row = self.conn.execute(
            Q["task_get_live_by_dedupe_key"], {"dedupe_key": dedupe_key}
        ).fetchone()
        return None if row is None else int(row[0])

    def task_insert_many_copy(self, reqs: Sequence[EnqueueRequest]) -> list[int]:
        """Insert many tasks with COPY; returns their ids in order."""
        with translate_errors(reqs[0].queue if reqs else None):
            ids = [
                int(r[0])
                for r in self.conn.execute(Q["task_reserve_ids"], {"n": len(reqs)}).fetchall()
            ]
            with self.conn.cursor().copy(Q["task_insert_many_copy"]) as copy:
                for task_id, req in zip(ids, reqs, strict=True):
                    copy.write_row(copy_row(task_id, req))
        return ids

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

    def task_get(self, task_id: int) -> dict[str, Any]:
        with translate_errors(), self.conn.cursor(row_factory=dict_row) as cur:
            row = cur.execute(Q["task_get"], {"id": task_id}).fetchone()
        if row is None:
            raise errors.TaskNotFound(task_id)
        return row

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

    def worker_mark_dead(self, worker_id: int) -> None:
        with translate_errors():
            self.conn.execute(Q["worker_mark_dead"], {"id": worker_id})

    def task_status_many(self, ids: Sequence[int]) -> dict[int, str]:
        with translate_errors():
            rows = self.conn.execute(Q["task_status_many"], {"ids": list(ids)}).fetchall()
        return {int(r[0]): str(r[1]) for r in rows}

    def session_set_overflow(self, mode: str) -> None:
        with translate_errors():
            self.conn.execute(Q["session_set_overflow"], {"mode": mode})

    def queue_set_bound(
        self,
        name: str,
        *,
        max_size: int | None = None,
        unbounded: bool = False,
        overflow_policy: str | None = None,
        drop_below_priority: int | None = None,
    ) -> bool:
        params = {
            "name": name,
            "max_size": max_size,
            "unbounded": unbounded,
            "overflow_policy": overflow_policy,
            "drop_below_priority": drop_below_priority,
        }
        return bool(self._rows("queue_set_bound", params))

    def task_requeue(
        self, from_status: str, queue: str | None = None, ids: Sequence[int] | None = None
    ) -> list[dict[str, Any]]:
        """Back to pending within each queue's bound; rows of (queue_name, requeued, left)."""
        params = {
            "from_status": from_status,
            "queue": queue,
            "ids": None if ids is None else list(ids),
        }
        return self._rows("task_requeue", params)

    def task_cancel_many(self, ids: Sequence[int]) -> set[int]:
        return {r["id"] for r in self._rows("task_cancel_many", {"ids": list(ids)})}

    # -- supervisor ---------------------------------------------------------------------------

    def supervisor_lock(self, hostname: str) -> bool:
        rows = self._rows("supervisor_lock", {"hostname": hostname})
        return bool(rows and rows[0]["locked"])

    def supervisor_unlock(self, hostname: str) -> None:
        self._rows("supervisor_unlock", {"hostname": hostname})

    def supervisor_tiers_at_risk(self, queues: Sequence[str]) -> list[str]:
        return [r["tier"] for r in self._rows("supervisor_tiers_at_risk", {"queues": list(queues)})]

    def queue_count_ready(self, queues: Sequence[str], cap: int) -> int:
        rows = self._rows("queue_count_ready", {"queues": list(queues), "cap": cap})
        return int(rows[0]["n"]) if rows else 0

    def worker_list_host(self, hostname: str) -> list[dict[str, Any]]:
        return self._rows("worker_list_host", {"hostname": hostname})

    def worker_request_stop(self, worker_id: int) -> None:
        self._rows("worker_request_stop", {"id": worker_id})

    def decision_insert(self, params: dict[str, Any]) -> None:
        self._rows("decision_insert", params)

    def decision_recent(self, limit: int = 10) -> list[dict[str, Any]]:
        return self._rows("decision_recent", {"limit": limit})

    # -- monitoring reads (through angela_queue.monitoring) ------------------------------------

    def queue_stats_list(self) -> list[dict[str, Any]]:
        return self._rows("queue_stats_list", {})

    def worker_stats_list(self, dead_window_s: float) -> list[dict[str, Any]]:
        return self._rows("worker_stats_list", {"dead_window_s": dead_window_s})

    def task_histogram(
        self, wait_bounds: Sequence[float], processing_bounds: Sequence[float]
    ) -> list[dict[str, Any]]:
        """The last hour's waits and processing times per queue, tier and bucket index."""
        params = {
            "wait_bounds": [float(b) for b in wait_bounds],
            "processing_bounds": [float(b) for b in processing_bounds],
        }
        return self._rows("task_histogram", params)

    def task_throughput(self, bucket_s: float, window_s: float) -> list[dict[str, Any]]:
        return self._rows("task_throughput", {"bucket_s": bucket_s, "window_s": window_s})

    def task_list_failed(self, limit: int) -> list[dict[str, Any]]:
        return self._rows("task_list_failed", {"limit": limit})

    def task_list_dropped(self, limit: int) -> list[dict[str, Any]]:
        return self._rows("task_list_dropped", {"limit": limit})

    # -- priority administration (rules, variables, tiers) ------------------------------------

    def rule_list(self) -> list[dict[str, Any]]:
        return self._rows("rule_list", {})

    def rule_insert(
        self, name: str, predicate: str, boost: int, enabled: bool, description: str
    ) -> dict[str, Any]:
        """Store a rule; a predicate PostgreSQL cannot parse or evaluate raises InvalidRule."""
        params = {
            "name": name,
            "predicate": predicate,
            "boost": boost,
            "enabled": enabled,
            "description": description,
        }
        try:
            rows = self._rows("rule_insert", params, raw=True)
        except pg_errors.UniqueViolation as exc:
            raise errors.InvalidRule(f"a rule named {name!r} already exists") from exc
        except psycopg.Error as exc:
            raise _rule_error(exc) from exc
        return rows[0]

    def rule_set_enabled(self, name: str, enabled: bool) -> bool:
        return bool(self._rows("rule_set_enabled", {"name": name, "enabled": enabled}))

    def rule_delete(self, name: str) -> bool:
        return bool(self._rows("rule_delete", {"name": name}))

    def rule_match(self, payload: dict[str, Any]) -> list[dict[str, Any]]:
        return self._rows("rule_match", {"payload": Jsonb(payload)})

    def rule_var_list(self) -> list[dict[str, Any]]:
        return self._rows("rule_var_list", {})

    def rule_var_set(self, name: str, value: Any) -> None:
        try:
            self._rows("rule_var_set", {"name": name, "value": Jsonb(value)}, raw=True)
        except psycopg.Error as exc:
            raise _rule_error(exc) from exc

    def rule_var_delete(self, name: str) -> bool:
        try:
            return bool(self._rows("rule_var_delete", {"name": name}, raw=True))
        except psycopg.Error as exc:
            raise _rule_error(exc) from exc

    def tier_list(self) -> list[dict[str, Any]]:
        return self._rows("tier_list", {})

    def tier_set_target_wait(self, tier: str, seconds: float) -> bool:
        return bool(self._rows("tier_set_target_wait", {"tier": tier, "seconds": seconds}))

    def tier_slo_list(self) -> list[dict[str, Any]]:
        return self._rows("tier_slo_list", {})

    def queue_set_target_wait(self, name: str, tier: str, seconds: float | None) -> bool:
        return bool(
            self._rows("queue_set_target_wait", {"name": name, "tier": tier, "seconds": seconds})
        )

    def _rows(self, query: str, params: dict[str, Any], raw: bool = False) -> list[dict[str, Any]]:
        """Run a named query and return its rows as dicts (errors translated unless raw)."""
        with self.conn.cursor(row_factory=dict_row) as cur:
            if raw:
                cur.execute(Q[query], params)
            else:
                with translate_errors():
                    cur.execute(Q[query], params)
            return cur.fetchall() if cur.description else []

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
            cur = await self.conn.execute(Q["task_insert"], insert_params(req))
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
            async with self.conn.cursor(row_factory=class_row(Task)) as cur:
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
            async with self.conn.cursor(row_factory=class_row(Task)) as cur:
                await cur.execute(Q["task_claim_batch"], params)
                return await cur.fetchall()

    async def task_complete_many(self, worker_id: int, outcomes: Sequence[Outcome]) -> set[int]:
        """Mark tasks succeeded; returns the ids that were still ours (fencing)."""
        with translate_errors():
            cur = await self.conn.execute(
                Q["task_complete_many"], complete_params(worker_id, outcomes)
            )
            return {int(r[0]) for r in await cur.fetchall()}

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

    async def queue_listen(self) -> None:
        """Subscribe this connection to the wake-up channel (NOTIFY_CHANNEL)."""
        await self.conn.execute(Q["queue_listen"])

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
