"""Exceptions raised by angela-queue.

    AngelaQueueError
    ├── ConfigurationError      bad settings, flags or DSN
    ├── SchemaError             database not migrated, or at an unknown revision
    ├── TaskNotRegistered       a kind with no handler in this App
    ├── InvalidTask             the database refused the task (kind, priority, payload …)
    │   ├── UnknownQueue        the queue does not exist
    │   └── PayloadTooLarge     the payload is over the size limit
    ├── QueueFull               a bounded queue had no room within the wait
    ├── InvalidRule             a boost rule or rule variable the database refused
    ├── TaskNotFound            no task with that id
    └── DatabaseError           any other database failure (``__cause__`` keeps the original)

Handler-facing control flow (not errors): ``Retry`` asks for another attempt later;
``BatchPartialFailure`` fails some tasks of a batch and lets the others succeed.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any


class AngelaQueueError(Exception):
    """An angela-queue operation failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigurationError(AngelaQueueError):
    """The configuration is invalid."""


class SchemaError(AngelaQueueError):
    """The database schema is missing or out of date: run `angela-queue migrate`."""


class TaskNotRegistered(AngelaQueueError):
    """No handler is registered for this task kind."""

    def __init__(self, kind: str, known: Iterable[str] = ()) -> None:
        self.kind = kind
        close = difflib.get_close_matches(kind, list(known), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        super().__init__(f"no handler registered for kind {kind!r}{hint}")


class InvalidTask(AngelaQueueError):
    """The database rejected the task."""

    def __init__(self, message: str | None = None, constraint: str | None = None) -> None:
        self.constraint = constraint
        super().__init__(message)


class UnknownQueue(InvalidTask):
    """The queue does not exist."""

    def __init__(self, queue: str) -> None:
        self.queue = queue
        # The hint repeats the name only when it is one (a hostile name stays on one line).
        hint = (
            f": create it with `angela-queue queue set {queue}`"
            if re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,62}", queue)
            else " (and not a valid queue name)"
        )
        super().__init__(f"unknown queue {queue!r}{hint}")


class PayloadTooLarge(InvalidTask):
    """The payload is larger than the configured limit."""


class InvalidRule(AngelaQueueError):
    """The boost rule was refused."""


class QueueFull(AngelaQueueError):
    """The bounded queue is full."""

    def __init__(self, queue: str, detail: str | None = None) -> None:
        self.queue = queue
        super().__init__(detail or f"queue {queue!r} is full")


class TaskNotFound(AngelaQueueError):
    """No task with this id exists."""

    def __init__(self, task_id: int) -> None:
        self.task_id = task_id
        super().__init__(f"no task with id {task_id}")


class DatabaseError(AngelaQueueError):
    """The database operation failed."""


MAX_RETRY_DELAY_S = 100 * 365.25 * 86400


class Retry(Exception):
    """Raised by a handler to ask for another attempt after ``delay_s`` seconds.

    The attempt still counts toward ``max_attempts``.
    """

    def __init__(self, delay_s: float | None = None, reason: str = "retry requested") -> None:
        if delay_s is not None and not (
            isinstance(delay_s, int | float)
            and not isinstance(delay_s, bool)
            and math.isfinite(delay_s)
            and delay_s <= MAX_RETRY_DELAY_S
        ):
            # Raised in the handler, so the attempt fails with this message (and backs
            # off): an infinite or absurd delay would otherwise reach the database's clock
            # arithmetic and fail the whole flush of outcomes it was written with.
            raise ValueError(
                f"Retry delay_s must be a number of seconds up to {MAX_RETRY_DELAY_S:.0f}"
                f" (100 years), not {delay_s!r}"
            )
        self.delay_s = delay_s
        self.reason = reason
        super().__init__(reason)


class BatchPartialFailure(Exception):
    """Raised by a batch handler: the tasks in ``failed`` fail, every other task succeeds.

    ``failed`` maps task ids to their error (an exception or a message); ``results`` may give
    the succeeded tasks' results by id. Failed tasks retry per their own attempts.
    """

    def __init__(
        self, failed: Mapping[int, BaseException | str], results: Mapping[int, Any] | None = None
    ) -> None:
        self.failed = dict(failed)
        self.results = dict(results or {})
        super().__init__(f"{len(self.failed)} task(s) of the batch failed")
