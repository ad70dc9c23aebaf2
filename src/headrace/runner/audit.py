"""The audit in write-audit-publish: run a table's checks on its staged rows.

Checks see exactly the rows that would be published (the staged Parquet files), before any
reader can. A failed error-severity check trips the breaker: nothing of the run is published.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import asdict
from typing import Any

from headrace.delta.catalog import Lake
from headrace.engines.base import EngineSession, StagedResult
from headrace.errors import DataQualityError, SourceError
from headrace.quality.checks import (
    CheckResult,
    breaker_tripped,
    compile_checks,
    evaluate,
    format_report,
    validate_checks,
)
from headrace.spec.checks import Relationships, VolumeAnomaly
from headrace.spec.tables import TableSpec


def validate(spec: TableSpec, column_types: dict[str, str], known_tables: Collection[str]) -> None:
    """Configuration errors (a missing column, an unknown table) before any row is written."""
    if spec.checks:
        validate_checks(list(spec.checks), table=spec.name, columns=column_types, known_tables=known_tables)


def run_checks(
    spec: TableSpec,
    session: EngineSession,
    staged: StagedResult,
    *,
    lake: Lake,
    store: Any,
) -> list[CheckResult]:
    """Evaluate every check of the table in (ideally) one scan of the staged rows."""
    if not spec.checks:
        return []
    targets: dict[str, str] = {}
    for i, check in enumerate(spec.checks):
        if isinstance(check, Relationships) and check.to not in targets:
            if not lake.exists(check.to):
                raise SourceError(
                    f"table {spec.name!r}: check {check.name!r} refers to {check.to!r}, which has not been built",
                    hint=f"build it first: headrace run --select {check.to}",
                    table=spec.name,
                )
            view = f"__hr_check_target_{i}"
            session.read_table(view, lake.snapshot(check.to).dataset())
            targets[check.to] = view
    keys = tuple(getattr(spec.write, "keys", ()) or ())
    plan = compile_checks(list(spec.checks), relation="{staged}", tables=targets, key=keys,
                          columns=staged.schema.names, table=spec.name)
    history = {c.name: store.check_history(spec.name, c.name) for c in spec.checks
               if isinstance(c, VolumeAnomaly)}
    return evaluate(plan, lambda sql: session.staged_rows(staged, sql), history=history)


def record(store: Any, run_id: str, table: str, results: list[CheckResult]) -> None:
    store.record_checks(run_id, table, [asdict(r) for r in results])


def enforce(spec: TableSpec, results: list[CheckResult]) -> None:
    """The circuit breaker: a failed error check stops the publish with a report."""
    tripped = breaker_tripped(results)
    if tripped:
        names = ", ".join(r.name for r in tripped)
        raise DataQualityError(
            f"table {spec.name!r}: {len(tripped)} error check(s) failed ({names}); nothing was published\n"
            + format_report(tripped),
            hint=f"readers still see the last good version; see `headrace checks {spec.name}`",
            table=spec.name,
        )


def summary(results: list[CheckResult]) -> str | None:
    """A short note for the run summary: how many checks passed or warned."""
    if not results:
        return None
    warned = [r for r in results if not r.passed and r.severity == "warn"]
    passed = sum(1 for r in results if r.passed)
    text = f"checks {passed}/{len(results)} passed"
    if warned:
        text += f"; warn: {', '.join(r.name for r in warned)}"
    return text
