"""Lake maintenance: remove data files no version needs any more.

``vacuum`` deletes files that were removed by commits longer ago than the retention, and
files no commit ever added (Parquet a crashed run wrote but never committed). It runs in
deltalake's *full* mode, which lists the table folder, because only that finds the orphans.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

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
    files = list(files) + _abandoned_stages(lake.path(name), deleted=set(files), dry_run=dry_run)
    return VacuumResult(table=name, files=sorted(files), dry_run=dry_run)


def _abandoned_stages(table_dir: Path, *, deleted: set[str], dry_run: bool) -> list[str]:
    """The Spark engine stages a write under ``stage-<uuid>/``; a driver killed mid-write
    leaves Hadoop's ``_temporary`` attempt files and ``.crc`` side files there, which the
    Delta vacuum does not list (hidden names). A stage folder holding no data file outside
    them has nothing any version can reference, so it goes whole."""
    removed: list[str] = []
    for stage in sorted(table_dir.glob("stage-*")):
        if not stage.is_dir():
            continue
        data = [p for p in stage.rglob("*.parquet")
                if "_temporary" not in p.relative_to(stage).parts and not p.name.startswith(".")
                and p.relative_to(table_dir).as_posix() not in deleted]
        if data:
            continue
        leftovers = [p.relative_to(table_dir).as_posix() for p in stage.rglob("*") if p.is_file()]
        removed += [f for f in leftovers if f not in deleted]
        if not dry_run:
            shutil.rmtree(stage, ignore_errors=True)
    return removed
