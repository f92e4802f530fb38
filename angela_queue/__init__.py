"""angela-queue: a durable job queue that lives in PostgreSQL."""

from __future__ import annotations

from angela_queue.client import App
from angela_queue.errors import (
    AngelaQueueError,
    BatchPartialFailure,
    ConfigurationError,
    DatabaseError,
    InvalidTask,
    PayloadTooLarge,
    QueueFull,
    Retry,
    SchemaError,
    TaskNotFound,
    TaskNotRegistered,
    UnknownQueue,
)
from angela_queue.settings import Settings
from angela_queue.types import Enqueued, EnqueueRequest, Task, TaskState, Tier

__all__ = [
    "AngelaQueueError",
    "App",
    "BatchPartialFailure",
    "ConfigurationError",
    "DatabaseError",
    "EnqueueRequest",
    "Enqueued",
    "InvalidTask",
    "PayloadTooLarge",
    "QueueFull",
    "Retry",
    "SchemaError",
    "Settings",
    "Task",
    "TaskNotFound",
    "TaskNotRegistered",
    "TaskState",
    "Tier",
    "UnknownQueue",
]
__version__ = "0.1.0"
