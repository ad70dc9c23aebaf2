"""Quarantine tables: ``<table>__quarantine``, where rejected records are kept with reasons.

Every record a contract rejects lands here exactly as it was read (text), with every rule it
failed, where it came from (file and line) and the run that saw it. Appends are keyed by the
input batch (a Delta app transaction), so re-running a batch never duplicates its rejects.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake

from headrace.delta.catalog import META_PREFIX, Lake

SUFFIX = "__quarantine"

VIOLATION = pa.struct([("column", pa.string()), ("rule", pa.string()), ("message", pa.string())])

SCHEMA = pa.schema([
    ("run_id", pa.string()),
    ("table_name", pa.string()),
    ("source_file", pa.string()),
    ("source_line", pa.int64()),
    ("raw_record", pa.string()),
    ("source_header", pa.string()),
    ("errors", pa.list_(VIOLATION)),
    ("quarantined_at", pa.timestamp("us", tz="UTC")),
])


def quarantine_name(table: str) -> str:
    return f"{table}{SUFFIX}"


def is_quarantine(name: str) -> bool:
    return name.endswith(SUFFIX)


@dataclass(frozen=True)
class QuarantineWrite:
    version: int | None
    rows: int
    skipped: str | None = None


def append_quarantine(
    lake: Lake,
    *,
    table: str,
    run_id: str,
    batch_id: str,
    rows: pa.RecordBatchReader,
    count: int,
    publish_first: Callable[[pa.Table], None] | None = None,
) -> QuarantineWrite:
    """Append rejected records, already shaped as :data:`SCHEMA` (see :func:`select_sql`).

    Idempotent per input batch: a batch whose rejects are already stored is not appended again.
    ``publish_first`` gets the rejects before they are committed (a dead-letter topic): a
    failure there leaves the batch unquarantined, so the next attempt sends them again (at
    least once), and a batch already quarantined is not sent again.
    """
    name = quarantine_name(table)
    app_id = f"headrace:{name}:{batch_id}"
    path = lake.path(name)
    if lake.exists(name) and DeltaTable(str(path)).transaction_version(app_id) is not None:
        return QuarantineWrite(None, 0, skipped="already quarantined for this input batch")
    path.mkdir(parents=True, exist_ok=True)
    data: pa.RecordBatchReader | pa.Table = rows
    if publish_first is not None:  # rejects are few: held once, sent, then written
        data = rows.read_all()
        publish_first(data)
    write_deltalake(
        str(path),
        data,
        mode="append",
        commit_properties=CommitProperties(
            custom_metadata={f"{META_PREFIX}run_id": run_id, f"{META_PREFIX}batch_id": batch_id,
                             f"{META_PREFIX}mode": "quarantine"},
            app_transactions=[Transaction(app_id=app_id, version=1)],
        ),
    )
    return QuarantineWrite(DeltaTable(str(path)).version(), count)


def select_sql(relation: str, *, table: str, run_id: str, headers: Mapping[str, str | None]) -> str:
    """SQL shaping a relation of rejects (``__hr_file, __hr_line, __hr_raw, __hr_violations``)
    into :data:`SCHEMA`, so the rows go from the engine to Delta as Arrow without Python loops.
    ``headers`` maps a CSV file to its header line: a CSV record can only be re-read (replay)
    together with the header it was written under."""
    def lit(value: str) -> str:
        return "'" + value.replace("'", "''") + "'"

    cases = " ".join(f"WHEN __hr_file = {lit(f)} THEN {lit(h)}" for f, h in headers.items() if h is not None)
    header = f"CASE {cases} ELSE NULL END" if cases else "CAST(NULL AS VARCHAR)"
    return (
        f"SELECT {lit(run_id)} AS run_id, {lit(table)} AS table_name, "
        "CAST(__hr_file AS VARCHAR) AS source_file, CAST(__hr_line AS BIGINT) AS source_line, "
        f"CAST(__hr_raw AS VARCHAR) AS raw_record, {header} AS source_header, "
        "CAST(__hr_violations AS STRUCT(\"column\" VARCHAR, \"rule\" VARCHAR, \"message\" VARCHAR)[]) AS errors, "
        "CAST(now() AS TIMESTAMPTZ) AS quarantined_at "
        f"FROM {relation}"
    )
