"""Task registry: kind → handler. The registry is the allowlist: a kind never names code."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from angela_queue.errors import ConfigurationError, TaskNotRegistered

KIND_PATTERN = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")


@dataclass(frozen=True)
class Handler:
    """A registered handler and how to run it."""

    kind: str
    func: Callable[..., Any]
    is_async: bool
    transactional: bool = False
    timeout_s: int | None = None
    max_attempts: int | None = None
    queue: str | None = None
    batch: bool = False
    batch_size: int = 5
    batch_wait_s: float = 2.0


class Registry:
    """Handlers of one App, by kind."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def add(self, handler: Handler) -> None:
        if not KIND_PATTERN.fullmatch(handler.kind) or len(handler.kind) > 200:
            raise ConfigurationError(
                f"invalid kind {handler.kind!r}: use a lowercase dotted identifier"
            )
        if handler.kind in self._handlers:
            raise ConfigurationError(f"a handler for {handler.kind!r} is already registered")
        if handler.batch and not (1 <= handler.batch_size <= 1000 and handler.batch_wait_s >= 0):
            raise ConfigurationError(
                f"{handler.kind!r}: batch_size must be 1..1000 and batch_wait_s not negative"
            )
        if handler.batch and handler.transactional:
            raise ConfigurationError(f"{handler.kind!r}: a batch handler cannot be transactional")
        self._handlers[handler.kind] = handler

    def get(self, kind: str) -> Handler:
        try:
            return self._handlers[kind]
        except KeyError:
            raise TaskNotRegistered(kind, self._handlers) from None

    def kinds(self) -> list[str]:
        return sorted(self._handlers)

    def __contains__(self, kind: object) -> bool:
        return kind in self._handlers

    def __iter__(self) -> Iterator[Handler]:
        return iter(self._handlers.values())

    def __len__(self) -> int:
        return len(self._handlers)


def is_async_callable(func: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(
        getattr(func, "__call__", None)  # noqa: B004 - callable objects
    )
