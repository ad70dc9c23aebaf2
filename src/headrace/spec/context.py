"""The run context a table function can ask for with a ``ctx`` parameter."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunContext:
    """Identity of the current run and attempt, e.g. to tag rows with ``ctx.run_id``."""

    run_id: str
    table: str
    attempt: int
    project_root: Path
