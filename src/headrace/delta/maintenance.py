"""Lake maintenance: compact small files, remove data files no version needs any more.

``optimize`` rewrites each partition's small files into files of about ``target_file_size``
(bin-packing, or a Z-order curve over some columns) in one commit that changes no rows
(``dataChange=false``): readers, time travel, append ledgers, incremental file state and SCD2
history are unaffected, and the next run still finds its inputs unchanged (runs compare with
the last commit that wrote data, see ``Lake.last_commit_metadata``). The replaced files stay
for time travel until ``vacuum``.

``vacuum`` deletes files that were removed by commits longer ago than the retention, and
files no commit ever added (Parquet a crashed run wrote but never committed). It runs in
deltalake's *full* mode, which lists the table folder, because only that finds the orphans.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from deltalake import CommitProperties

from headrace.delta.catalog import META_PREFIX, Lake
from headrace.errors import SelectionError
from headrace.spec._names import did_you_mean


@dataclass(frozen=True)
class OptimizeResult:
    table: str
    files_before: int
    files_after: int
    bytes_before: int
    bytes_after: int
    files_rewritten: int  # removed by the compaction (planned, on a dry run)
    files_written: int
    partitions: int  # partitions with files rewritten
    version: int | None  # the commit, None when nothing was rewritten (or a dry run)
    dry_run: bool


def optimize(lake: Lake, name: str, *, target_size: int, writer_properties: Any, zorder: Sequence[str] = (),
             dry_run: bool = False) -> OptimizeResult:
    """Compact one table (see the module docstring). The caller holds the table's lock, so
    no run commits meanwhile (deltalake would retry the commit, but a run's own commit could
    then remove files the compaction rewrote)."""
    table = lake.open(name)
    columns = [f.name for f in pa.schema(table.schema().to_arrow())]
    partition_by = list(table.metadata().partition_columns)
    for column in zorder:
        if column not in columns:
            raise SelectionError(f"table {name!r} has no column {column!r}.{did_you_mean(column, columns)}",
                                 hint=f"Z-order by some of: {', '.join(c for c in columns if c not in partition_by)}")
        if column in partition_by:
            raise SelectionError(f"table {name!r}: {column!r} is a partition column; each file holds one value of it",
                                 hint="Z-order by columns inside the partitions")
    files = pa.table(table.get_add_actions(flatten=True))
    sizes = files.column("size_bytes").to_pylist()
    before = (len(sizes), sum(sizes))
    if dry_run:
        planned = _planned(files, partition_by, target_size, rewrite_all=bool(zorder))
        return OptimizeResult(name, before[0], before[0], before[1], before[1], sum(planned.values()), 0,
                              len(planned), None, dry_run=True)
    meta = {f"{META_PREFIX}maintenance": "optimize"}
    if zorder:
        meta[f"{META_PREFIX}zorder"] = ",".join(zorder)
    props = CommitProperties(custom_metadata=meta)
    if zorder:
        metrics = table.optimize.z_order(list(zorder), target_size=target_size, writer_properties=writer_properties,
                                         commit_properties=props)
    else:
        metrics = table.optimize.compact(target_size=target_size, writer_properties=writer_properties,
                                         commit_properties=props)
    removed, added = int(metrics["numFilesRemoved"]), int(metrics["numFilesAdded"])
    after_bytes = before[1] - _total(metrics["filesRemoved"]) + _total(metrics["filesAdded"])
    return OptimizeResult(name, before[0], before[0] - removed + added, before[1], after_bytes, removed, added,
                          int(metrics["partitionsOptimized"]), lake.open(name).version() if removed else None,
                          dry_run=False)


def _planned(files: pa.Table, partition_by: Sequence[str], target_size: int, *, rewrite_all: bool) -> dict[Any, int]:
    """Files the compaction would rewrite, per partition: its files under the target size when
    it has two or more (a lone small file is left), or every file of a partition with two or
    more files for a Z-order."""
    keys = list(zip(*[files.column(f"partition.{c}").to_pylist() for c in partition_by], strict=True)) \
        if partition_by else [()] * files.num_rows
    small: dict[Any, int] = {}
    for key, size in zip(keys, files.column("size_bytes").to_pylist(), strict=True):
        if rewrite_all or size < target_size:
            small[key] = small.get(key, 0) + 1
    return {k: n for k, n in small.items() if n > 1}


def _total(stats: Any) -> int:
    """The ``totalSize`` of deltalake's file statistics (a JSON text or a dict)."""
    data = json.loads(stats) if isinstance(stats, str) else dict(stats or {})
    return int(data.get("totalSize", 0))


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
