"""Priority commands: boost rules, their variables, and tier target waits."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from angela_queue.cli.common import CliError, DsnOption, app, load_settings, out, resolve_dsn
from angela_queue.client import connect
from angela_queue.store import TaskStore
from angela_queue.types import Tier

rules_app = typer.Typer(
    help="Boost rules: jsonpath predicates that raise a task's priority.", no_args_is_help=True
)
tiers_app = typer.Typer(help="Tiers and their target waits.", no_args_is_help=True)
app.add_typer(rules_app, name="rules")
app.add_typer(tiers_app, name="tiers")

NameArg = Annotated[str, typer.Argument(help="Rule name.")]


def _store(dsn: str | None) -> tuple[Any, TaskStore]:
    conn = connect(resolve_dsn(load_settings(dsn=dsn)), autocommit=True)
    return conn, TaskStore(conn)


def _json_arg(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"{what} is not valid JSON: {exc}") from None


@rules_app.command("list")
def rules_list(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    dsn: DsnOption = None,
) -> None:
    """List boost rules (applied by the database to every insert)."""
    conn, store = _store(dsn)
    with conn:
        rows, variables = store.rule_list(), store.rule_var_list()
    if as_json:
        out.print_json(json.dumps({"rules": rows, "vars": variables}))
        return
    table = Table(title="boost rules")
    for col in ("name", "boost", "enabled", "predicate", "description"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["name"],
            f"{r['boost']:+d}",
            "yes" if r["enabled"] else "no",
            r["predicate"],
            r["description"],
        )
    out.print(table)
    out.print(
        "variables: " + ", ".join(f"${v['name']} = {json.dumps(v['value'])}" for v in variables)
    )


@rules_app.command("add")
def rules_add(
    name: NameArg,
    predicate: Annotated[str, typer.Argument(help="jsonpath predicate, e.g. '$.vip == true'.")],
    boost: Annotated[int, typer.Option(help="Points added (negative lowers), -9..9.")],
    description: Annotated[str, typer.Option(help="What the rule is for.")] = "",
    enabled: Annotated[bool, typer.Option("--enabled/--disabled")] = True,
    dsn: DsnOption = None,
) -> None:
    """Add a rule; it applies to tasks inserted from now on, never to older ones."""
    conn, store = _store(dsn)
    with conn:
        row = store.rule_insert(name, predicate, boost, enabled, description)
    out.print(f"rule {row['name']}: {row['boost']:+d} when {row['predicate']}")


def _set_enabled(name: str, enabled: bool, dsn: str | None) -> None:
    conn, store = _store(dsn)
    with conn:
        if not store.rule_set_enabled(name, enabled):
            raise CliError(f"no rule named {name!r}")
    out.print(f"rule {name} {'enabled' if enabled else 'disabled'}")


@rules_app.command("enable")
def rules_enable(name: NameArg, dsn: DsnOption = None) -> None:
    """Enable a rule (for later inserts)."""
    _set_enabled(name, True, dsn)


@rules_app.command("disable")
def rules_disable(name: NameArg, dsn: DsnOption = None) -> None:
    """Disable a rule (for later inserts)."""
    _set_enabled(name, False, dsn)


@rules_app.command("remove")
def rules_remove(name: NameArg, dsn: DsnOption = None) -> None:
    """Remove a rule."""
    conn, store = _store(dsn)
    with conn:
        if not store.rule_delete(name):
            raise CliError(f"no rule named {name!r}")
    out.print(f"rule {name} removed")


@rules_app.command("test")
def rules_test(
    payload: Annotated[str, typer.Argument(help="A task payload (JSON object).")],
    dsn: DsnOption = None,
) -> None:
    """Show which enabled rules a payload matches, and the total boost."""
    data = _json_arg(payload, "the payload")
    if not isinstance(data, dict):
        raise CliError("the payload must be a JSON object")
    conn, store = _store(dsn)
    with conn:
        matched = store.rule_match(data)
    for m in matched:
        out.print(f"{m['name']}: {m['boost']:+d}")
    out.print(f"total boost: {sum(m['boost'] for m in matched):+d}")


@rules_app.command("set-var")
def rules_set_var(
    name: Annotated[str, typer.Argument(help="Variable name, used as $name in predicates.")],
    value: Annotated[str, typer.Argument(help="JSON value, e.g. '\"alice\"' or 3.")],
    dsn: DsnOption = None,
) -> None:
    """Set a variable rules may use (e.g. author, the seeded rules' $author)."""
    data = _json_arg(value, "the value")
    conn, store = _store(dsn)
    with conn:
        store.rule_var_set(name, data)
    out.print(f"${name} = {json.dumps(data)}")


@rules_app.command("remove-var")
def rules_remove_var(name: Annotated[str, typer.Argument()], dsn: DsnOption = None) -> None:
    """Remove a variable no rule uses."""
    conn, store = _store(dsn)
    with conn:
        if not store.rule_var_delete(name):
            raise CliError(f"no variable named {name!r}")
    out.print(f"${name} removed")


@tiers_app.command("list")
def tiers_list(dsn: DsnOption = None) -> None:
    """Tiers, their base-priority ranges and default target waits."""
    conn, store = _store(dsn)
    with conn:
        rows = store.tier_list()
    for r in rows:
        out.print(
            f"{r['tier']:<9} base {r['min_base']}-{r['max_base']:<3} "
            f"target wait {r['target_wait_s']:g} s"
        )


@tiers_app.command("set")
def tiers_set(
    tier: Annotated[Tier, typer.Argument(help="critical, high, medium or low.")],
    target_wait: Annotated[float, typer.Option(min=0, help="Seconds before start.")],
    dsn: DsnOption = None,
) -> None:
    """Change a tier's default target wait (for tasks inserted from now on)."""
    conn, store = _store(dsn)
    with conn:
        store.tier_set_target_wait(tier.value, target_wait)
    out.print(f"{tier.value}: target wait {target_wait:g} s")


def parse_target_waits(items: list[str]) -> list[tuple[str, float | None]]:
    """``high=30`` → (high, 30.0); ``high=`` removes the override (pure)."""
    parsed: list[tuple[str, float | None]] = []
    for item in items:
        tier, sep, seconds = item.partition("=")
        if not sep or tier not in {t.value for t in Tier}:
            raise CliError(f"--target-wait must look like TIER=SECONDS, got {item!r}")
        try:
            value = float(seconds) if seconds else None
        except ValueError:
            raise CliError(f"--target-wait {item!r}: {seconds!r} is not a number") from None
        if value is not None and value < 0:
            raise CliError(f"--target-wait {item!r}: a wait cannot be negative")
        parsed.append((tier, value))
    return parsed
