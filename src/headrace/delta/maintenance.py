"""Lake maintenance: remove data files no version needs any more.

``vacuum`` deletes files that were removed by commits longer ago than the retention, and
files no commit ever added (Parquet a crashed run wrote but never committed). It runs in
deltalake's *full* mode, which lists the table folder, because only that finds the orphans.
"""

from __future__ import annotations

from dataclasses import dataclass

from headrace.delta.catalog import Lake


@dataclass(frozen=True)
class VacuumResult:
    table: str
    files: list[str]
    dry_run: bool


def vacuum(lake: Lake, name: str, *, retention_hours: int, dry_run: bool) -> VacuumResult:
    """Vacuum one table. The caller holds the table's lock, so no run is staging files in its
    folder meanwhile (a staged file is unreferenced until its commit, like an orphan)."""
    table = lake.open(name)
    files = table.vacuum(
        retention_hours=retention_hours,
        dry_run=dry_run,
        enforce_retention_duration=False,
        full=True,
    )
    return VacuumResult(table=name, files=sorted(files), dry_run=dry_run)
