"""The conversations of the demo, and how each becomes four learning tasks.

Deterministic (a seeded Random), so that every run tells the same story: 56 conversations
whose analyses average importance 8.6, some emotional, a few urgent messages from the
assistant's user david, questions, and other users whose "urgent" earns no author boost.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from angela_queue import EnqueueRequest
from angela_queue.demo.app import QUEUE

BURST = 48  # conversations whose tasks arrive at once
LIVE = 8  # conversations that end while the workers drain the burst
URGENT_LIVE = 1  # which live conversation is david's urgent message (the second)
BACKDATED = 2  # consolidations imported from another system, 40 minutes old

TEXTS: dict[str, tuple[str, ...]] = {
    "urgent": (
        "Urgent: the investor demo moved to 9am, can you prep my notes?",
        "This is urgent, my flight was cancelled and I need a new route tonight.",
        "urgent - the backup job failed again. What should I check first?",
        "It's urgent: the contract draft, before my 3pm call.",
    ),
    "emotional": (
        "I'm really anxious about tomorrow's talk.",
        "My grandmother is in hospital and I can't focus on anything.",
        "I got the job!! I still can't believe it.",
        "Feeling lonely since the move, honestly.",
    ),
    "question": (
        "What was the name of the book you recommended last week?",
        "Can you summarise what we decided about the kitchen?",
        "How many hours did I sleep on average this week?",
        "Which of my plants needs water today?",
    ),
    "routine": (
        "Add oat milk to the shopping list.",
        "Thanks, that recipe worked perfectly.",
        "Schedule a run for Saturday morning.",
        "Play something calm while I cook.",
    ),
    # Other users: their "urgent" and questions get no author boost.
    "others": (
        "Is it urgent that I renew my passport before June?",
        "Remind me to call the plumber.",
        "What's a good name for a cat?",
    ),
}
URGENT_TEXT = "Urgent: I'm locked out and the landlord isn't answering. What do I do?"


@dataclass(frozen=True)
class Conversation:
    """One finished conversation; it becomes four learning tasks."""

    number: int
    author: str
    text: str
    emotional: bool
    importance: int  # the priority of its analysis
    note: str = ""

    @property
    def id(self) -> str:
        return f"c{self.number:03d}"

    def analysis(self) -> dict[str, Any]:
        payload: dict[str, Any] = {"conversation_id": self.id, "author": self.author}
        payload |= {"text": self.text, "emotional": self.emotional}
        return payload | ({"live": True, "note": self.note} if self.note else {})

    def followups(self, imported: bool = False) -> list[EnqueueRequest]:
        """Patterns (medium), insights (low; +2 if emotional), consolidation (low, batched)."""
        ref = {"conversation_id": self.id, "author": self.author}
        reqs = [
            EnqueueRequest("pattern.learn", ref, priority=5 + self.number % 2, queue=QUEUE),
            EnqueueRequest(
                "insight.extract", ref | {"emotional": self.emotional}, priority=4, queue=QUEUE
            ),
        ]
        if not imported:
            # Routine: batched (examples/learning.py), one user's memories together.
            consolidate = EnqueueRequest(
                "memory.consolidate",
                ref,
                priority=2 + self.number % 2,
                queue=QUEUE,
                batch_key=self.author,
            )
            reqs.append(consolidate)
        return reqs


def conversations(rng: random.Random) -> list[Conversation]:
    """56 conversations whose analyses average importance 8.6; the more pressing the mood,
    the more important (a cat-name question from another user ranks lowest)."""
    importance = [10] * 20 + [9] * 14 + [8] * 12 + [7] * 5 + [5] * 4  # + the urgent one: 7
    moods = ["urgent"] * 4 + ["emotional"] * 10 + ["question"] * 12
    moods += ["routine"] * (len(importance) - len(moods) - 6) + ["others"] * 6
    pairs = list(zip(moods, importance, strict=True))
    rng.shuffle(pairs)
    urgent_at = BURST + URGENT_LIVE
    out = []
    for i, (mood, imp) in enumerate([*pairs[:urgent_at], ("", 7), *pairs[urgent_at:]]):
        number, note = i + 1, ("live" if i >= BURST else "")
        if not mood:
            out.append(Conversation(number, "david", URGENT_TEXT, True, imp, "live, urgent"))
            continue
        author = rng.choice(("maria", "sam")) if mood == "others" else "david"
        text = rng.choice(TEXTS[mood])
        out.append(Conversation(number, author, text, mood == "emotional", imp, note))
    return out
