"""Partition values between their three forms: Python values, the text Delta's log keeps, and
the pyarrow dataset expressions that give files without partition columns their values.

One home for them, because the writer (which partitions a commit replaces), SCD2 (rewritten
files), the catalog (readable snapshots) and the Spark engine (its staged files) must agree on
every form, or a partition would be matched, or read back, as another.
"""

from __future__ import annotations

import datetime as dt
import decimal
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa


def partition_text(value: Any) -> str | None:
    """A partition value as Delta's log writes it (``2026-01-01``, ``true``, NULL as None)."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def typed_partition_values(values: Sequence[Any], schema: pa.Schema, columns: Sequence[str]) -> tuple[Any, ...]:
    """Partition values as typed Python values, so '2026-01-01' and a date compare equal."""
    out: list[Any] = []
    for column, value in zip(columns, values, strict=True):
        kind = schema.field(column).type
        if value is None:
            out.append(None)
        elif pa.types.is_integer(kind):
            out.append(int(value))
        elif pa.types.is_date(kind):
            out.append(dt.date.fromisoformat(str(value)[:10]))
        elif pa.types.is_timestamp(kind):
            out.append(dt.datetime.fromisoformat(str(value)).replace(tzinfo=None))
        elif pa.types.is_boolean(kind):
            out.append(str(value).lower() == "true")
        elif pa.types.is_decimal(kind):
            out.append(decimal.Decimal(str(value)))
        elif pa.types.is_floating(kind):
            out.append(float(value))
        else:
            out.append(str(value))
    return tuple(out)


def file_dataset(paths: Sequence[str], schema: pa.Schema, partition_by: Sequence[str],
                 values: Sequence[Mapping[str, Any]], filesystem: Any) -> Any:
    """A pyarrow dataset over Parquet files whose partition columns live outside the files:
    each file carries its values (``values[i]`` for ``paths[i]``) as a guarantee, typed by
    ``schema``, so scans see the columns and filters on them prune whole files."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    expressions = None
    if partition_by:
        expressions = []
        for raw in values:
            typed = typed_partition_values([raw.get(c) for c in partition_by], schema, partition_by)
            expr = None
            for column, value in zip(partition_by, typed, strict=True):
                field = pc.field(column)
                part = field.is_null() if value is None else field == pa.scalar(value, schema.field(column).type)
                expr = part if expr is None else expr & part
            expressions.append(expr)
    return pads.FileSystemDataset.from_paths(
        list(paths), schema=schema, format=pads.ParquetFileFormat(), filesystem=filesystem, partitions=expressions
    )
