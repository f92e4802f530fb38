"""Queries for operators, the supervisor and monitoring: part of the store (store.py).

``AdminQueries`` is mixed into ``TaskStore``: the same seam to the database, split by
responsibility — the hot path stays in store.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from angela_queue import errors
from angela_queue.sql import QUERIES as Q
from angela_queue.store_errors import rule_error, translate_errors


class AdminQueries:
    """Queue, rule and tier administration, supervisor and monitoring reads (sync)."""

    conn: psycopg.Connection[Any]

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
        """The host's supervisor lock, until the current transaction ends."""
        rows = self._rows("supervisor_lock", {"hostname": hostname})
        return bool(rows and rows[0]["locked"])

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

    def task_kinds_unserved(self, limit: int) -> list[dict[str, Any]] | None:
        """Due pending (queue, kind) groups no live worker serves (the view unserved_kinds);
        None for a role that may not read it."""
        try:
            return self._rows("task_kinds_unserved", {"limit": limit}, raw=True)
        except pg_errors.InsufficientPrivilege:
            return None

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
            raise rule_error(exc) from exc
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
            raise rule_error(exc) from exc

    def rule_var_delete(self, name: str) -> bool:
        try:
            return bool(self._rows("rule_var_delete", {"name": name}, raw=True))
        except psycopg.Error as exc:
            raise rule_error(exc) from exc

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

    # -- retention -----------------------------------------------------------------------------

    def cleaner_lock(self) -> bool:
        """Take the cleaner's transaction lock; False when another cleaner holds it."""
        rows = self._rows("cleaner_lock", {})
        return bool(rows and rows[0]["locked"])

    def task_delete_finished_before(self, older_than_s: float, limit: int) -> int:
        """Delete up to ``limit`` finished tasks older than ``older_than_s``; returns how many."""
        return len(
            self._rows(
                "task_delete_finished_before", {"older_than_s": older_than_s, "limit": limit}
            )
        )

    def worker_delete_dead_before(self, older_than_s: float) -> int:
        return len(self._rows("worker_delete_dead_before", {"older_than_s": older_than_s}))
