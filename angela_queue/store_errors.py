"""Database errors into angela-queue errors, keyed by SQLSTATE and constraint name."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import psycopg
from psycopg import errors as pg_errors

from angela_queue import errors

# Friendly messages for the CHECK constraints a producer can trip.
CONSTRAINT_MESSAGES = {
    "tasks_kind_check": (
        "invalid kind: use a lowercase dotted identifier like 'conversation.analyze'"
    ),
    "tasks_priority_check": "priority must be between 1 and 10",
    "tasks_payload_check": "payload must be a JSON object",
    "tasks_max_attempts_check": "max_attempts must be between 1 and 1000",
    "tasks_timeout_s_check": "timeout_s must be between 1 and 604800 seconds",
    "tasks_dedupe_key_check": "dedupe_key must be at most 500 characters",
    "tasks_run_at_check": "run_at must be a finite time",
    "tasks_enqueued_at_check": "enqueued_at must be a finite time",
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


@contextlib.contextmanager
def translate_errors(queue: str | None = None) -> Iterator[None]:
    """Turn psycopg errors into angela-queue errors, keyed by SQLSTATE and constraint."""
    try:
        yield
    except psycopg.Error as exc:
        raise translate(exc, queue) from exc
    except RecursionError as exc:  # json.dumps of a payload nested thousands of levels deep
        raise errors.InvalidTask("payload is nested too deeply to encode as JSON") from exc


def translate(exc: psycopg.Error, queue: str | None = None) -> errors.AngelaQueueError:
    """The domain error for a database error."""
    diag = exc.diag
    message = diag.message_primary or str(exc)
    if exc.sqlstate == "AQ001":
        named = re.fullmatch(r'unknown queue "(.*)"', message)
        return errors.UnknownQueue(queue or (named.group(1) if named else message))
    if exc.sqlstate == "AQ003":
        return errors.PayloadTooLarge(message)
    if exc.sqlstate == "AQ002":
        return errors.QueueFull(queue or "?", message)
    if exc.sqlstate == "AQ005":
        return errors.InvalidTask(message)
    if exc.sqlstate == "23503" and diag.constraint_name == "queue_waiters_queue_fkey":
        # A worker arming a queue deleted meanwhile: "Key (queue)=(name) is not present …".
        named = re.match(r"Key \(queue\)=\((.*)\) is not present", diag.message_detail or "")
        return errors.UnknownQueue(queue or (named.group(1) if named else message))
    if isinstance(exc, pg_errors.CheckViolation | pg_errors.NotNullViolation):
        constraint = diag.constraint_name
        text = CONSTRAINT_MESSAGES.get(constraint or "", message)
        return errors.InvalidTask(text, constraint=constraint)
    if isinstance(exc, pg_errors.UndefinedTable | pg_errors.InvalidSchemaName):
        return errors.SchemaError()
    if isinstance(exc, pg_errors.InvalidTextRepresentation | pg_errors.NumericValueOutOfRange):
        return errors.InvalidTask(message)
    if exc.sqlstate == "22P05" or (exc.sqlstate is None and "NUL (0x00)" in message):
        # NUL: psycopg refuses it in text parameters (no SQLSTATE), jsonb in strings (22P05).
        return errors.InvalidTask(f"{message} (the NUL character \\u0000 cannot be stored)")
    return errors.DatabaseError(message)


def rule_error(exc: psycopg.Error) -> errors.AngelaQueueError:
    message = (exc.diag.message_primary or str(exc)).strip()
    if exc.sqlstate == "AQ004":
        return errors.InvalidRule(message)
    if isinstance(exc, pg_errors.CheckViolation):
        return errors.InvalidRule(CONSTRAINT_MESSAGES.get(exc.diag.constraint_name or "", message))
    if isinstance(exc, pg_errors.SyntaxError | pg_errors.UndefinedObject | pg_errors.DataError):
        return errors.InvalidRule(f"invalid predicate: {message}")
    return translate(exc)
