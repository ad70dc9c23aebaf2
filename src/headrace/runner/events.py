"""Events the runner emits while it works; the CLI renders them (progress, summary)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime


@dataclass
class TaskOutcome:
    """What happened to one table in one run."""

    table: str
    status: str = "pending"  # pending | running | success | unchanged | failed | skipped
    attempts: int = 0
    started_at: datetime | None = None
    ended_at: datetime | None = None
    rows_in: int | None = None
    rows_out: int | None = None
    rows_quarantined: int | None = None
    rows_dropped: int | None = None
    version: int | None = None
    operation: str | None = None
    message: str | None = None
    error: str | None = None
    error_kind: str | None = None
    hint: str | None = None

    @property
    def seconds(self) -> float | None:
        if self.started_at and self.ended_at:
            return (self.ended_at - self.started_at).total_seconds()
        return None


@dataclass
class RunResult:
    run_id: str
    status: str
    started_at: datetime
    ended_at: datetime
    tasks: list[TaskOutcome] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "success"

    @property
    def seconds(self) -> float:
        return (self.ended_at - self.started_at).total_seconds()


Listener = Callable[[TaskOutcome], None]
