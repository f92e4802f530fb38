"""One settings object: defaults → profile → config file → environment → flags (DESIGN.md §8)."""

from __future__ import annotations

import dataclasses
import os
import tempfile
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from angela_queue.errors import ConfigurationError

ENV_PREFIX = "ANGELA_QUEUE_"
CONFIG_FILE = "angela-queue.toml"

# Supervisor profiles (DESIGN.md §6): base, min, max workers, queue bound, check interval.
PROFILES: dict[str, dict[str, Any]] = {
    "low": {
        "base_workers": 2,
        "min_workers": 2,
        "max_workers": 4,
        "max_queue_size": 20,
        "check_interval_s": 300.0,
    },
    "standard": {
        "base_workers": 4,
        "min_workers": 2,
        "max_workers": 6,
        "max_queue_size": 50,
        "check_interval_s": 60.0,
    },
    "high": {
        "base_workers": 6,
        "min_workers": 4,
        "max_workers": 8,
        "max_queue_size": 100,
        "check_interval_s": 30.0,
    },
}


def default_pgdata() -> str:
    """Embedded server data directory: under the temp dir, never under root's home."""
    return str(Path(tempfile.gettempdir()) / f"angela-queue-{os.getuid()}" / "pgdata")


@dataclass(frozen=True)
class Settings:
    """Every tunable of angela-queue, validated on creation."""

    dsn: str | None = None
    profile: str = "standard"
    queues: tuple[str, ...] = ("default",)
    concurrency: int = 4
    listen: bool = True
    # An idle worker leaves an offer that the next producer's commit fills (migration
    # 0017): its task starts without a claim round trip. Needs listen.
    push: bool = True
    # Server-side prepared statements (psycopg prepares a query after 5 runs on a
    # connection); off behind a transaction-mode pooler that cannot track them.
    prepare: bool = True
    # Adaptive poll (DESIGN.md §4): fast when busy, slow when idle.
    poll_busy_s: float = 0.1
    poll_normal_s: float = 0.5
    poll_idle_s: float = 1.0
    heartbeat_s: float = 5.0
    heartbeat_timeout_s: float = 30.0
    timeout_s: int = 60
    max_attempts: int = 5
    retry_base_s: float = 1.0
    retry_max_s: float = 3600.0
    shutdown_grace_s: float = 30.0
    enqueue_wait_s: float = 5.0
    pool_size: int = 4
    base_workers: int = 4
    min_workers: int = 2
    max_workers: int = 6
    max_queue_size: int = 50
    check_interval_s: float = 60.0
    scale_up_threshold: int = 10
    scale_down_threshold: int = 2
    max_spawn_per_check: int = 4
    supervisor_kill_grace_s: float = 10.0
    # Finished tasks and dead worker rows older than this are deleted (0 keeps everything).
    retention_s: float = 7 * 86400.0
    pgdata: str = dataclasses.field(default_factory=default_pgdata)
    log_level: str = "INFO"

    def connection_kwargs(self) -> dict[str, Any]:
        """psycopg keyword arguments for every connection of this configuration."""
        return {} if self.prepare else {"prepare_threshold": None}

    def __post_init__(self) -> None:
        problems = _problems(self)
        if problems:
            raise ConfigurationError("invalid settings: " + "; ".join(problems))

    @classmethod
    def load(
        cls,
        overrides: Mapping[str, Any] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Settings:
        """Build settings from every source, later sources winning; None overrides are ignored."""
        env = os.environ if env is None else env
        file_values = _read_config_file(cwd or Path.cwd())
        env_values = _read_env(env)
        flag_values = {k: v for k, v in (overrides or {}).items() if v is not None}
        profile = (
            flag_values.get("profile")
            or env_values.get("profile")
            or file_values.get("profile", "standard")
        )
        if profile not in PROFILES:
            raise ConfigurationError(
                f"unknown profile {profile!r} (choose from {', '.join(PROFILES)})"
            )
        values: dict[str, Any] = {"profile": profile, **PROFILES[profile]}
        for source in (file_values, env_values, flag_values):
            values.update(source)
        return cls(**_coerce_all(values))


def redact_dsn(dsn: str) -> str:
    """Hide the password of a URI or key=value DSN."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    try:
        params = conninfo_to_dict(dsn)
    except Exception:
        return "(unparseable DSN)"
    if "password" in params:
        params["password"] = "***"
    return make_conninfo("", **params)


_FIELDS = {f.name: f for f in fields(Settings)}


def _problems(s: Settings) -> list[str]:
    out = []
    if s.profile not in PROFILES:
        out.append(f"profile must be one of {', '.join(PROFILES)}")
    if not s.queues:
        out.append("queues must not be empty")
    if not 1 <= s.concurrency <= 1000:
        out.append("concurrency must be between 1 and 1000")
    for name in (
        "poll_busy_s",
        "poll_normal_s",
        "poll_idle_s",
        "heartbeat_s",
        "retry_base_s",
        "check_interval_s",
    ):
        if getattr(s, name) <= 0:
            out.append(f"{name} must be positive")
    if s.heartbeat_timeout_s <= s.heartbeat_s:
        out.append("heartbeat_timeout_s must be larger than heartbeat_s")
    if not 1 <= s.max_attempts <= 1000:
        out.append("max_attempts must be between 1 and 1000")
    if s.timeout_s < 1:
        out.append("timeout_s must be at least 1")
    if not 1 <= s.min_workers <= s.max_workers:
        out.append("need 1 <= min_workers <= max_workers")
    if s.retention_s < 0:
        out.append("retention_s must not be negative (0 keeps everything)")
    if s.shutdown_grace_s < 0 or s.enqueue_wait_s < 0:
        out.append("shutdown_grace_s and enqueue_wait_s must not be negative")
    return out


def _read_config_file(cwd: Path) -> dict[str, Any]:
    own = cwd / CONFIG_FILE
    if own.exists():
        return _parse_toml(own, lambda d: d)
    pyproject = cwd / "pyproject.toml"
    if pyproject.exists():
        return _parse_toml(pyproject, lambda d: d.get("tool", {}).get("angela-queue", {}))
    return {}


def _parse_toml(path: Path, pick: Any) -> dict[str, Any]:
    try:
        data = pick(tomllib.loads(path.read_text()))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{path}: {exc}") from exc
    values = {k.replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        raise ConfigurationError(f"{path}: unknown setting(s): {', '.join(unknown)}")
    return values


def _read_env(env: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if env.get("DATABASE_URL"):
        values["dsn"] = env["DATABASE_URL"]
    for key, raw in env.items():
        if not key.startswith(ENV_PREFIX):
            continue
        name = key[len(ENV_PREFIX) :].lower()
        if name in _FIELDS and name not in ("test_dsn",):
            values[name] = raw
    return values


def _coerce_all(values: dict[str, Any]) -> dict[str, Any]:
    return {name: _coerce(name, value) for name, value in values.items() if name in _FIELDS}


def _coerce(name: str, value: Any) -> Any:
    kind = str(_FIELDS[name].type)
    try:
        if kind.startswith("tuple"):
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(str(i).strip() for i in items if str(i).strip())
        if kind == "int":
            if isinstance(value, bool):
                raise ValueError
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "bool":
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            return bool(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"setting {name}: cannot use {value!r} as {kind}") from None
    return None if value is None else str(value)
