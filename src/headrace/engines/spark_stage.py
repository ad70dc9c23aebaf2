"""What the driver needs from files Spark's executors wrote: Delta add actions, not rows.

Executors write a result's Parquet files in parallel under a fresh ``stage-<uuid>`` folder in
the table's folder (hive layout for partition columns). The driver then reads only the file
footers (row counts, min/max/null statistics) and the partition values encoded in the paths,
and hands the list to the Delta commit; no row crosses to the driver.
"""

from __future__ import annotations

import json
import urllib.parse
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from headrace.engines.base import StagedFile

HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"


def remove_side_files(directory: Path) -> None:
    """Hadoop's local filesystem writes a ``.name.crc`` beside every file (and, unless
    switched off, ``_SUCCESS``); they are not data and would be left unreferenced."""
    for path in directory.rglob("*"):
        if path.is_file() and (path.name.endswith(".crc") or path.name == "_SUCCESS"):
            path.unlink(missing_ok=True)


def unique_names(stage_dir: Path) -> None:
    """Spark names a task's files ``part-00000-<job uuid>...`` in every partition folder, so one
    name recurs across folders; each file gets a name of its own, so a file can be matched to
    its Delta partition values by name alone (as every other writer of the lake ensures)."""
    for path in sorted(stage_dir.rglob("part-*.parquet")):
        path.rename(path.with_name(f"part-{uuid.uuid4()}.parquet"))


def staged_files(table_dir: Path, stage_dir: Path, schema: pa.Schema,
                 partition_by: Sequence[str]) -> tuple[StagedFile, ...]:
    """Describe every Parquet file under ``stage_dir`` for a Delta commit."""
    import pyarrow.parquet as pq

    files = []
    for path in sorted(stage_dir.rglob("*.parquet")):
        meta = pq.ParquetFile(path).metadata
        if meta.num_rows == 0:
            path.unlink(missing_ok=True)
            continue
        rel = path.relative_to(stage_dir)
        values = partition_values(rel, partition_by)
        files.append(StagedFile(
            path=path,
            rel_path=path.relative_to(table_dir).as_posix(),
            size=path.stat().st_size,
            rows=meta.num_rows,
            partition_values=values,
            stats=footer_stats(meta, schema, partition_by),
            modification_time=int(path.stat().st_mtime * 1000),
        ))
    return tuple(files)


def partition_values(rel: Path, partition_by: Sequence[str]) -> dict[str, str | None]:
    """``col=value`` folders back to Delta partition values (Spark escapes with %XX)."""
    found: dict[str, str | None] = {}
    for part in rel.parts[:-1]:
        name, sep, raw = part.partition("=")
        if sep and name in partition_by:
            found[name] = None if raw == HIVE_NULL else urllib.parse.unquote(raw)
    return {c: found.get(c) for c in partition_by}


def footer_stats(meta: Any, schema: pa.Schema, partition_by: Sequence[str]) -> str:
    """Delta file statistics from the Parquet footer. Min/max only for integers, dates and
    short strings, whose footer form is exact: a wrong bound would make readers skip rows."""
    mins: dict[str, Any] = {}
    maxs: dict[str, Any] = {}
    nulls: dict[str, int] = {}
    index = {meta.schema.column(i).path: i for i in range(meta.num_columns)}
    for field in schema:
        if field.name in partition_by or field.name not in index:
            continue
        col = index[field.name]
        lo = hi = None
        null_count = 0
        exact = True
        for g in range(meta.num_row_groups):
            stats = meta.row_group(g).column(col).statistics
            if stats is None:
                exact = False
                null_count = -1
                break
            if stats.has_null_count and null_count >= 0:
                null_count += stats.null_count
            if not stats.has_min_max:
                if stats.num_values:
                    exact = False
                continue
            lo = stats.min if lo is None else min(lo, stats.min)
            hi = stats.max if hi is None else max(hi, stats.max)
        if null_count >= 0:
            nulls[field.name] = null_count
        if not exact or lo is None or hi is None:
            continue
        kind = field.type
        if pa.types.is_integer(kind) and isinstance(lo, int):
            mins[field.name], maxs[field.name] = lo, hi
        elif pa.types.is_date32(kind):
            mins[field.name], maxs[field.name] = str(lo), str(hi)
        elif pa.types.is_string(kind) and isinstance(lo, str) and len(lo) <= 32 and len(hi) <= 32:
            mins[field.name], maxs[field.name] = lo, hi
    stats_json = {"numRecords": meta.num_rows, "minValues": mins, "maxValues": maxs, "nullCount": nulls}
    return json.dumps(stats_json, separators=(",", ":"))


def engine_type_name(kind: pa.DataType) -> str:
    """The DuckDB-style type name checks are validated against, for a Spark column."""
    from headrace.engines.duckdb_engine import _duck_type

    if pa.types.is_timestamp(kind):
        return "TIMESTAMP WITH TIME ZONE" if kind.tz else "TIMESTAMP"
    return _duck_type(kind)
