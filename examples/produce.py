"""Enqueue a finished conversation's learning work from Python: `python produce.py`.

Next to learning.py, whose app brings the handlers' defaults (queue "learning", timeout).
"""

from __future__ import annotations

from learning import app


def conversation_ended(conversation: str, author: str, text: str, importance: int) -> int:
    ref = {"conversation_id": conversation, "author": author}
    task_id = app.enqueue("conversation.analyze", {**ref, "text": text}, priority=importance)
    app.enqueue_many(  # one transaction, one statement per 500 tasks
        [
            {"kind": "pattern.learn", "payload": ref, "priority": 5},
            {"kind": "insight.extract", "payload": ref, "priority": 4},
            {"kind": "memory.consolidate", "payload": ref, "priority": 2, "batch_key": author},
        ]
    )
    return task_id


if __name__ == "__main__":
    print(conversation_ended("c101", "david", "Is the 3pm call still on?", importance=6))
