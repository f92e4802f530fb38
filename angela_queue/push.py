"""Push (migration 0017): an idle worker's offer, filled by the producer's commit.

A worker about to sleep leaves an offer of one slot; the next transaction that makes work
for it claims the best due task on its behalf as it commits and sends the row on the
worker's own channel, so the task starts without a claim round trip. ``Offers`` is the
worker's bookkeeping of that slot (pure, no I/O); ``parse_push`` reads a notification.

The slot of an offer is reserved from the moment it is made until its push arrives or its
withdrawal comes back, whichever the worker learns first:

- a withdrawal that deletes the offer gives the slot back;
- a withdrawal that finds the offer gone means a producer filled it: the push is on its way
  and keeps its slot ("awaited") until it comes;
- after the listener reconnected (a push may have been lost with the old session) or when
  an awaited push is late, the worker adopts the running tasks it does not know, and a
  notification that arrives afterwards for one of them is ignored.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from angela_queue.types import Task

CHANNEL_PREFIX = "angela_queue_w"  # + worker id: the channel pushes arrive on
# An awaited push normally comes within milliseconds of the withdrawal that learnt of it;
# after this long the worker adopts instead (a notification lost with its listener).
AWAITED_LATE_S = 2.0
ADOPTED_MEMORY = 1024  # adopted task ids remembered, to ignore their late notifications


def channel(worker_id: int) -> str:
    return f"{CHANNEL_PREFIX}{worker_id}"


@dataclass(frozen=True, slots=True)
class Push:
    """One notification: the offer it filled, the task's id, the task itself unless the
    row was too large for NOTIFY (or undecodable here), in which case the worker reads it."""

    offer_id: int
    task_id: int
    task: Task | None


def parse_push(payload: str, worker_id: int) -> Push:
    """Read one push notification: "<offer id> <task id> <row as JSON>" (offers_fill)."""
    offer_id, task_id, *rest = payload.split(" ", 2)
    try:
        row: dict[str, Any] | None = json.loads(rest[0]) if rest else None
    except RecursionError:
        # Nested too deeply for json: the worker reads the row from the database instead,
        # whose decoder turns such a payload into an UndecodablePayload (payload.py).
        row = None
    if row is None:
        return Push(int(offer_id), int(task_id), None)
    task = Task(
        id=int(task_id),
        queue=row["queue"],
        kind=row["kind"],
        payload=row["payload"],
        priority=row["priority"],
        boost=row["boost"],
        tier=row["tier"],
        attempts=row["attempts"],
        max_attempts=row["max_attempts"],
        enqueued_at=datetime.fromisoformat(row["enqueued_at"]),
        run_at=datetime.fromisoformat(row["run_at"]),
        deadline_at=datetime.fromisoformat(row["deadline_at"]),
        started_at=datetime.fromisoformat(row["started_at"]),
        batch_key=row["batch_key"],
        dedupe_key=row["dedupe_key"],
        timeout_s=row["timeout_s"],
        effective_priority=float(row["effective_priority"]),
        worker_id=worker_id,
    )
    return Push(int(offer_id), int(task_id), task)


class Offers:
    """One worker's offer and the pushes it waits for (see the module docstring)."""

    def __init__(self) -> None:
        self.standing: int | None = None  # the offer in the table, as far as we know
        self.awaited: dict[int, float] = {}  # filled offers → when we learnt (monotonic)
        self._last_id = 0
        self._adopted: dict[int, None] = {}  # insertion-ordered set, oldest first

    def reserved(self) -> int:
        """Slots held for pushes: the standing offer's and the awaited ones'."""
        return (self.standing is not None) + len(self.awaited)

    def next_offer_id(self) -> int:
        self._last_id += 1
        return self._last_id

    def offered(self, offer_id: int) -> None:
        self.standing = offer_id

    def withdrawn(self, deleted: int | None) -> bool:
        """The withdrawal of the standing offer came back: ``deleted`` is the offer id it
        deleted, None when a producer had filled it. True when the slot is free again."""
        offer_id, self.standing = self.standing, None
        if deleted is not None or offer_id is None:
            return True
        self.awaited[offer_id] = time.monotonic()
        return False

    def received(self, push: Push, running: bool) -> bool:
        """A push came; ``running`` says whether its task already runs here. True: start it
        (or, without its row, fetch and start it)."""
        if self.standing == push.offer_id:
            self.standing = None
        self.awaited.pop(push.offer_id, None)
        if push.task_id in self._adopted:
            del self._adopted[push.task_id]
            return False
        return not running

    def adopted(self, task_ids: list[int]) -> None:
        """The worker withdrew its offer and adopted ``task_ids``: every push filled so far
        has been seen, by notification or by that adoption."""
        self.standing = None
        self.awaited.clear()
        for task_id in task_ids:
            self._adopted[task_id] = None
        while len(self._adopted) > ADOPTED_MEMORY:
            del self._adopted[next(iter(self._adopted))]

    def late(self, now: float | None = None) -> bool:
        """An awaited push is later than AWAITED_LATE_S: time to adopt."""
        now = time.monotonic() if now is None else now
        return any(now - since > AWAITED_LATE_S for since in self.awaited.values())
