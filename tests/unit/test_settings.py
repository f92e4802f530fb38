"""Settings precedence: defaults → profile → file → environment → flags (DESIGN.md §8)."""

from __future__ import annotations

import pytest

from angela_queue.errors import ConfigurationError
from angela_queue.settings import Settings, redact_dsn


def test_defaults_are_the_standard_profile(tmp_path):
    s = Settings.load(env={}, cwd=tmp_path)
    assert (s.profile, s.base_workers, s.min_workers, s.max_workers) == ("standard", 4, 2, 6)
    assert (s.max_queue_size, s.check_interval_s) == (50, 60.0)
    assert (s.heartbeat_s, s.heartbeat_timeout_s, s.timeout_s) == (5.0, 30.0, 60)
    assert (s.scale_up_threshold, s.scale_down_threshold) == (10, 2)
    assert s.dsn is None


@pytest.mark.parametrize(
    ("profile", "expected"),
    [("low", (2, 2, 4, 20, 300.0)), ("high", (6, 4, 8, 100, 30.0))],
)
def test_profiles_carry_the_recommended_numbers(tmp_path, profile, expected):
    s = Settings.load({"profile": profile}, env={}, cwd=tmp_path)
    got = (s.base_workers, s.min_workers, s.max_workers, s.max_queue_size, s.check_interval_s)
    assert got == expected


def test_file_overrides_profile_env_overrides_file_flags_override_env(tmp_path):
    (tmp_path / "angela-queue.toml").write_text(
        'profile = "high"\nconcurrency = 7\nmax-workers = 12\nheartbeat_s = 2.0\n'
    )
    env = {"ANGELA_QUEUE_CONCURRENCY": "9", "ANGELA_QUEUE_QUEUES": "a, b"}
    s = Settings.load({"heartbeat_s": 3.0, "concurrency": None}, env=env, cwd=tmp_path)
    assert s.profile == "high"
    assert s.min_workers == 4  # from the profile
    assert s.max_workers == 12  # file beats profile
    assert s.concurrency == 9  # env beats file; a None flag is ignored
    assert s.heartbeat_s == 3.0  # flag beats file
    assert s.queues == ("a", "b")


def test_pyproject_tool_table_is_read(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[tool.angela-queue]\nconcurrency = 3\n")
    assert Settings.load(env={}, cwd=tmp_path).concurrency == 3


def test_dsn_from_database_url_and_angela_queue_dsn_wins(tmp_path):
    assert Settings.load(env={"DATABASE_URL": "postgresql:///a"}, cwd=tmp_path).dsn == (
        "postgresql:///a"
    )
    env = {"DATABASE_URL": "postgresql:///a", "ANGELA_QUEUE_DSN": "postgresql:///b"}
    assert Settings.load(env=env, cwd=tmp_path).dsn == "postgresql:///b"


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"ANGELA_QUEUE_CONCURRENCY": "many"}, "concurrency"),
        ({"ANGELA_QUEUE_CONCURRENCY": "0"}, "concurrency"),
        ({"ANGELA_QUEUE_LISTEN": "maybe"}, "listen"),
        ({"ANGELA_QUEUE_PROFILE": "huge"}, "profile"),
        ({"ANGELA_QUEUE_HEARTBEAT_TIMEOUT_S": "1"}, "heartbeat_timeout_s"),
    ],
)
def test_bad_values_are_one_clear_error(tmp_path, env, fragment):
    with pytest.raises(ConfigurationError, match=fragment):
        Settings.load(env=env, cwd=tmp_path)


def test_unknown_file_setting_is_refused(tmp_path):
    (tmp_path / "angela-queue.toml").write_text("concurency = 3\n")
    with pytest.raises(ConfigurationError, match="unknown setting"):
        Settings.load(env={}, cwd=tmp_path)


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://app:s3cret@db.example:5432/jobs",
        "host=db.example user=app password=s3cret dbname=jobs",
    ],
)
def test_redacted_dsn_never_shows_the_password(dsn):
    shown = redact_dsn(dsn)
    assert "s3cret" not in shown
    assert "db.example" in shown


def test_prepare_off_turns_server_side_prepared_statements_off(tmp_path):
    assert Settings().connection_kwargs() == {}
    off = Settings.load(env={"ANGELA_QUEUE_PREPARE": "false"}, cwd=tmp_path)
    assert off.prepare is False
    assert off.connection_kwargs() == {"prepare_threshold": None}
