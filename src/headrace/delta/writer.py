"""Publish staged Parquet files as exactly one Delta commit, in the table's write mode.

The engine has already written the result's files into the table's folder; a commit here
adds them (and removes the files they replace) in one transaction, so readers see the old
version or the new one, never a mix. Every commit carries headrace metadata (run id,
fingerprint, input batch id) so the Delta log alone says what produced each version. Append is
made idempotent by Delta app transactions keyed by the input: deltalake records them but does
not skip duplicates by itself, so we check ``transaction_version`` first (under the table lock
the runner holds).
"""

from __future__ import annotations

import datetime as dt
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, DeltaTable, Schema, Transaction, WriterProperties
from deltalake.exceptions import (
    CommitFailedError,
    DeltaError,
    DeltaProtocolError,
    SchemaMismatchError,
)
from deltalake.transaction import AddAction, RemoveAction, create_table_with_add_actions

from headrace.delta.catalog import META_PREFIX, Lake
from headrace.delta.partitions import partition_text, typed_partition_values
from headrace.engines.base import EngineSession, StagedResult, StageTarget
from headrace.errors import DataQualityError, EngineError, TransientError
from headrace.sources.files import quote_ident
from headrace.spec.tables import TableSpec
from headrace.spec.write_modes import Append, Merge, Overwrite, OverwritePartitions, Scd2

_COMPRESSION = {"zstd": "ZSTD", "snappy": "SNAPPY", "gzip": "GZIP", "lz4": "LZ4_RAW", "none": "UNCOMPRESSED"}


@dataclass(frozen=True)
class WriteSettings:
    compression: str = "zstd"
    compression_level: int | None = None
    target_file_size: int = 128 * 1024 * 1024

    def target(self, directory: Path, partition_by: tuple[str, ...]) -> StageTarget:
        """Where and how an engine writes a table's files under these settings."""
        return StageTarget(directory=directory, partition_by=partition_by, compression=self.compression,
                           compression_level=self.compression_level, target_file_size=self.target_file_size)


@dataclass(frozen=True)
class PublishRequest:
    spec: TableSpec
    staged: StagedResult
    session: EngineSession
    run_id: str
    fingerprint: str
    batch_id: str
    settings: WriteSettings
    app_ids: tuple[str, ...] = ()
    schema_policy: str = "evolve"  # evolve | freeze | discard
    interval: str | None = None  # the logical date this commit computed (backfills)
    extra_metadata: Mapping[str, str] = field(default_factory=dict)  # e.g. source watermarks


@dataclass(frozen=True)
class PublishResult:
    version: int | None
    operation: str
    rows_written: int
    skipped: str | None = None
    kept_files: bool = False  # the staged files are now referenced by the Delta log


def append_app_id(table: str, batch_id: str) -> str:
    return f"headrace:{table}:{batch_id}"


def publish(lake: Lake, req: PublishRequest) -> PublishResult:
    """Commit ``req.staged`` in the table's mode: one commit, or none (files discarded)."""
    name = req.spec.name
    mode = req.spec.write
    committed = False
    try:
        if isinstance(mode, Append):
            result = _append(lake, req)
        elif isinstance(mode, Overwrite):
            result = _overwrite(lake, req)
        elif isinstance(mode, OverwritePartitions):
            result = _overwrite_partitions(lake, req)
        elif isinstance(mode, Merge):
            result = _merge(lake, req, mode)
        elif isinstance(mode, Scd2):
            from headrace.delta.scd2 import publish_scd2  # imports this module

            result = publish_scd2(lake, req, mode)
        else:
            raise EngineError(f"table {name!r}: unsupported write mode {mode!r}")
        committed = result.kept_files
        return result
    except CommitFailedError as exc:
        raise TransientError(
            f"table {name!r}: Delta commit conflict: {exc}",
            hint="another writer committed at the same time; the run retries",
            table=name,
        ) from exc
    except SchemaMismatchError as exc:
        raise EngineError(
            f"table {name!r}: the new result's schema does not match the table: {exc}",
            hint="change the transform back, or rebuild the table with write='overwrite'",
            table=name,
        ) from exc
    except (DeltaProtocolError, DeltaError) as exc:
        raise EngineError(f"table {name!r}: Delta commit failed: {exc}", table=name) from exc
    except OSError as exc:
        raise TransientError(f"table {name!r}: I/O error while publishing: {exc}", table=name) from exc
    finally:
        if not committed:
            req.staged.discard()


# ---- modes ---------------------------------------------------------------------------------

def _append(lake: Lake, req: PublishRequest) -> PublishResult:
    app_ids = list(req.app_ids) or [append_app_id(req.spec.name, req.batch_id)]
    table = _open(lake, req)
    if table is not None:
        if any(table.transaction_version(a) is not None for a in app_ids):
            return PublishResult(None, "append", 0, skipped="input batch already appended")
        if _check_schema(req, table, mode="append"):
            _evolve(lake, req, mode="append", app_ids=app_ids)
            return PublishResult(_version(lake, req), "append", req.staged.rows)
    # an empty batch still commits its app transactions: the input is consumed
    version = _commit(lake, req, table, adds=_adds(req), mode="append", app_ids=app_ids)
    return PublishResult(version, "append", req.staged.rows, kept_files=True)


def _overwrite(lake: Lake, req: PublishRequest) -> PublishResult:
    table = _open(lake, req)
    # a full refresh of an append table records every input file as appended, in this commit
    version = _commit(lake, req, table, adds=_adds(req), mode="overwrite", app_ids=list(req.app_ids) or None)
    return PublishResult(version, "overwrite", req.staged.rows, kept_files=True)


def _overwrite_partitions(lake: Lake, req: PublishRequest) -> PublishResult:
    if req.staged.rows == 0:
        return PublishResult(None, "overwrite_partitions", 0, skipped="no rows, no partitions to replace")
    table = _open(lake, req)
    removes: list[RemoveAction] = []
    if table is not None:
        if _check_schema(req, table, mode="overwrite_partitions"):
            _evolve(lake, req, mode="overwrite", predicate=_partition_predicate(req))
            return PublishResult(_version(lake, req), "overwrite_partitions", req.staged.rows)
        removes = _files_in_partitions(table, req)
    version = _commit(lake, req, table, adds=_adds(req), removes=removes, mode="append")
    return PublishResult(version, "overwrite_partitions", req.staged.rows, kept_files=True)


def _merge(lake: Lake, req: PublishRequest, mode: Merge) -> PublishResult:
    _check_merge_keys(req, mode.keys)
    table = _open(lake, req)
    if table is None:
        return _first_merge(lake, req, mode)
    evolve = _check_schema(req, table, mode="merge")
    # a distributed engine rewrites files itself, unless the work is small enough for its driver
    session = req.session.for_input(sum(f.size for f in req.staged.files) + _table_bytes(table))
    rewrite = getattr(session, "merge_rewrite", None)
    if rewrite is not None and not evolve:
        return _merge_by_rewrite(lake, req, mode, table, rewrite)
    on = " AND ".join(f"t.{quote_ident(k)} = s.{quote_ident(k)}" for k in mode.keys)
    merger = table.merge(
        source=req.session.staged_reader(req.staged),
        predicate=on,
        source_alias="s",
        target_alias="t",
        merge_schema=evolve,
        writer_properties=writer_properties(req.settings),
        commit_properties=_commit_properties(req),
    )
    if mode.delete_when:
        # a row whose delete_when is NULL is not a delete: it is upserted like any other
        deletes = f"coalesce(({mode.delete_when}), false)"
        merger = merger.when_matched_delete(predicate=deletes)
        merger = merger.when_matched_update_all()
        merger = merger.when_not_matched_insert_all(predicate=f"NOT {deletes}")
    else:
        merger = merger.when_matched_update_all().when_not_matched_insert_all()
    metrics = merger.execute()
    written = int(metrics.get("num_target_rows_inserted", 0)) + int(metrics.get("num_target_rows_updated", 0))
    return PublishResult(_version(lake, req), "merge", written)


def _table_bytes(table: DeltaTable) -> int:
    sizes = pa.table(table.get_add_actions(flatten=False)).column("size_bytes")
    return int(pc.sum(sizes).as_py() or 0)


def _merge_by_rewrite(lake: Lake, req: PublishRequest, mode: Merge, table: DeltaTable,
                      rewrite: Any) -> PublishResult:
    """Copy-on-write merge computed by the engine (Spark's executors): the files holding a
    key of the new rows are rewritten with their other rows plus the new rows (deletes left
    out); one commit removes them and adds the rewritten ones. The driver sees file names."""
    snapshot = lake.snapshot(req.spec.name)
    target = req.settings.target(lake.path(req.spec.name), req.spec.partition_by)
    written, replaced, upserted = rewrite(req.staged, snapshot.dataset(), mode.keys, mode.delete_when, target)
    try:
        live = pa.table(table.get_add_actions(flatten=False))
        paths = [urllib.parse.unquote(p) for p in live.column("path").to_pylist()]
        sizes = live.column("size_bytes").to_pylist()
        parts = live.column("partition").to_pylist() if "partition" in live.column_names else [None] * len(paths)
        now = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
        gone = set(replaced)
        removes = [
            RemoveAction(path=path, data_change=True, deletion_timestamp=now, size=sizes[i],
                         partition_values={c: partition_text((parts[i] or {}).get(c)) for c in req.spec.partition_by})
            for i, path in enumerate(paths) if path in gone
        ]
        out = replace(req, staged=written)
        version = _commit(lake, out, table, adds=_adds(out), removes=removes, mode="append")
    except BaseException:
        written.discard()
        raise
    return PublishResult(version, "merge", upserted)


def _first_merge(lake: Lake, req: PublishRequest, mode: Merge) -> PublishResult:
    """The first load of a merge table is an insert of the kept rows (deletes match nothing)."""
    if mode.delete_when:
        kept = req.session.staged_rows(req.staged, f"SELECT count(*) FROM {{staged}} s WHERE NOT ({mode.delete_when})")
        if kept[0][0] != req.staged.rows:
            from deltalake import write_deltalake

            write_deltalake(
                str(lake.path(req.spec.name)),
                req.session.staged_reader(req.staged, where=f"NOT ({mode.delete_when})"),
                mode="append",
                partition_by=list(req.spec.partition_by) or None,
                target_file_size=req.settings.target_file_size,
                writer_properties=writer_properties(req.settings),
                commit_properties=_commit_properties(req),
            )
            return PublishResult(_version(lake, req), "merge", int(kept[0][0]))
    version = _commit(lake, req, None, adds=_adds(req), mode="append")
    return PublishResult(version, "merge", req.staged.rows, kept_files=True)


def _check_merge_keys(req: PublishRequest, keys: Sequence[str]) -> None:
    """A merge with duplicate or null keys in the new data would be silently ambiguous."""
    if req.staged.rows == 0:
        return
    cols = ", ".join(quote_ident(k) for k in keys)
    nulls = " OR ".join(f"{quote_ident(k)} IS NULL" for k in keys)
    rows = req.session.staged_rows(
        req.staged,
        f"SELECT count(*) FILTER (WHERE {nulls}), "
        f"(SELECT count(*) FROM (SELECT {cols} FROM {{staged}} GROUP BY ALL HAVING count(*) > 1)) "
        f"FROM {{staged}}",
    )
    nulls_n, dupes_n = rows[0]
    if nulls_n or dupes_n:
        sample = req.session.staged_rows(
            req.staged, f"SELECT {cols} FROM {{staged}} GROUP BY ALL HAVING count(*) > 1 LIMIT 3"
        )
        raise DataQualityError(
            f"table {req.spec.name!r}: merge keys ({', '.join(keys)}) are not unique in the new data: "
            f"{dupes_n} duplicated key(s), {nulls_n} null key(s); e.g. {sample}",
            hint="deduplicate in the transform (e.g. QUALIFY row_number() OVER (...) = 1)",
            table=req.spec.name,
        )


# ---- mechanics -----------------------------------------------------------------------------

def _open(lake: Lake, req: PublishRequest) -> DeltaTable | None:
    return lake.open(req.spec.name) if lake.exists(req.spec.name) else None


def _adds(req: PublishRequest) -> list[AddAction]:
    return [
        AddAction(
            path=f.rel_path,
            size=f.size,
            partition_values=f.partition_values,
            modification_time=f.modification_time,
            data_change=True,
            stats=f.stats,
        )
        for f in req.staged.files
    ]


def _commit(
    lake: Lake,
    req: PublishRequest,
    table: DeltaTable | None,
    *,
    adds: list[AddAction],
    mode: str,
    removes: Sequence[RemoveAction] = (),
    app_ids: list[str] | None = None,
) -> int:
    props = _commit_properties(req, app_ids=app_ids)
    partition_by = list(req.spec.partition_by) or None
    if table is None:
        create_table_with_add_actions(
            str(lake.path(req.spec.name)),
            Schema.from_arrow(req.staged.schema),
            adds,
            mode="error",
            partition_by=partition_by,
            commit_properties=props,
        )
    else:
        table.create_write_transaction(
            [*adds, *removes],
            mode=mode,
            schema=req.staged.schema,
            partition_by=partition_by,
            commit_properties=props,
        )
    return _version(lake, req)


def _files_in_partitions(table: DeltaTable, req: PublishRequest) -> list[RemoveAction]:
    """Remove actions for every live file in a partition the new result touches."""
    wanted = {typed_partition_values(values, req.staged.schema, req.staged.partition_by) for values in req.staged.partitions}
    actions = pa.table(table.get_add_actions(flatten=False))
    paths = actions.column("path").to_pylist()
    sizes = actions.column("size_bytes").to_pylist()
    parts = actions.column("partition").to_pylist() if "partition" in actions.column_names else None
    now = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
    removes = []
    for i, path in enumerate(paths):
        raw = parts[i] if parts is not None else {}
        values = tuple(partition_text((raw or {}).get(c)) for c in req.staged.partition_by)
        if typed_partition_values(values, req.staged.schema, req.staged.partition_by) in wanted:
            # the log holds percent-encoded paths; deltalake encodes what it is given
            removes.append(RemoveAction(path=urllib.parse.unquote(path), data_change=True, deletion_timestamp=now,
                                        size=sizes[i], partition_values={
                                            c: v for c, v in zip(req.staged.partition_by, values, strict=True)}))
    return removes


def _check_schema(req: PublishRequest, table: DeltaTable, *, mode: str) -> bool:
    """Compare the new result with the table's schema under the table's policy.

    Returns True when the commit must add columns (policy ``evolve``). A changed type is never
    applied silently; missing columns were filled with NULLs before staging (``conform``).
    """
    current = pa.schema(table.schema().to_arrow())
    cur = {f.name: f.type for f in current}
    nxt = {f.name: f.type for f in req.staged.schema}
    added = [n for n in nxt if n not in cur]
    missing = [n for n in cur if n not in nxt]
    changed = [f"{n} {cur[n]} -> {nxt[n]}" for n in nxt if n in cur and not _same_type(cur[n], nxt[n])]
    policy = req.schema_policy
    if not changed and not missing and (not added or policy == "evolve"):
        return bool(added)
    parts = []
    if added:
        parts.append(f"new columns {added}")
    if missing:
        parts.append(f"missing columns {missing}")
    if changed:
        parts.append(f"changed types {changed}")
    hint = (
        "a type change is never applied silently: cast back in the transform, or rebuild the table "
        "with write='overwrite' (run with --force)"
        if changed else
        f"the table's schema policy is {policy!r}: use schema='evolve' to add columns, or 'discard' to drop them"
    )
    raise EngineError(
        f"table {req.spec.name!r}: the new result does not match the table's schema ({'; '.join(parts)})",
        hint=hint,
        table=req.spec.name,
    )


def _evolve(lake: Lake, req: PublishRequest, *, mode: Literal["append", "overwrite"], predicate: str | None = None,
            app_ids: list[str] | None = None) -> None:
    """A commit that adds columns: deltalake's writer merges the schema in the same commit
    (an overwrite replaces only the rows ``predicate`` matches)."""
    from deltalake import write_deltalake

    target, rows = str(lake.path(req.spec.name)), req.session.staged_reader(req.staged)
    options: dict[str, Any] = {
        "schema_mode": "merge", "partition_by": list(req.spec.partition_by) or None,
        "target_file_size": req.settings.target_file_size, "writer_properties": writer_properties(req.settings),
        "commit_properties": _commit_properties(req, app_ids=app_ids),
    }
    if mode == "overwrite":
        write_deltalake(target, rows, mode="overwrite", predicate=predicate, **options)
    else:
        write_deltalake(target, rows, mode="append", **options)


def _partition_predicate(req: PublishRequest) -> str:
    """SQL matching exactly the staged partitions (NULL-aware), for deltalake's writer."""
    clauses = []
    for values in sorted(req.staged.partitions, key=str):
        typed = typed_partition_values(values, req.staged.schema, req.staged.partition_by)
        parts = []
        for column, value in zip(req.staged.partition_by, typed, strict=True):
            ident = quote_ident(column)
            if value is None:
                parts.append(f"{ident} IS NULL")
            elif isinstance(value, bool):
                parts.append(f"{ident} = {'true' if value else 'false'}")
            elif isinstance(value, int):
                parts.append(f"{ident} = {value}")
            elif isinstance(value, dt.datetime):
                parts.append(f"{ident} = TIMESTAMP '{value.isoformat(sep=' ')}'")
            elif isinstance(value, dt.date):
                parts.append(f"{ident} = DATE '{value.isoformat()}'")
            else:
                parts.append(f"{ident} = '" + str(value).replace("'", "''") + "'")
        clauses.append("(" + " AND ".join(parts) + ")")
    return " OR ".join(clauses) or "false"


def _same_type(a: pa.DataType, b: pa.DataType) -> bool:
    if a == b:
        return True
    # Delta stores strings as one type; Arrow has string/large_string/string_view
    texts = (pa.string(), pa.large_string(), pa.string_view())
    return a in texts and b in texts


def writer_properties(settings: WriteSettings) -> WriterProperties:
    codec = _COMPRESSION.get(settings.compression, "ZSTD")
    level = settings.compression_level if codec in ("ZSTD", "GZIP") else None
    return WriterProperties(compression=codec, compression_level=level)  # type: ignore[arg-type]


def _commit_properties(req: PublishRequest, *, app_ids: list[str] | None = None) -> CommitProperties:
    meta: dict[str, Any] = {
        f"{META_PREFIX}run_id": req.run_id,
        f"{META_PREFIX}fingerprint": req.fingerprint,
        f"{META_PREFIX}batch_id": req.batch_id,
        f"{META_PREFIX}mode": req.spec.write.kind,
        f"{META_PREFIX}rows": str(req.staged.rows),
    }
    if req.interval:
        meta[f"{META_PREFIX}interval"] = req.interval
    for key, value in req.extra_metadata.items():
        meta[f"{META_PREFIX}{key}"] = value
    txns = [Transaction(app_id=a, version=1) for a in app_ids] if app_ids else None
    return CommitProperties(custom_metadata=meta, app_transactions=txns, max_commit_retries=0)


def _version(lake: Lake, req: PublishRequest) -> int:
    return DeltaTable(str(lake.path(req.spec.name))).version()
