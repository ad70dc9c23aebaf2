"""The stored path: validate once in parallel, number only the rejects.

**The stored path** (``store_validated``, what the runner uses) gives exactly the same result
as ``validate_files``, 2-3x faster, by not paying for line numbers, raw text and messages on
the good rows. Line numbers come from ``WITH ORDINALITY``, which makes DuckDB read *and
validate* on one thread; so one parallel, unnumbered pass (``stored_rows_sql``) types and
checks every line and stores the typed values, a verdict, the file and the hash of each
line's text as Parquet. Duplicate keys are then counted from the stored key column, and only
the rejects are read again, numbered, found by their text hash (a bitmap filter), and
validated by the very SQL of ``plan_validation``: same file, line, raw text and violations.
NDJSON under ``evolve`` also skips the key-discovery pass: the contract's keys are assumed,
and a record holding another key (checked in the same pass) sends it back to discovery.
Measured on 2M NDJSON orders with 1% bad records (``bench/ingest.py --contract``): 4.4 s ->
1.6 s.

``StoredRows``, ``store_rows`` and ``store_rejects`` are the steps on their own: Spark tasks
run them on groups of files.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import duckdb

from headrace.quality.contracts.layout import RawLayout, lines_sql
from headrace.quality.contracts.readers import (
    _CSV_NONBLANK,
    _JSON_NONBLANK,
    RawReader,
    _csv_sql,
    _ndjson_sql,
    open_raw_reader,
)
from headrace.quality.contracts.rules import (
    QUARANTINE_COLUMNS,
    VIOLATIONS_TYPE,
    _row_checks,
    _schema_checks,
    _typed_levels,
    check_contract_against_columns,
    plan_validation,
)
from headrace.sources.files import quote_ident, sql_string
from headrace.spec.contracts import Contract
from headrace.spec.sources import FileSource

# ---- the stored path: validate once in parallel, number only the rejects ---------------------


@dataclass(frozen=True)
class StoredValidation:
    """A validated input kept as Parquet under ``directory`` (see ``store_validated``).

    ``good_sql()`` selects the typed good rows (the contract's columns, then the extra input
    columns under ``evolve``); ``quarantine_sql()`` the rejects as ``QUARANTINE_COLUMNS``.
    ``rows`` counts every record read, ``quarantined`` those breaking the contract.
    ``headers`` maps each CSV file to its header line. ``path`` says how it was computed:
    ``"stored"`` (the parallel pass, rejects re-read with line numbers) or ``"reference"``
    (one numbered pass: Parquet sources, and the safety net, see ``store_validated``).
    """

    rows: int
    quarantined: int
    columns: tuple[str, ...]
    fields: tuple[str, ...]
    good: str
    rejects: str
    headers: Mapping[str, str | None]
    path: Literal["stored", "reference"]
    tables: tuple[str, ...] = ()

    def good_sql(self) -> str:
        return self.good

    def quarantine_sql(self, relation: str | None = None) -> str:
        """The rejects; ``relation`` (a view over ``self.rejects``) to read them from."""
        return f"SELECT {', '.join(QUARANTINE_COLUMNS)} FROM {relation or f'({self.rejects})'}"

    def drop(self, con: duckdb.DuckDBPyConnection) -> None:
        for table in self.tables:
            con.execute(f"DROP TABLE IF EXISTS {quote_ident(table)}")


NO_REJECTS = (
    "SELECT NULL::VARCHAR AS __hr_file, NULL::BIGINT AS __hr_line, NULL::VARCHAR AS __hr_raw, "
    f"NULL::{VIOLATIONS_TYPE} AS __hr_violations WHERE false"
)


def stored_rows_sql(contract: Contract, raw: str, raw_columns: Sequence[str], *, other_keys: bool = False) -> str:
    """The parallel validation pass over a ``fast`` raw reader (``__hr_fidx, __hr_hash,
    __hr_error, __hr_blank[, __hr_other]`` then the fields): the typed columns (every row,
    bad ones too: duplicate keys are counted over all of them), then ``__hr_fidx, __hr_hash``
    (which line: file and text hash) and ``__hr_bad`` (a rule other than key uniqueness
    fails, or the record is unreadable; NULL on a blank line, which is no record). No
    messages, raw text or line numbers: the rejects are read again for those
    (``store_validated``), through the same SQL as ``plan_validation``."""
    match = check_contract_against_columns(contract, raw_columns)
    extras = match.extra if contract.schema == "evolve" else ()
    checks = _row_checks(contract, match) + _schema_checks(contract, match)
    meta = "__hr_fidx, __hr_hash, __hr_error, __hr_blank" + (", __hr_other" if other_keys else "")
    inner = _typed_levels(contract, raw, match, extras, meta)
    # one coalesce over the OR: NULL only when no check is true and some is unknown
    bad = " OR ".join(["__hr_error IS NOT NULL", *(c.condition for c in checks)])
    outputs = [
        f"CAST(__hr_t{i} AS {kind.duckdb_type()}) AS {quote_ident(name)}"
        for i, (name, kind) in enumerate(contract.columns.items())
    ]
    outputs.extend(quote_ident(x) for x in extras)
    # NULL on a blank line: not a record (flagged, not filtered: see _ndjson_sql)
    outputs += ["__hr_fidx", "__hr_hash", f"CASE WHEN __hr_blank THEN NULL ELSE coalesce({bad}, false) END AS __hr_bad"]
    if other_keys:
        outputs.append("__hr_other")
    return f"SELECT {', '.join(outputs)}\nFROM ({inner})"


def _reject_slots(rejects: int) -> int:
    """Bits of the rejects' hash bitmap: a power of two, ~256 per reject (2^16 to 2^27)."""
    return min(max(1 << 16, 1 << (256 * rejects).bit_length()), 1 << 27)


def copy_parquet(con: duckdb.DuckDBPyConnection, sql: str, target: Path) -> str:
    """COPY ``sql`` into Parquet files in the folder ``target`` (replaced); return a
    ``read_parquet`` over them. Why lz4, no dictionaries and per-thread files: the files live
    for one task and are read once or twice, while writing them is on the critical path
    (measured on 2M validated rows: zstd 0.31 s, lz4 0.22 s, lz4 without dictionaries 0.16 s)."""
    if target.exists():
        shutil.rmtree(target)
    con.execute(
        f"COPY ({sql}) TO {sql_string(str(target))} (FORMAT parquet, COMPRESSION lz4_raw, "
        "DICTIONARY_SIZE_LIMIT 1, PER_THREAD_OUTPUT true, OVERWRITE_OR_IGNORE true)"
    )
    return f"read_parquet({sql_string(str(target / '*.parquet'))})"


def store_validated(
    con: duckdb.DuckDBPyConnection,
    spec: FileSource,
    files: Sequence[Path],
    contract: Contract,
    *,
    directory: Path,
    name: str,
    threads: int | None = None,
) -> StoredValidation:
    """Probe, read, validate and store ``files`` as Parquet under ``directory``; temp tables
    are named ``{name}_...``. What the runner uses; the result is exactly what
    ``validate_files`` gives (same rows, same typed values, same rejects with the same file,
    line, raw text and violations), only faster:

    1. One parallel pass (``stored_rows_sql``) types and checks every line and stores it,
       without line numbers (they would force a single-threaded read), messages or raw text.
       Each row keeps its file and the hash of its text.
    2. Duplicate keys are counted from the stored key column (no second read of the input).
    3. The rejects (rules broken, or a duplicated key) are read again, numbered, restricted
       to the files holding one and to the lines whose text hash hits a bitmap of the
       rejects' hashes, and validated by the very SQL of ``plan_validation``. Identical lines
       always get the same verdict, so matching by text finds exactly the rejected lines (a
       good line sharing a bit comes in, validates as good and is left out). The rejects
       found must match those of step 2 (count and sum of text hashes), else everything is
       redone the reference way.

    NDJSON under ``schema="evolve"`` first assumes the keys are the contract's (no discovery
    pass); a record holding another key (``__hr_other``) makes it discover them and redo
    step 1. Parquet sources take the reference path (their line numbers are free).
    """
    directory.mkdir(parents=True, exist_ok=True)
    if threads is None:
        threads = int(con.execute("SELECT current_setting('threads')").fetchall()[0][0])
    if spec.format not in ("csv", "ndjson"):
        return _store_reference(con, spec, files, contract, directory=directory, name=name)
    optimistic = spec.format == "ndjson" and contract.schema == "evolve"
    stored = None
    if optimistic:
        with open_raw_reader(
            con, spec, files, fields=contract.names, contract=contract, workdir=directory, count_lines=False
        ) as raw:
            stored = _store_fast(con, raw, contract, directory=directory, name=name, threads=threads, other_keys=True)
    if stored is None:
        with open_raw_reader(con, spec, files, contract=contract, workdir=directory, count_lines=False) as raw:
            stored = _store_fast(con, raw, contract, directory=directory, name=name, threads=threads)
    if stored is None:  # the rejects read again did not add up: never expected, never silent
        return _store_reference(con, spec, files, contract, directory=directory, name=name)
    return stored


def _store_fast(
    con: duckdb.DuckDBPyConnection,
    raw: RawReader,
    contract: Contract,
    *,
    directory: Path,
    name: str,
    threads: int,
    other_keys: bool = False,
) -> StoredValidation | None:
    rows = store_rows(con, raw, contract, directory=directory, other_keys=other_keys)
    if rows.found_other:
        return None
    keys = rows.key_columns
    dups = f"{name}_dups"
    if keys:
        cols = ", ".join(f"{c} AS __hr_k{i}" for i, c in keys)
        known = " AND ".join(f"{c} IS NOT NULL" for _, c in keys)
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE {quote_ident(dups)} AS SELECT {cols}, count(*) AS __hr_dups "
            f"FROM {rows.stored} WHERE {known} GROUP BY ALL HAVING count(*) > 1"
        )
    rejects = store_rejects(
        con, rows, contract, duplicates=quote_ident(dups) if keys else None,
        directory=directory, name=name, threads=threads,
    )
    if rejects is None:
        if keys:
            con.execute(f"DROP TABLE IF EXISTS {quote_ident(dups)}")
        return None
    return rows.validation(rejects, tables=(dups,) if keys else ())


@dataclass(frozen=True)
class StoredRows:
    """Step 1 of the stored path over some files: every line typed and judged, stored as
    Parquet (``stored``, a ``read_parquet``), without line numbers.

    ``rows`` counts records, ``bad`` those breaking a rule other than key uniqueness;
    ``found_other`` (NDJSON under ``evolve``) says a record holds a key outside the assumed
    ones, so the keys must be discovered and the step redone. ``layout`` is what reading the
    rejects again needs (its fallback copies live in the same ``directory``). Picklable: a
    Spark task returns it to the driver, which hands it to the task reading the rejects.
    """

    spec: FileSource
    layout: RawLayout
    fields: tuple[str, ...]
    columns: tuple[str, ...]
    key_columns: tuple[tuple[int, str], ...]
    stored: str
    rows: int
    bad: int
    found_other: bool

    def validation(self, rejects: tuple[str, int], *, tables: tuple[str, ...] = ()) -> StoredValidation:
        """The whole result, given the rejects found by ``store_rejects``."""
        sql, quarantined = rejects
        if self.key_columns:
            on = " AND ".join(f"r.{c} = d.__hr_k{i}" for i, c in self.key_columns)
            anti = f" ANTI JOIN {quote_ident(tables[0])} AS d ON {on}" if tables else ""
        else:
            anti = ""
        csv = self.spec.format == "csv"
        return StoredValidation(
            rows=self.rows,
            quarantined=quarantined,
            columns=self.columns,
            fields=self.fields,
            good=f"SELECT {', '.join(f'r.{quote_ident(c)}' for c in self.columns)} FROM {self.stored} AS r{anti} "
            "WHERE NOT r.__hr_bad",
            rejects=sql,
            headers={str(p.path): p.header for p in self.layout.probes} if csv else {},
            path="stored",
            tables=tables,
        )


def store_rows(
    con: duckdb.DuckDBPyConnection,
    raw: RawReader,
    contract: Contract,
    *,
    directory: Path,
    other_keys: bool = False,
) -> StoredRows:
    """Step 1 of ``store_validated``: the parallel, unnumbered pass into ``directory/rows``."""
    spec, layout = raw.spec, raw.layout
    csv = spec.format == "csv"
    lines = lines_sql(spec, layout, numbered=False, skip_first=csv and spec.header)
    fast = (
        _csv_sql(spec, layout, lines=lines, fast=True)
        if csv
        else _ndjson_sql(spec, layout, lines=lines, fast=True, other_keys=other_keys)
    )
    match = check_contract_against_columns(contract, raw.fields)
    columns = (*contract.names, *(match.extra if contract.schema == "evolve" else ()))
    stored = copy_parquet(
        con, stored_rows_sql(contract, f"({fast})", raw.fields, other_keys=other_keys), directory / "rows"
    )
    other = "coalesce(bool_or(__hr_other), false)" if other_keys else "false"
    found_other, rows, bad = con.execute(
        f"SELECT {other}, count(__hr_bad), count(*) FILTER (WHERE __hr_bad) FROM {stored}"
    ).fetchall()[0]
    keys = tuple((i, quote_ident(n)) for i, (n, k) in enumerate(contract.columns.items()) if k.key)
    return StoredRows(
        spec=spec, layout=layout, fields=raw.fields, columns=columns, key_columns=keys, stored=stored,
        rows=int(rows), bad=int(bad), found_other=bool(found_other),
    )


def store_rejects(
    con: duckdb.DuckDBPyConnection,
    rows: StoredRows,
    contract: Contract,
    *,
    duplicates: str | None,
    directory: Path,
    name: str,
    threads: int,
) -> tuple[str, int] | None:
    """Steps 2-3 of ``store_validated``: read the rejects of ``rows`` again, numbered, into
    ``directory/rejects``. ``duplicates`` is a relation of the duplicated keys (``__hr_k{i}``,
    ``__hr_dups``), computed over every row of the batch (which may be more files than
    ``rows`` covers). Returns the rejects' query and count, or None when the rejects read
    again do not add up (the caller then takes the reference path)."""
    spec, layout, stored = rows.spec, rows.layout, rows.stored
    csv = spec.format == "csv"
    keys = rows.key_columns
    join, bad = "", "r.__hr_bad"
    quarantined = rows.bad
    if keys and duplicates is not None:
        shared = con.execute(f"SELECT coalesce(sum(__hr_dups), 0) FROM {duplicates}").fetchall()[0][0]
        if shared:
            on = " AND ".join(f"r.{c} = d.__hr_k{i}" for i, c in keys)
            join = f" LEFT JOIN {duplicates} AS d ON {on}"
            bad = "(r.__hr_bad OR d.__hr_dups IS NOT NULL)"
            quarantined += int(shared)  # an upper bound until the scan below counts them
    if not quarantined:
        return NO_REJECTS, 0
    # a bitmap of the rejects' text hashes, < 0.4% of its bits set: few good lines pass it
    slots = _reject_slots(int(quarantined))
    variable = sql_string(f"{name}_rejects")
    # one scan: the rejects' count, bitmap, files and hash sum, and every file's count of
    # lines read
    con.execute(
        f"SET VARIABLE {quote_ident(f'{name}_rejects')} = (SELECT {{'count': count(*) FILTER (WHERE {bad}), "
        "'bits': "
        f"bitstring_agg((r.__hr_hash % {slots})::BIGINT, 0, {slots - 1}) FILTER (WHERE {bad}), "
        f"'files': list(DISTINCT r.__hr_fidx) FILTER (WHERE {bad}), "
        f"'check': sum(r.__hr_hash::HUGEINT) FILTER (WHERE {bad}), "
        f"'lines': histogram(r.__hr_fidx)}} FROM {stored} AS r{join})"
    )
    quarantined, in_files, read, check = con.execute(
        f"SELECT getvariable({variable}).count, getvariable({variable}).files, "
        f"getvariable({variable}).lines, getvariable({variable}).check"
    ).fetchall()[0]
    if not quarantined:  # the duplicated keys were in other files
        con.execute(f"RESET VARIABLE {quote_ident(f'{name}_rejects')}")
        return NO_REJECTS, 0
    layout = _with_line_counts(layout, sorted(in_files), dict(read), header=csv and spec.header)
    numbered = lines_sql(
        spec, layout, only=(f"getvariable({variable}).bits", slots), files=sorted(in_files),
        parts=threads, nonblank=_CSV_NONBLANK if csv else _JSON_NONBLANK,
    )
    exact = (
        _csv_sql(spec, layout, lines=numbered, filtered=True)
        if csv
        else _ndjson_sql(spec, layout, lines=numbered, filtered=True)
    )
    plan = plan_validation(contract, f"({exact})", rows.fields, duplicates=duplicates if keys else None)
    stored_rejects = copy_parquet(con, plan.quarantine_sql(f"({plan.sql})", with_raw=True), directory / "rejects")
    con.execute(f"RESET VARIABLE {quote_ident(f'{name}_rejects')}")
    found = con.execute(f"SELECT count(*), sum(hash(__hr_raw_read)::HUGEINT) FROM {stored_rejects}").fetchall()[0]
    if found != (quarantined, check):
        return None
    return f"SELECT {', '.join(QUARANTINE_COLUMNS)} FROM {stored_rejects}", int(quarantined)


def _with_line_counts(
    layout: RawLayout, files: Sequence[int], counts: Mapping[int, int], *, header: bool
) -> RawLayout:
    """``layout`` with the line counts of the regular ``files`` filled in from ``counts``,
    the stored rows per file: the unnumbered read kept one row per line (blank ones too),
    all but a CSV file's skipped header line."""
    missing = [i for i in files if layout.probes[i].regular and layout.probes[i].lines is None]
    probes = list(layout.probes)
    for i in missing:
        probes[i] = replace(probes[i], lines=counts.get(i, 0) + (1 if header else 0))
    return replace(layout, probes=tuple(probes))


def _store_reference(
    con: duckdb.DuckDBPyConnection,
    spec: FileSource,
    files: Sequence[Path],
    contract: Contract,
    *,
    directory: Path,
    name: str,
) -> StoredValidation:
    """One numbered pass of ``plan_validation`` (duplicates by a key-only pre-pass) stored
    whole; good rows and rejects both read it."""
    with open_raw_reader(con, spec, files, contract=contract, workdir=directory) as raw:
        dups = f"{name}_dups" if contract.keys else None
        plan = plan_validation(
            contract, f"({raw.sql})", raw.fields, duplicates=quote_ident(dups) if dups else None
        )
        if dups:
            keys_sql = f"({raw.sql_for(plan.key_fields)})"
            con.execute(f"CREATE OR REPLACE TEMP TABLE {quote_ident(dups)} AS {plan.duplicates_sql(keys_sql)}")
        stored = copy_parquet(con, plan.sql, directory / "all")
        headers = {str(p.path): p.header for p in raw.layout.probes} if spec.format == "csv" else {}
    rows, quarantined = con.execute(plan.counts_sql(stored)).fetchall()[0]
    return StoredValidation(
        rows=int(rows),
        quarantined=int(quarantined),
        columns=plan.columns,
        fields=raw.fields,
        good=plan.good_sql(stored),
        rejects=plan.quarantine_sql(stored),
        headers=headers,
        path="reference",
        tables=(dups,) if dups else (),
    )
