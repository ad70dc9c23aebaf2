"""Backfills: run a selection once per logical date, each date an idempotent recompute.

A date's commits carry ``headrace.interval`` and a fingerprint that includes the date, so a
backfill interrupted half-way resumes where it stopped (dates already computed from the same
inputs are ``unchanged``), and ``--missing`` skips dates every selected table already has.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from headrace.errors import SelectionError
from headrace.runner.events import RunResult

MAX_DATES = 3660


@dataclass(frozen=True)
class DateOutcome:
    ds: date
    result: RunResult | None
    note: str | None = None

    @property
    def status(self) -> str:
        return self.result.status if self.result else "skipped"


def dates_between(start: date, end: date) -> list[date]:
    if end < start:
        raise SelectionError(f"backfill range is empty: --end {end} is before --start {start}",
                             hint="give --start D1 --end D2 with D1 <= D2 (both inclusive)")
    days = (end - start).days + 1
    if days > MAX_DATES:
        raise SelectionError(f"backfill range of {days} days is longer than {MAX_DATES}",
                             hint="split it into several backfills")
    return [start + timedelta(days=i) for i in range(days)]


def processed_intervals(lake: Any, table: str) -> set[str]:
    """Logical dates recorded in the table's Delta log (the log is the truth, not the store)."""
    if not lake.exists(table):
        return set()
    return {c.metadata["interval"] for c in lake.history(table) if c.metadata.get("interval")}


def backfill(
    ws: Any,
    select: Sequence[str],
    start: date,
    end: date,
    *,
    workers: int | None = None,
    missing_only: bool = False,
    on_date: Callable[[DateOutcome], None] | None = None,
) -> Iterator[DateOutcome]:
    """Run the selection for each date in [start, end], oldest first."""
    days = dates_between(start, end)
    names = ws.select(select)
    done: dict[str, set[str]] = (
        {n: processed_intervals(ws.lake, n) for n in names} if missing_only else {}
    )
    for ds in days:
        if missing_only and all(ds.isoformat() in done[n] for n in names):
            outcome = DateOutcome(ds, None, "already computed")
        else:
            result = ws.run(select, workers=workers, logical_date=ds, command=f"backfill {ds}")
            outcome = DateOutcome(ds, result)
        if on_date:
            on_date(outcome)
        yield outcome
