"""The engine protocol: the few things the runner needs from a compute engine.

An engine opens one session per table task. A session reads inputs into engine relations,
runs the user's transform, and stages the result so it can be counted, checked and streamed
to the lake as Arrow batches without being computed twice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa

from headrace.sources.batches import InputBatch
from headrace.spec.sources import SourceSpec
from headrace.spec.tables import TableSpec


def delta_schema(schema: pa.Schema) -> pa.Schema:
    """Delta's ``timestamp`` is UTC: DuckDB labels TIMESTAMPTZ with the session's zone name
    (``Etc/UTC``), which deltalake refuses; the values are UTC instants either way."""
    fields = [
        f.with_type(pa.timestamp(f.type.unit, tz="UTC")) if pa.types.is_timestamp(f.type) and f.type.tz else f
        for f in schema
    ]
    return pa.schema(fields, metadata=schema.metadata)


# headrace's codec names -> the Parquet writers' (DuckDB and Spark spell them alike)
PARQUET_CODECS: dict[str, str] = {
    "zstd": "zstd", "snappy": "snappy", "gzip": "gzip", "lz4": "lz4_raw", "none": "uncompressed",
}


def check_result_columns(spec: TableSpec, columns: Sequence[str], where: str) -> None:
    """A result must name each column once (case-insensitively: both engines' SQL and Delta
    do) and hold the partition and key columns its table names."""
    from headrace.errors import DefinitionError, TransformError

    lowered = [c.lower() for c in columns]
    if len(set(lowered)) != len(lowered):
        dupes = sorted({c for c in columns if lowered.count(c.lower()) > 1})
        raise TransformError(f"{where}: result has duplicate column names {dupes}",
                             hint="alias the columns so each name is unique")
    needed = [*spec.partition_by, *getattr(spec.write, "keys", ())]
    missing = [c for c in needed if c not in columns]
    if missing:
        raise DefinitionError(
            f"{where}: column(s) {missing} named in partition_by/keys are not in the result",
            hint=f"result columns: {', '.join(columns)}",
            table=spec.name,
        )


@dataclass(frozen=True)
class StageTarget:
    """Where and how to write a result's Parquet files: inside the table's folder, where they
    stay invisible to readers until a Delta commit adds them."""

    directory: Path
    partition_by: tuple[str, ...]
    compression: str = "zstd"
    compression_level: int | None = None
    target_file_size: int = 128 * 1024 * 1024


@dataclass(frozen=True)
class StagedFile:
    """One Parquet file written for a commit; ``rel_path`` is relative to the table folder."""

    path: Path
    rel_path: str
    size: int
    rows: int
    partition_values: dict[str, str | None]
    stats: str
    modification_time: int


@dataclass(frozen=True)
class StagedResult:
    """A transform's result written as uncommitted Parquet files, with what a commit needs."""

    files: tuple[StagedFile, ...]
    rows: int
    schema: pa.Schema
    partition_by: tuple[str, ...]
    column_types: dict[str, str] = field(default_factory=dict)  # engine type names, for checks
    rows_read: int | None = None  # records the engine read from uncounted sources, when exact

    @property
    def partitions(self) -> set[tuple[str | None, ...]]:
        return {tuple(f.partition_values.get(c) for c in self.partition_by) for f in self.files}

    def discard(self) -> None:
        """Delete the files: the run did not publish them."""
        for f in self.files:
            f.path.unlink(missing_ok=True)


class EngineSession(Protocol):
    def read_source(self, key: str, spec: SourceSpec, batch: InputBatch, *, source_name: str) -> int | None:
        """Bind a source's batch under ``key``; return its row count when known without a scan."""

    def read_table(self, key: str, dataset: Any) -> None:
        """Expose an upstream table snapshot (an Arrow dataset) under ``key``."""

    def transform(self, spec: TableSpec, keys: Sequence[str], context: Any) -> Any:
        """Run the table's transform over the bound inputs; return an engine relation."""

    def conform(self, result: Any, table_schema: pa.Schema, *, drop_extra: bool) -> Any:
        """Fit a result to an existing table's columns (NULLs for missing ones)."""

    def describe(self, spec: TableSpec, result: Any) -> dict[str, str]:
        """The result's column names and engine types, without computing it."""

    def stage(self, spec: TableSpec, result: Any, target: StageTarget) -> StagedResult:
        """Compute the result once, streaming it into Parquet files under ``target``."""

    def staged_rows(self, staged: StagedResult, sql: str) -> list[tuple[Any, ...]]:
        """Run SQL in which ``{staged}`` stands for the staged rows (audits before publish)."""

    def staged_reader(self, staged: StagedResult, *, where: str | None = None) -> pa.RecordBatchReader:
        """Stream the staged rows, partition columns included (``where`` over alias ``s``)."""

    # ---- for write modes that compute their changes in the engine (scd2) ----------------
    def for_input(self, nbytes: int) -> EngineSession:
        """The session to run work over ``nbytes`` of input on: a distributed engine hands
        small work to its driver's embedded engine rather than pay for jobs and shuffles."""

    def bind_staged(self, staged: StagedResult, name: str) -> None:
        """Expose the staged rows (partition columns included) as the relation ``name``."""

    def column_types(self, name: str) -> dict[str, str]:
        """DuckDB's type names of the columns of the relation ``name`` (the SQL is DuckDB's)."""

    def bind_hashed(self, name: str, sql: str, hash_sql: str, column: str) -> None:
        """Bind ``name`` to ``sql``'s rows with ``column`` = ``hash_sql`` computed by DuckDB."""

    def bind_files(self, name: str, files: Sequence[tuple[str, Mapping[str, str | None]]], schema: pa.Schema,
                   partition_by: Sequence[str]) -> None:
        """Bind ``name`` to a table's files with ``__hr_f`` (file) and ``__hr_r`` (row in file)."""

    def run_sql(self, sql: str) -> list[tuple[Any, ...]]:
        """Run engine SQL over the session's relations; return its (small) result."""

    def write_query(self, sql: str, target: StageTarget) -> StagedResult:
        """Write a query's rows as Parquet files under ``target``, like :meth:`stage`."""

    def close(self) -> None: ...


class Engine(Protocol):
    name: str

    def session(self) -> EngineSession: ...

    def close(self) -> None: ...


EngineSettings = Mapping[str, Any]
