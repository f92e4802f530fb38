"""Value types shared by every layer. Leaf module: imports nothing from angela_queue."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

# A task's priority when its producer gives none (the column's default is the same).
DEFAULT_PRIORITY = 5


class TaskState(enum.StrEnum):
    """The life of a task (docs/state_machine.md)."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    DROPPED = "dropped"


class Tier(enum.StrEnum):
    """Priority tiers and their effective-base ranges (DESIGN.md §2)."""

    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


@dataclass(frozen=True, slots=True)
class Task:
    """A claimed task, as a handler sees it.

    ``effective_priority`` is the base plus aging at the moment of the claim. ``conn`` is
    the connection that will complete the task, set only for ``transactional=True``
    handlers: writes made on it commit together with the task's completion.
    """

    id: int
    queue: str
    kind: str
    payload: dict[str, Any]
    priority: int
    boost: int
    tier: str
    attempts: int
    max_attempts: int
    enqueued_at: datetime
    run_at: datetime
    deadline_at: datetime
    started_at: datetime | None
    batch_key: str
    dedupe_key: str | None
    timeout_s: int
    effective_priority: float
    worker_id: int | None = None
    conn: Any = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class EnqueueRequest:
    """One task to enqueue; the fields a producer may set (the database fills the rest)."""

    kind: str
    payload: dict[str, Any] = field(default_factory=dict)
    priority: int = DEFAULT_PRIORITY
    queue: str = "default"
    run_at: datetime | None = None
    enqueued_at: datetime | None = None
    max_attempts: int | None = None
    timeout_s: int | None = None
    batch_key: str | None = None
    dedupe_key: str | None = None


@dataclass(frozen=True, slots=True)
class Enqueued:
    """What happened to one task of a bulk enqueue.

    ``status`` is ``queued`` (pending), ``dropped`` (stored, not pending: its bounded queue
    was full and its priority below the queue's drop threshold) or ``rejected`` (not stored:
    the queue was full; ``id`` is None).
    """

    id: int | None
    status: str
