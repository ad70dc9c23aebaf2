"""The lake's layout: one Delta table per project table at ``<lake>/<schema>/<table>``.

Reads go through a pinned Delta version exposed as a pyarrow dataset over a pyarrow local
filesystem; why: the Rust-backed default filesystem makes processes abort at exit after
``to_pyarrow_*`` reads (delta-rs#2184), a pyarrow filesystem does not.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from headrace.errors import EngineError, SelectionError
from headrace.spec._names import did_you_mean

META_PREFIX = "headrace."

#: Commits that rearrange or describe a table without changing its rows (compaction, vacuum,
#: properties): "the table's last commit" for a run means the last one that wrote data.
MAINTENANCE_OPERATIONS = frozenset({
    "OPTIMIZE", "VACUUM START", "VACUUM END", "SET TBLPROPERTIES", "ADD CONSTRAINT", "DROP CONSTRAINT",
    "UPGRADE PROTOCOL", "ADD FEATURE", "UPDATE FIELD METADATA", "UPDATE TABLE METADATA",
})


@dataclass(frozen=True)
class Snapshot:
    """One readable version of a table."""

    name: str
    path: Path
    version: int
    table: DeltaTable

    def dataset(self) -> Any:
        """A re-scannable pyarrow dataset of this version's files, built from the Delta log.

        Why not ``DeltaTable.to_pyarrow_dataset``: deltalake 1.6 turns a file without min/max
        statistics for a column into the guarantee ``column >= null``, so any filter pushed
        down on that column (a timestamp, a decimal) skips the file and returns no rows.
        Here each file carries only its partition values; pruning within files uses the
        Parquet footers' own statistics. (pyarrow is imported here: it loads pandas.)
        """
        import pyarrow as pa
        import pyarrow.fs as pafs

        from headrace.delta.partitions import file_dataset

        schema = pa.schema(self.table.schema().to_arrow())
        actions = pa.table(self.table.get_add_actions(flatten=False))
        paths = [urllib.parse.unquote(p) for p in actions.column("path").to_pylist()]
        partition_columns = list(self.table.metadata().partition_columns)
        values = actions.column("partition").to_pylist() if partition_columns else [{}] * len(paths)
        fs = pafs.SubTreeFileSystem(str(self.path), pafs.LocalFileSystem())
        return file_dataset(paths, schema, partition_columns, [v or {} for v in values], fs)

    def row_count(self) -> int:
        actions = self.table.get_add_actions(flatten=True)
        column = actions.column("num_records")
        return int(sum(v for v in column.to_pylist() if v is not None))


@dataclass(frozen=True)
class Commit:
    version: int
    timestamp: datetime
    operation: str
    run_id: str | None
    metadata: dict[str, Any]
    metrics: dict[str, Any]


class Lake:
    """Locates, opens and lists the Delta tables under a lake root."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, name: str) -> Path:
        schema, _, table = name.partition(".")
        return self.root / schema / table if table else self.root / "main" / schema

    def exists(self, name: str) -> bool:
        return (self.path(name) / "_delta_log").is_dir()

    def open(self, name: str, version: int | str | datetime | None = None) -> DeltaTable:
        path = self.path(name)
        if not self.exists(name):
            known = self.list_tables()
            raise SelectionError(
                f"table {name!r} does not exist in the lake at {self.root}.{did_you_mean(name, known)}",
                hint="run `headrace run` first, or check the name with `headrace dag`",
            )
        try:
            table = DeltaTable(str(path))
            if version is not None:
                table.load_as_version(version)
        except TableNotFoundError as exc:
            raise SelectionError(f"table {name!r} has no Delta log at {path}") from exc
        except (ValueError, OSError, Exception) as exc:
            if isinstance(exc, SelectionError):
                raise
            raise EngineError(f"cannot open table {name!r} at version {version}: {exc}") from exc
        return table

    def snapshot(self, name: str, version: int | str | datetime | None = None) -> Snapshot:
        table = self.open(name, version)
        return Snapshot(name=name, path=self.path(name), version=table.version(), table=table)

    def list_tables(self) -> list[str]:
        if not self.root.is_dir():
            return []
        names = []
        for log in sorted(self.root.glob("*/*/_delta_log")):
            table_dir = log.parent
            names.append(f"{table_dir.parent.name}.{table_dir.name}")
        return names

    def history(self, name: str, limit: int | None = None) -> list[Commit]:
        table = self.open(name)
        commits = []
        for entry in table.history(limit):
            meta = _headrace_metadata(entry)
            ts = datetime.fromtimestamp(entry.get("timestamp", 0) / 1000, tz=UTC)
            commits.append(
                Commit(
                    version=int(entry.get("version", -1)),
                    timestamp=ts,
                    operation=str(entry.get("operation", "")),
                    run_id=meta.get("run_id"),
                    metadata=meta,
                    metrics=dict(entry.get("operationMetrics") or {}),
                )
            )
        return commits

    def data_version(self, snapshot: Snapshot) -> int:
        """The version of the snapshot's newest commit that changed rows: what a table read
        from it depends on (a compaction after it changes the files, not the rows)."""
        entry = _newest_data_entry(snapshot.table)
        return int(entry.get("version", snapshot.version)) if entry else snapshot.version

    def last_commit_metadata(self, name: str) -> dict[str, Any]:
        """headrace metadata of the newest commit that wrote data (maintenance such as
        ``headrace optimize`` passed over), or {} when there is none."""
        if not self.exists(name):
            return {}
        entry = _newest_data_entry(self.open(name))
        return _headrace_metadata(entry) if entry else {}


def _headrace_metadata(entry: dict[str, Any]) -> dict[str, Any]:
    """A log entry's headrace keys, without their prefix."""
    return {k[len(META_PREFIX):]: v for k, v in entry.items() if k.startswith(META_PREFIX)}


def _newest_data_entry(table: DeltaTable) -> dict[str, Any] | None:
    """The log entry of the newest commit that wrote data. Runs ask this of every table and
    input, so the common case reads one entry; only after maintenance commits does it look
    further back (up to 100)."""
    for limit in (1, 100):
        entries = table.history(limit)
        for entry in entries:
            if str(entry.get("operation", "")) not in MAINTENANCE_OPERATIONS:
                return entry
        if len(entries) < limit:
            return None
    return None
