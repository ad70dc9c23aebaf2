"""The engine protocol: the few things the runner needs from a compute engine.

An engine opens one session per table task. A session reads inputs into engine relations,
runs the user's transform, and stages the result so it can be counted, checked and streamed
to the lake as Arrow batches without being computed twice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import pyarrow as pa

from headrace.sources.batches import InputBatch
from headrace.spec.sources import SourceSpec
from headrace.spec.tables import TableSpec


@dataclass(frozen=True)
class StagedResult:
    """A transform's result held by the engine: its row count, schema and partition values."""

    name: str
    rows: int
    schema: pa.Schema
    partitions: tuple[tuple[Any, ...], ...]


class EngineSession(Protocol):
    def read_source(self, key: str, spec: SourceSpec, batch: InputBatch, *, source_name: str) -> int:
        """Load a source's batch under ``key``; return its row count."""

    def read_table(self, key: str, dataset: Any) -> None:
        """Expose an upstream table snapshot (an Arrow dataset) under ``key``."""

    def transform(self, spec: TableSpec, keys: Sequence[str], context: Any) -> Any:
        """Run the table's transform over the bound inputs; return an engine relation."""

    def stage(self, spec: TableSpec, result: Any) -> StagedResult:
        """Materialise the result once so it can be audited and written without recompute."""

    def batches(self, staged: StagedResult, *, where: str | None = None) -> pa.RecordBatchReader:
        """Stream the staged rows (optionally filtered by a SQL predicate over alias ``s``)."""

    def scalar_rows(self, sql: str) -> list[tuple[Any, ...]]:
        """Run a small SQL query over staged names and return its rows."""

    def close(self) -> None: ...


class Engine(Protocol):
    name: str

    def session(self) -> EngineSession: ...

    def close(self) -> None: ...


EngineSettings = Mapping[str, Any]
