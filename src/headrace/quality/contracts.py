"""Data contracts on the engine side: read every record, type it, list every broken rule.

Two pieces of SQL, both vectorised (no per-row Python):

1. The **raw reader** (``open_raw_reader`` / ``raw_reader_sql``) reads CSV and NDJSON files
   line by line so no record is ever lost: each non-blank line becomes one row with
   ``__hr_file, __hr_line, __hr_raw, __hr_error`` and one VARCHAR column per field. A record
   that cannot be parsed (malformed JSON, wrong field count, invalid UTF-8, ...) is a row with
   ``__hr_error`` set instead of an exception or a silently skipped line. Parquet rows always
   parse; their ``__hr_raw`` is the row as JSON.
2. The **validation** (``plan_validation`` / ``validation_sql``) is one SELECT over the raw
   relation that casts each contract column (``TRY_CAST``, ``json_transform_strict``), checks
   every rule, and collects *all* failures of a row in ``__hr_violations``.

How the caller uses them: ``validate_files`` runs the whole sequence::

    batch = validate_files(con, spec, files, contract, table="hr_checked", duplicates="prepass")
    good = con.sql(batch.good_sql())              # typed rows, no __hr_ columns
    bad = con.sql(batch.quarantine_sql())         # __hr_file, __hr_line, __hr_raw, __hr_violations
    check_outcome(contract, batch.rows, batch.quarantined, source="orders")  # fail / ratio
    ...
    batch.drop(con)

which is, step by step::

    with open_raw_reader(con, spec, files, contract=contract) as raw:   # probes the files
        plan = plan_validation(contract, f"({raw.sql})", raw.fields, duplicates="hr_dups")
        con.execute(f"CREATE TEMP TABLE hr_dups AS {plan.duplicates_sql(f'({raw.sql_for(plan.key_fields)})')}")
        con.execute(f"CREATE TEMP TABLE hr_checked AS {plan.sql}")       # the one full pass
    plan.good_sql("hr_checked"), plan.quarantine_sql("hr_checked"), plan.counts_sql("hr_checked")

Why a temp table: the validated rows are needed twice (good rows and quarantine), a DuckDB
view re-runs on every use, and a filter over the view would be pushed below the JSON
extraction and evaluate it twice. ``__hr_raw`` is NULL on rows without violations, so the
table holds the typed values plus the raw text of the bad rows only.

Why line by line through ``read_csv``: DuckDB's ``read_json``/``read_csv`` either stop at the
first bad record or skip it (``ignore_errors``), and neither reports line numbers nor raw text
of good rows. A one-column ``read_csv`` (a delimiter that cannot occur, no quoting) is DuckDB's
fastest line splitter; JSON is then parsed with ``json_valid``/``json_extract_string`` and CSV
fields with ``string_split`` (or a regular expression for quoted lines).

**The stored path** (``store_validated``, what the runner uses) gives exactly the same result,
2-3x faster, by not paying for line numbers, raw text and messages on the good rows. Line
numbers come from ``WITH ORDINALITY``, which makes DuckDB read *and validate* on one thread;
so one parallel, unnumbered pass (``stored_rows_sql``) types and checks every line and stores
the typed values, a verdict, the file and the hash of each line's text as Parquet. Duplicate
keys are then counted from the stored key column, and only the rejects are read again,
numbered, found by their text hash (a bitmap filter), and validated by the very SQL of
``plan_validation``: same file, line, raw text and violations. NDJSON under ``evolve`` also
skips the key-discovery pass: the contract's keys are assumed, and a record holding another
key (checked in the same pass) sends it back to discovery. Measured on 2M NDJSON orders with
1% bad records (``bench/ingest.py --contract``): 4.4 s -> 1.6 s.
"""

from __future__ import annotations

import codecs
import datetime as dt
import decimal
import os
import re
import shutil
import tempfile
from collections.abc import Collection, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import duckdb
import pyarrow as pa

from headrace.errors import DataQualityError, SourceError
from headrace.sources.files import quote_ident, sql_string
from headrace.spec.contracts import (
    RESERVED_PREFIX,
    ColumnType,
    Contract,
    Date,
    Decimal,
    Float32,
    Float64,
    Int8,
    Int16,
    Int32,
    Int64,
    List,
    String,
    Struct,
    Timestamp,
)
from headrace.spec.sources import FileSource

META_COLUMNS: tuple[str, ...] = ("__hr_file", "__hr_line", "__hr_raw", "__hr_error")
"""The raw reader's leading columns, in order."""
QUARANTINE_COLUMNS: tuple[str, ...] = ("__hr_file", "__hr_line", "__hr_raw", "__hr_violations")
"""The columns of a quarantine row, in order."""
VIOLATION_TYPE = 'STRUCT("column" VARCHAR, "rule" VARCHAR, message VARCHAR)'
VIOLATIONS_TYPE = f"{VIOLATION_TYPE}[]"

# A delimiter that valid data practically never holds (a private-use code point). The probe
# checks every file for it; a file that holds it goes through the exact fallback reader.
_SENTINEL = "\U0010fffd"
_SENTINEL_BYTES = _SENTINEL.encode()
_MAX_LINE_SIZE = 256 * 1024 * 1024
_CHUNK = 16 * 1024 * 1024
_MESSAGE_VALUE_CHARS = 80


# ---- probing files ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FileProbe:
    """What one byte-level pass over a file learned.

    ``lines`` counts physical lines the way DuckDB's line reader splits them, so the global
    ordinality of a multi-file read minus the lines of the files before gives exact per-file
    line numbers (None when the probe was asked not to count: see ``probe_file``).
    ``regular`` files (valid UTF-8, one newline style, no bare CR, no sentinel) go through
    DuckDB's line reader; the others through the exact Python-split fallback. ``size`` is
    the (decompressed) byte count.
    """

    path: Path
    lines: int | None
    regular: bool
    crlf: bool
    header: str | None
    why_irregular: str | None = None
    size: int = 0


def _compression(spec: FileSource, path: Path) -> str | None:
    """The pyarrow codec for ``path`` (None when plain), following DuckDB's suffix rules."""
    if spec.compression == "none":
        return None
    if spec.compression in ("gzip", "zstd"):
        return spec.compression
    suffix = path.suffix.lower()
    return {".gz": "gzip", ".gzip": "gzip", ".zst": "zstd", ".zstd": "zstd"}.get(suffix)


def _open_bytes(spec: FileSource, path: Path) -> pa.NativeFile:
    codec = _compression(spec, path)
    raw = pa.OSFile(str(path), "rb")
    return pa.CompressedInputStream(raw, codec) if codec else raw


def file_chunks(spec: FileSource, path: Path) -> Iterator[bytes]:
    try:
        with _open_bytes(spec, path) as stream:
            while True:
                chunk = stream.read(_CHUNK)
                if not chunk:
                    return
                yield chunk
    except (OSError, pa.ArrowException) as exc:
        raise SourceError(
            f"cannot read {path}: {exc}",
            hint="check the file and its compression setting",
            path=str(path),
        ) from exc


def header_text(first_line: bytes | None) -> str | None:
    """A file's first line as text: CR and BOM dropped, undecodable bytes replaced."""
    if first_line is None:
        return None
    return first_line.removesuffix(b"\r").decode("utf-8", errors="replace").removeprefix("\ufeff")


def probe_file(spec: FileSource, path: Path, *, count_lines: bool = True) -> FileProbe:
    """Scan one file's bytes at C speed (count, find, incremental UTF-8 decode): no per-line
    Python. Why: deciding the reader per file is what lets the fast path stay exact.

    ``count_lines=False`` leaves ``lines`` None: counting newlines is two thirds of the
    probe's time (0.09 s of 0.13 s on 300 MB), and ``store_validated`` learns the counts it
    needs from its own read. Newlines are then counted only in chunks holding a CR (to tell
    CRLF from mixed endings)."""
    newlines = crlf = bare_cr = size = 0
    lf_only_seen = False
    valid_utf8 = True
    has_sentinel = False
    decoder = codecs.getincrementaldecoder("utf-8")()
    tail = b""
    header: bytes | None = None
    head = b""
    last = b""
    pending_cr = False
    for chunk in file_chunks(spec, path):
        size += len(chunk)
        joined = pending_cr and chunk[:1] == b"\n"  # a CRLF split across two chunks
        if joined:
            bare_cr -= 1
            crlf += 1
        if b"\r" in chunk:  # memchr: counting only when present saves a full pass
            here = chunk.count(b"\n")
            newlines += here
            pairs = chunk.count(b"\r\n")
            crlf += pairs
            bare_cr += chunk.count(b"\r") - pairs
            lf_only_seen = lf_only_seen or here - pairs - joined > 0
        else:
            if count_lines:
                newlines += chunk.count(b"\n")
            lf_only_seen = lf_only_seen or b"\n" in (chunk[1:] if joined else chunk)
        pending_cr = chunk.endswith(b"\r")
        # ASCII (the usual case) is valid UTF-8 without the sentinel: one fast check
        if not chunk.isascii():
            if valid_utf8:
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError:
                    valid_utf8 = False
            has_sentinel = has_sentinel or _SENTINEL_BYTES in tail + chunk
        elif valid_utf8:
            try:  # a multi-byte sequence cut short by this ASCII chunk is invalid
                decoder.decode(b"", final=True)
            except UnicodeDecodeError:
                valid_utf8 = False
            decoder.reset()
        tail = chunk[-(len(_SENTINEL_BYTES) - 1) :]
        if header is None:
            head += chunk
            end = head.find(b"\n")
            if end >= 0:
                header = head[:end]
                head = b""
        last = chunk[-1:]
    if valid_utf8:
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            valid_utf8 = False
    if header is None and head:
        header = head
    lines = newlines + (1 if last and last != b"\n" else 0) if count_lines else None
    why = None
    if not valid_utf8:
        why = "invalid UTF-8"
    elif bare_cr:
        why = "carriage return without line feed"
    elif crlf and lf_only_seen:
        why = "mixed line endings"
    elif has_sentinel:
        why = "holds U+10FFFD"
    return FileProbe(
        path=path,
        lines=lines,
        regular=why is None,
        crlf=crlf > 0 and not lf_only_seen,
        header=header_text(header),
        why_irregular=why,
        size=size,
    )


# Probing many files in threads pays off above this much input: Arrow's reads (and gzip/zstd
# decoding) release the GIL, so two threads probe 300 MB in 0.03 s instead of 0.05 s.
_PARALLEL_PROBE_BYTES = 32 * 1024 * 1024


def probe_files(spec: FileSource, files: Sequence[Path], *, count_lines: bool = True) -> tuple[FileProbe, ...]:
    """``probe_file`` for each of ``files`` (in order), several at a time when there is
    enough to read; a file that cannot be read raises as it would alone."""
    workers = min(len(files), os.cpu_count() or 1, 4)
    if workers > 1:
        try:
            total = sum(p.stat().st_size for p in files)
        except OSError:
            total = 0  # probe_file says which file and why
        if total >= _PARALLEL_PROBE_BYTES:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="headrace-probe") as pool:
                return tuple(pool.map(lambda p: probe_file(spec, p, count_lines=count_lines), files))
    return tuple(probe_file(spec, p, count_lines=count_lines) for p in files)


def _write_fallback(spec: FileSource, probe: FileProbe, target: Path) -> None:
    """Split an irregular file on ``\\n`` exactly and store the lines as a Parquet BLOB column.

    Why: DuckDB's CSV line reader treats a bare CR as a line break (and may drop text after
    it), and refuses invalid UTF-8. ``bytes.split`` and one Arrow conversion are C-level, and
    irregular files are rare; the whole file is held in memory once here.
    """
    data = b"".join(file_chunks(spec, probe.path))
    if data.endswith(b"\n"):
        data = data[:-1]
    lines = data.split(b"\n") if data else []
    # replacement decoding never swallows a b"\n" (it is no continuation byte), so the text
    # lines align with the byte lines; the bytes tell which lines are invalid
    text = data.decode("utf-8", errors="replace").split("\n") if data else []
    import pyarrow.parquet as pq  # irregular files are rare: only they pay for the import

    table = pa.table({"raw": pa.array(lines, type=pa.binary()), "text": pa.array(text, pa.string())})
    pq.write_table(table, target, compression="zstd")


# ---- the raw reader --------------------------------------------------------------------------


@dataclass(frozen=True)
class RawLayout:
    """Everything the raw reader's SQL depends on, learned by probing the files.

    ``fields`` are the field names after the four ``__hr_`` columns (the union over the
    files); for NDJSON ``keys`` are the JSON keys they read (a key differing from another
    only in case gets a ``_1`` suffix in ``fields``: DuckDB names are case-insensitive);
    ``headers`` maps each CSV file to its own field names; ``fallback`` maps each
    irregular file to its pre-split Parquet copy.
    """

    probes: tuple[FileProbe, ...]
    fields: tuple[str, ...]
    keys: tuple[str, ...] = ()
    headers: tuple[tuple[str, ...], ...] = ()
    fallback: Mapping[Path, Path] = field(default_factory=dict)
    parquet_types: tuple[tuple[str, str], ...] = ()


def _list_literal(values: Sequence[Any]) -> str:
    parts = [sql_string(v) if isinstance(v, str) else ("NULL" if v is None else str(v)) for v in values]
    return "[" + ", ".join(parts) + "]"


def _line_reader_options(spec: FileSource) -> str:
    opts = [
        "columns={'line': 'VARCHAR'}",
        "header=false",
        "auto_detect=false",
        f"delim={sql_string(_SENTINEL)}",
        "quote=''",
        "escape=''",
        "strict_mode=true",
        f"max_line_size={_MAX_LINE_SIZE}",
    ]
    if spec.compression != "auto":
        opts.append(f"compression={sql_string(spec.compression)}")
    return ", ".join(opts)


def _split(items: Sequence[Any], parts: int) -> list[Sequence[Any]]:
    """``items`` in at most ``parts`` consecutive runs of near-equal length."""
    parts = max(1, min(parts, len(items)))
    return [items[len(items) * k // parts : len(items) * (k + 1) // parts] for k in range(parts)]


def _counted(probe: FileProbe) -> int:
    if probe.lines is None:
        raise ValueError(f"{probe.path}: numbered reads need the file's line count")
    return probe.lines


def lines_sql(
    spec: FileSource,
    layout: RawLayout,
    *,
    numbered: bool = True,
    only: tuple[str, int] | None = None,
    files: Sequence[int] | None = None,
    parts: int = 1,
    skip_first: bool = False,
    nonblank: str | None = None,
) -> str:
    """Every physical line as ``(__hr_fidx, __hr_line, __hr_text, __hr_enc)``.

    ``__hr_fidx`` is the file's position in ``layout.probes``; ``__hr_enc`` is set when the
    line is not valid UTF-8 (its text then shows U+FFFD for the undecodable bytes). Regular
    files with the same newline style share one ``read_csv`` call: the global ordinality minus
    the lines of the files before gives the line number (per-file reads would make the plan
    grow with the file count).

    Line numbers cost parallelism: DuckDB reads a table function ``WITH ORDINALITY`` on one
    thread, and everything above the scan in the same pipeline with it. ``numbered=False``
    leaves ``__hr_line`` NULL for regular files and reads in parallel (``skip_first`` then
    drops each file's first line, a CSV header). Numbered reads can be split into ``parts``
    calls that run side by side. ``files`` restricts the read to those file positions.
    ``only = (bits, slots)`` keeps only the lines whose ``hash(__hr_text) % slots`` bit is
    set in ``bits``, a constant BIT expression (numbered as in the whole file): a superset of
    the lines it was built from, with a few others whose hash shares a bit. Why a bitmap and
    not a semi-join: DuckDB estimates a ``read_csv`` at a few hundred rows and builds the
    join's hash table on the lines, every text in it (0.5 s on 2M lines); and a constant,
    not a subquery, which DuckDB would join row by row (0.35 s). ``nonblank``, a condition
    on ``__hr_text``, is applied after the bitmap (one CASE: a plain AND lets DuckDB test the
    costlier condition on every line first).
    """
    wanted = set(range(len(layout.probes))) if files is None else set(files)
    selects: list[str] = []
    for crlf in (False, True):
        group = [(i, p) for i, p in enumerate(layout.probes) if p.regular and p.crlf == crlf]
        group = [(i, p) for i, p in group if p.size > 0 and i in wanted]
        if not group:
            continue
        for run in _split(group, parts if numbered else 1):
            paths = _list_literal([str(p.path) for _, p in run])
            index = f"{_list_literal([i for i, _ in run])}[file_index::BIGINT + 1]"
            if numbered:
                offsets, total = [], 0
                for _, probe in run:
                    offsets.append(total)
                    total += _counted(probe)
                line = f"ordinality - {_list_literal(offsets)}[file_index::BIGINT + 1]"
                tail = " WITH ORDINALITY"
                options = _line_reader_options(spec)
            else:
                line, tail = "NULL::BIGINT", ""
                options = _line_reader_options(spec) + (", skip=1" if skip_first else "")
            selects.append(
                f"SELECT {index} AS __hr_fidx, {line} AS __hr_line, "
                "line AS __hr_text, NULL::VARCHAR AS __hr_enc "
                f"FROM read_csv({paths}, {options}){tail}"
            )
    irregular = [
        (i, p) for i, p in enumerate(layout.probes) if not p.regular and p.size > 0 and i in wanted
    ]
    if irregular:
        paths = _list_literal([str(layout.fallback[p.path]) for _, p in irregular])
        decoded = "try(decode(raw))"
        selects.append(
            f"SELECT {_list_literal([i for i, _ in irregular])}[file_index::BIGINT + 1] AS __hr_fidx, "
            "file_row_number + 1 AS __hr_line, "
            "regexp_replace(text, '\\r$', '') AS __hr_text, "
            f"CASE WHEN {decoded} IS NULL THEN 'invalid UTF-8' END AS __hr_enc "
            f"FROM read_parquet({paths}, file_row_number=true)"
            + (" WHERE file_row_number > 0" if skip_first and not numbered else "")
        )
    if not selects:
        return (
            "SELECT NULL::INTEGER AS __hr_fidx, NULL::BIGINT AS __hr_line, "
            "NULL::VARCHAR AS __hr_text, NULL::VARCHAR AS __hr_enc WHERE false"
        )
    union = "\nUNION ALL\n".join(selects)
    if only is None:
        return union if nonblank is None else f"SELECT * FROM ({union}) WHERE {nonblank}"
    bits, slots = only
    hit = f"get_bit({bits}, (hash(__hr_text) % {slots})::INTEGER) = 1"
    if nonblank is not None:
        hit = f"CASE WHEN {hit} THEN {nonblank} ELSE false END"
    return f"SELECT * FROM ({union}) WHERE {hit}"


def _json_path(name: str) -> str:
    """A JSON pointer for a top-level key: any key text is expressible (``~0``, ``~1``)."""
    return "/" + name.replace("~", "~0").replace("/", "~1")


def _file_column(layout: RawLayout) -> str:
    return f"{_list_literal([str(p.path) for p in layout.probes])}[__hr_fidx + 1]"


def _trim_ws(text: str) -> str:
    """SQL: ``text`` without leading/trailing JSON whitespace. Why guarded by ``ascii() > 32``
    at the call sites: ``trim(x, chars)`` costs more than the JSON parse itself."""
    return f"trim({text}, ' ' || chr(9) || chr(10) || chr(13))"


def _json_values(layout: RawLayout) -> tuple[str, list[str]]:
    """SQL for the field values of a JSON object line (``__hr_text``; NULL unless
    ``__hr_kind = 'OBJECT'``): one ``json_extract_string`` with every key's JSON pointer
    (one parse), and the expression reading each field from its list.

    (``json_transform`` into a struct of VARCHARs is 5% faster, but renders numbers
    differently, ``1e-06`` for ``0.000001``: the text a String column stores would change.)"""
    if not layout.fields:
        return "NULL::VARCHAR[]", []
    paths = _list_literal([_json_path(k) for k in layout.keys])
    values = f"CASE WHEN __hr_kind = 'OBJECT' THEN json_extract_string(__hr_text, {paths}) END"
    return values, [f"__hr_v[{i + 1}]" for i in range(len(layout.fields))]


def _keys_within_sql(layout: RawLayout, reads: Sequence[str]) -> str:
    """SQL, per valid JSON object line: true when it holds a top-level key outside
    ``layout.keys``.

    With ``p`` known keys holding a value (distinct members; ``reads`` are their values, the
    elements of ``__hr_v``) and ``k`` members in all, ``k >= p``; when ``k = p`` every member
    is a known key. An object of ``k`` members has ``k - 1`` separating commas, and commas in
    strings, keys or nested values only add to the count, so ``commas + 1 >= k >= p``: at
    most ``p - 1`` commas proves ``k = p`` without parsing the line again. The tests, cheapest
    first (2M order lines: 0.18 s for ``json_keys`` alone, 0.04 s for the first test):

    1. every known key has a value and the line has fewer commas than keys: a ``LIKE`` with
       a constant pattern (a string search);
    2. fewer known values: ``string_split`` counts the commas;
    3. commas in the values: ``len(json_keys())`` (a parse) equals ``p``;
    4. ``list_has_all`` (0.5 us a line), only where members outnumber the known values: an
       explicit null, a duplicate key, or another key.
    """
    known = _list_literal(list(layout.keys))
    if not reads:
        return f"CASE WHEN len(json_keys(__hr_text)) = 0 THEN false ELSE NOT list_has_all({known}, json_keys(__hr_text)) END"
    every, present = len(reads), "list_count(__hr_v)"
    return (
        f"CASE WHEN {present} = {every} AND NOT __hr_text LIKE '%{',%' * every}' THEN false "
        f"WHEN {present} < {every} AND len(string_split(__hr_text, ',')) = {present} THEN false "
        f"WHEN len(json_keys(__hr_text)) = {present} THEN false "
        f"ELSE NOT list_has_all({known}, json_keys(__hr_text)) END"
    )


_JSON_NONBLANK = f"__hr_text IS NOT NULL AND (__hr_text >= '!' OR {_trim_ws('__hr_text')} <> '')"
"""A line holding a record (NDJSON): not only JSON whitespace. ``>= '!'`` is the first byte
above space, the same test as ``ascii() > 32`` without decoding a character."""
_CSV_NONBLANK = "__hr_text IS NOT NULL AND __hr_text <> ''"


def _ndjson_sql(
    spec: FileSource,
    layout: RawLayout,
    *,
    lines: str | None = None,
    fast: bool = False,
    other_keys: bool = False,
    filtered: bool = False,
) -> str:
    """The NDJSON raw reader over ``lines`` (default: every line, numbered).

    ``fast`` yields ``__hr_fidx, __hr_hash, __hr_error, __hr_blank`` instead of the file
    name, line and raw text, and keeps blank lines (flagged ``__hr_blank``) instead of
    filtering them: a filter over every line costs more than the flag, computed only for
    lines that are not valid JSON (see ``store_validated``). With ``other_keys`` also
    ``__hr_other``, true on an object line holding a key outside ``layout.keys``.
    ``filtered``: ``lines`` already left out the blank lines (``lines_sql(nonblank=...)``).
    """
    lines = lines or lines_sql(spec, layout)
    values, reads = _json_values(layout)
    columns = "".join(f", {r} AS {quote_ident(name)}" for r, name in zip(reads, layout.fields, strict=True))
    error = (
        "CASE WHEN __hr_enc IS NOT NULL THEN __hr_enc "
        "WHEN __hr_kind IS NULL THEN 'malformed JSON: ' || CASE "
        "WHEN starts_with(ltrim(__hr_text), '{') AND NOT ends_with(rtrim(__hr_text), '}') "
        "THEN 'unexpected end of record (truncated?)' ELSE 'invalid syntax' END "
        "WHEN __hr_kind <> 'OBJECT' THEN 'expected a JSON object, found ' || __hr_kind END"
    )
    # valid JSON's first character tells its kind: cheaper than json_type's second parse
    # (json_valid must come first anyway: the JSON functions raise on malformed text);
    # ascii() of the first character, trimmed only when it is whitespace (trim is slow),
    # after the usual case, a line starting with "{"
    first = f"ascii(CASE WHEN __hr_text >= '!' THEN __hr_text ELSE {_trim_ws('__hr_text')} END)"
    kind = (
        "CASE WHEN __hr_enc IS NULL AND json_valid(__hr_text) THEN "
        f"CASE WHEN starts_with(__hr_text, '{{') THEN 'OBJECT' ELSE CASE {first} "
        "WHEN 123 THEN 'OBJECT' WHEN 91 THEN 'array' WHEN 34 THEN 'string' "
        "WHEN 116 THEN 'boolean' WHEN 102 THEN 'boolean' WHEN 110 THEN 'null' "
        "ELSE 'number' END END END"
    )
    where = "" if filtered or fast else f" WHERE {_JSON_NONBLANK}"
    if fast:
        meta = "__hr_fidx, hash(__hr_text) AS __hr_hash"
        error += f" AS __hr_error, CASE WHEN __hr_kind IS NULL THEN NOT ({_JSON_NONBLANK}) ELSE false END AS __hr_blank"
        if other_keys:
            within = _keys_within_sql(layout, reads)
            error += f", CASE WHEN __hr_kind = 'OBJECT' THEN {within} ELSE false END AS __hr_other"
    else:
        meta = f"{_file_column(layout)} AS __hr_file, __hr_line, __hr_text AS __hr_raw"
        error += " AS __hr_error"
    return (
        f"SELECT {meta}, {error}{columns}\n"
        f"FROM (SELECT *, {values} AS __hr_v FROM (SELECT *, {kind} AS __hr_kind FROM ({lines}){where}))"
    )


def _re2_char(ch: str) -> str:
    return ch if ch.isalnum() else f"\\x{{{ord(ch):X}}}"


def _re2_literal(text: str) -> str:
    return "".join(_re2_char(c) for c in text)


@dataclass(frozen=True)
class CsvDialect:
    """The CSV options of a source, with DuckDB's defaults filled in."""

    delimiter: str
    quote: str
    escape: str
    null_string: str

    @classmethod
    def of(cls, spec: FileSource) -> CsvDialect:
        quote = '"' if spec.quote is None else spec.quote
        escape = quote if spec.escape is None else spec.escape
        return cls(
            delimiter=spec.delimiter or ",",
            quote=quote,
            escape=escape,
            null_string="" if spec.null_string is None else spec.null_string,
        )

    @property
    def quoting(self) -> bool:
        """Quotes are honoured for a one-character delimiter and quote (the usual case)."""
        return len(self.quote) == 1 and len(self.delimiter) == 1

    def field_pattern(self, lit: Any) -> str:
        """One field: a quoted field, or anything without delimiter and quote."""
        q, d, e = lit(self.quote), lit(self.delimiter), lit(self.escape)
        if self.escape == self.quote:
            quoted = f"{q}(?:[^{q}]|{q}{q})*{q}"
        else:
            quoted = f"{q}(?:[^{q}{e}]|{e}.)*{q}"
        return f"(?:{quoted}|[^{d}{q}]*)"

    def record_pattern(self, lit: Any) -> str:
        f = self.field_pattern(lit)
        return f"{f}(?:{lit(self.delimiter)}{f})*"

    def split(self, line: str) -> list[str] | None:
        """Python twin of the SQL field split, used for header lines only."""
        if not self.quoting or self.quote not in line:
            return line.split(self.delimiter)
        if not re.fullmatch(self.record_pattern(re.escape), line, flags=re.S):
            return None
        pattern = re.escape(self.delimiter) + "(" + self.field_pattern(re.escape) + ")"
        return [self._unquote(f) for f in re.findall(pattern, self.delimiter + line, flags=re.S)]

    def _unquote(self, text: str) -> str:
        if not text.startswith(self.quote):
            return text
        inner = text[1:-1]
        if self.escape == self.quote:
            return inner.replace(self.quote * 2, self.quote)
        return re.sub(re.escape(self.escape) + "(.)", r"\1", inner, flags=re.S)

    def split_sql(self, text: str) -> str:
        """SQL: the line's fields as VARCHAR[] (NULL when its quoting is malformed)."""
        plain = f"string_split({text}, {sql_string(self.delimiter)})"
        if not self.quoting:
            return plain
        q = sql_string(self.quote)
        record = sql_string(self.record_pattern(_re2_literal))
        one = sql_string(_re2_literal(self.delimiter) + "(" + self.field_pattern(_re2_literal) + ")")
        if self.escape == self.quote:
            inner = f"replace(f[2:-2], {sql_string(self.quote * 2)}, {q})"
        else:
            inner = f"regexp_replace(f[2:-2], {sql_string(_re2_literal(self.escape) + '(.)')}, '\\1', 'gs')"
        unquote = f"lambda f: CASE WHEN starts_with(f, {q}) THEN {inner} ELSE f END"
        return (
            f"CASE WHEN NOT contains({text}, {q}) THEN {plain} "
            f"WHEN regexp_full_match({text}, {record}, 's') THEN list_transform("
            f"regexp_extract_all({sql_string(self.delimiter)} || {text}, {one}, 1, 's'), {unquote}) END"
        )


def unique_names(names: Sequence[str]) -> tuple[str, ...]:
    """Column names DuckDB can tell apart: empty names become ``column<i>``; a repeat, also
    one differing only in case (DuckDB identifiers are case-insensitive), gets ``_1``,
    ``_2``... as DuckDB's own readers name them; a name starting with ``__hr_`` gets a
    leading ``_`` so it cannot shadow the reader's own columns."""
    out: list[str] = []
    seen: set[str] = set()
    for i, raw in enumerate(names):
        name = raw if raw.strip() else f"column{i}"
        if name.lower().startswith(RESERVED_PREFIX):  # never shadow the reader's own columns
            name = "_" + name
        base, n = name, 0
        while name.lower() in seen:
            n += 1
            name = f"{base}_{n}"
        seen.add(name.lower())
        out.append(name)
    return tuple(out)


class HeaderLine(Protocol):
    """What ``csv_headers`` reads of a file: its path and first line (a ``FileProbe``)."""

    @property
    def path(self) -> Path: ...

    @property
    def header(self) -> str | None: ...


def csv_headers(spec: FileSource, probes: Sequence[HeaderLine], names: Sequence[str] | None) -> tuple[tuple[str, ...], ...]:
    """Each file's field names: its header line, or ``names`` for headerless files."""
    dialect = CsvDialect.of(spec)
    headers: list[tuple[str, ...]] = []
    for probe in probes:
        if not spec.header:
            headers.append(tuple(names or ()))
            continue
        fields = dialect.split(probe.header) if probe.header is not None else []
        if fields is None:
            raise SourceError(
                f"{probe.path}: the header line's quoting is malformed",
                hint="fix the first line of the file",
                path=str(probe.path),
                line=1,
            )
        headers.append(unique_names(fields) if probe.header is not None else ())
    return tuple(headers)


def csv_union(headers: Sequence[Sequence[str]]) -> tuple[str, ...]:
    """The fields of several CSV files: case-insensitive, first spelling wins (as DuckDB's
    ``union_by_name``)."""
    union: list[str] = []
    for header in headers:
        union.extend(h for h in header if h.lower() not in {u.lower() for u in union})
    return tuple(union)


def _position(header: Sequence[str], name: str) -> int | None:
    """1-based position of ``name`` in a file's header, matched case-insensitively."""
    folded = [h.lower() for h in header]
    return folded.index(name.lower()) + 1 if name.lower() in folded else None


def _csv_sql(
    spec: FileSource,
    layout: RawLayout,
    *,
    lines: str | None = None,
    fast: bool = False,
    filtered: bool = False,
) -> str:
    """The CSV raw reader over ``lines`` (default: every line, numbered); ``fast`` and
    ``filtered`` as for ``_ndjson_sql`` (fast ``lines`` are unnumbered, each file's header
    line already skipped)."""
    dialect = CsvDialect.of(spec)
    lines = lines or lines_sql(spec, layout)
    headers = layout.headers
    expected = f"{_list_literal([len(h) for h in headers])}[__hr_fidx + 1]"
    columns = []
    for name in layout.fields:
        positions = [_position(h, name) for h in headers]
        if len(set(positions)) == 1 and positions[0] is not None:
            value = f"__hr_f[{positions[0]}]"
        elif all(p is None for p in positions):  # a field of other files in the batch
            value = "NULL::VARCHAR"
        else:
            value = f"__hr_f[{_list_literal(positions)}[__hr_fidx + 1]]"
        # fields of an unreadable record are NULL, never half-parsed
        columns.append(
            f", CASE WHEN __hr_error IS NULL AND {value} <> {sql_string(dialect.null_string)} "
            f"THEN {value} END AS {quote_ident(name)}"
        )
    where = f" WHERE {_CSV_NONBLANK} AND __hr_line > 1" if spec.header else f" WHERE {_CSV_NONBLANK}"
    if fast:  # blank lines flagged (they count as lines); headers were skipped by lines_sql
        where = ""
    elif filtered:
        where = " WHERE __hr_line > 1" if spec.header else ""
    error = (
        "CASE WHEN __hr_enc IS NOT NULL THEN __hr_enc "
        "WHEN __hr_f IS NULL THEN 'malformed CSV quoting (unterminated or stray quote)' "
        f"WHEN len(__hr_f) <> {expected} THEN 'expected ' || {expected} || "
        "' fields, found ' || len(__hr_f) END"
    )
    split = f"CASE WHEN __hr_enc IS NULL THEN {dialect.split_sql('__hr_text')} END"
    meta = (
        "__hr_fidx, hash(__hr_text) AS __hr_hash"
        if fast
        else f"{_file_column(layout)} AS __hr_file, __hr_line, __hr_text AS __hr_raw"
    )
    blank = f", NOT ({_CSV_NONBLANK}) AS __hr_blank" if fast else ""
    return (
        f"SELECT {meta}, __hr_error{blank}{''.join(columns)}\n"
        f"FROM (SELECT *, {error} AS __hr_error FROM (SELECT *, {split} AS __hr_f FROM ({lines}){where}))"
    )


_NESTED_DUCK_TYPES = ("[]", "STRUCT(", "MAP(", "UNION(")


def parquet_raw_sql(files: Sequence[Path], types: Sequence[tuple[str, str]], *,
                    present: Collection[str] | None = None) -> str:
    """The raw reader of Parquet files whose columns (over the whole batch) are ``types``.

    ``present``: a part of a batch, holding only these columns: each column is read as its
    type over the batch (NULL where absent), so the part's text is what one read of the
    whole batch gives."""
    file_list = _list_literal([str(p) for p in files])
    pairs = []
    for name, duck_type in types:
        nested = any(t in duck_type.upper() for t in _NESTED_DUCK_TYPES) or duck_type.upper().endswith("]")
        value = quote_ident(name)
        if present is not None:
            value = f"CAST({value} AS {duck_type})" if name in present else f"CAST(NULL AS {duck_type})"
        expr = f"to_json({value})::VARCHAR" if nested else f"CAST({value} AS VARCHAR)"
        pairs.append((name, value, expr))
    row = ", ".join(f"{sql_string(n)}: {value}" for n, value, _ in pairs)
    raw = f"to_json({{{row}}})::VARCHAR" if row else "'{}'"
    cols = "".join(f", {expr} AS {quote_ident(name)}" for name, _, expr in pairs)
    return (
        f"SELECT {file_list}[file_index::BIGINT + 1] AS __hr_file, file_row_number + 1 AS __hr_line, "
        f"{raw} AS __hr_raw, NULL::VARCHAR AS __hr_error{cols} "
        f"FROM read_parquet({file_list}, union_by_name=true, file_row_number=true)"
    )


def raw_reader_sql(spec: FileSource, files: Sequence[Path], layout: RawLayout) -> str:
    """The raw reader's query: ``__hr_file VARCHAR, __hr_line BIGINT, __hr_raw VARCHAR,
    __hr_error VARCHAR`` then one VARCHAR column per name in ``layout.fields``.

    Build ``layout`` with ``probe_layout`` (or use ``open_raw_reader``, which does both).
    """
    if spec.format == "parquet":
        return parquet_raw_sql(files, layout.parquet_types)
    if spec.format == "csv":
        return _csv_sql(spec, layout)
    if spec.format == "ndjson":
        return _ndjson_sql(spec, layout)
    raise SourceError(
        f"contracts read csv, ndjson and parquet sources; {spec.format!r} is not supported",
        hint="use format='ndjson' for one JSON object per line",
    )


def json_fields_sql(spec: FileSource, layout: RawLayout) -> str:
    """The distinct top-level keys of the valid JSON objects (one DuckDB pass)."""
    return (
        "SELECT DISTINCT unnest(json_keys(__hr_text)) AS name FROM ("
        f"{lines_sql(spec, layout, numbered=False)}) WHERE __hr_enc IS NULL AND __hr_text IS NOT NULL "
        "AND json_valid(__hr_text) ORDER BY name"
    )


def probe_layout(
    con: duckdb.DuckDBPyConnection,
    spec: FileSource,
    files: Sequence[Path],
    *,
    workdir: Path,
    fields: Sequence[str] | None = None,
    contract: Contract | None = None,
    count_lines: bool = True,
) -> RawLayout:
    """Probe the files and decide the raw reader's layout.

    ``fields`` fixes the field names (skipping JSON key discovery; for CSV files with headers
    the union of the fields, when these files are part of a larger batch); otherwise NDJSON keys are
    discovered with one DuckDB pass, unless the contract discards extra columns, in which case
    its own columns are all that is read. Headerless CSV fields are named by ``fields``, the
    source's ``columns``, the contract's columns (in order), or ``column0..``.
    Irregular files are split into Parquet copies under ``workdir``. ``count_lines=False``:
    see ``probe_file`` (the layout then only serves unnumbered reads).
    """
    if spec.format not in ("csv", "ndjson", "parquet"):
        raise SourceError(
            f"contracts read csv, ndjson and parquet sources; {spec.format!r} is not supported",
            hint="use format='ndjson' for one JSON object per line",
        )
    if spec.format == "parquet":
        file_list = _list_literal([str(p) for p in files])
        described = con.execute(
            f"DESCRIBE SELECT * FROM read_parquet({file_list}, union_by_name=true)"
        ).fetchall()
        types = tuple((str(r[0]), str(r[1])) for r in described)
        names = tuple(n for n, _ in types)
        return RawLayout(probes=(), fields=names, parquet_types=types)
    probes = probe_files(spec, [Path(p) for p in files], count_lines=count_lines)
    fallback: dict[Path, Path] = {}
    for i, probe in enumerate(probes):
        if not probe.regular and probe.size:
            target = workdir / f"hr_lines_{i}.parquet"
            _write_fallback(spec, probe, target)
            fallback[probe.path] = target
    layout = RawLayout(probes=probes, fields=(), fallback=fallback)
    if spec.format == "csv":
        names = list(fields or [n for n, _ in spec.columns] or (contract.names if contract else []))
        if not spec.header and not names:
            first = next((p.header for p in probes if p.header is not None), None)
            width = len(CsvDialect.of(spec).split(first) or []) if first is not None else 0
            names = [f"column{i}" for i in range(width)]
        headers = csv_headers(spec, probes, names)
        union = list(fields) if fields is not None else csv_union(headers)
        return RawLayout(probes=probes, fields=tuple(union), headers=headers, fallback=fallback)
    if fields is not None:
        found = tuple(fields)
    elif contract is not None and contract.schema == "discard":
        found = contract.names
    else:
        keys = [str(r[0]) for r in con.execute(json_fields_sql(spec, layout)).fetchall()]
        # the contract's own spellings first, so they keep their names when another key
        # differs only in case (and gets the suffix)
        wanted = contract.names if contract is not None else ()
        found = tuple([k for k in wanted if k in keys] + [k for k in keys if k not in wanted])
    return RawLayout(probes=probes, fields=unique_names(found), keys=found, fallback=fallback)


@dataclass
class RawReader:
    """A probed raw reader: ``sql`` to run, ``fields`` it yields after the ``__hr_`` columns.

    Close it (or use it as a context manager) after the last query that reads ``sql``: the
    Parquet copies of irregular files live in its temporary directory.
    """

    sql: str
    fields: tuple[str, ...]
    layout: RawLayout
    spec: FileSource
    files: tuple[Path, ...]
    _tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def columns(self) -> tuple[str, ...]:
        return META_COLUMNS + self.fields

    def sql_for(self, fields: Sequence[str]) -> str:
        """The same reader yielding only ``fields`` (for NDJSON only those keys are parsed
        out; used for the duplicate-key pre-pass)."""
        spec, files = self.spec, self.files
        if spec.format == "parquet":
            return self.sql
        if spec.format == "ndjson":
            by_field = dict(zip(self.layout.fields, self.layout.keys, strict=True))
            wanted = tuple(f for f in self.layout.fields if f in set(fields))
            keys = tuple(by_field[f] for f in wanted)
            return raw_reader_sql(spec, files, replace(self.layout, fields=wanted, keys=keys))
        return self.sql

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> RawReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_raw_reader(
    con: duckdb.DuckDBPyConnection,
    spec: FileSource,
    files: Sequence[Path],
    *,
    fields: Sequence[str] | None = None,
    contract: Contract | None = None,
    workdir: Path | None = None,
    count_lines: bool = True,
) -> RawReader:
    """Probe ``files`` and return the raw reader for them (see ``probe_layout``; without
    ``count_lines`` only ``lines_sql(numbered=False)`` reads work, ``sql`` does not)."""
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="headrace-raw-")
        workdir = Path(tmp.name)
    try:
        layout = probe_layout(
            con, spec, files, workdir=workdir, fields=fields, contract=contract, count_lines=count_lines
        )
    except BaseException:
        if tmp is not None:
            tmp.cleanup()
        raise
    return RawReader(
        sql=raw_reader_sql(spec, files, layout) if count_lines else "",
        fields=layout.fields,
        layout=layout,
        spec=spec,
        files=tuple(Path(p) for p in files),
        _tmp=tmp,
    )


# ---- schema comparison -----------------------------------------------------------------------


@dataclass(frozen=True)
class SchemaMatch:
    """How a contract's columns line up with the observed input fields.

    ``matched`` maps each contract column to the input field that feeds it (exact name, else
    the unique case-insensitive match); ``missing`` are contract columns with no field;
    ``extra`` are input fields no contract column takes (``__hr_`` names are never extra).
    """

    matched: Mapping[str, str]
    missing: tuple[str, ...]
    extra: tuple[str, ...]


def check_contract_against_columns(contract: Contract, observed: Sequence[str]) -> SchemaMatch:
    """Match contract columns to observed field names (for freeze/discard decisions)."""
    observed = [c for c in observed if not c.lower().startswith(RESERVED_PREFIX)]
    matched: dict[str, str] = {}
    for name in contract.names:
        if name in observed:
            matched[name] = name
            continue
        folded = [c for c in observed if c.lower() == name.lower()]
        if len(folded) == 1:
            matched[name] = folded[0]
    missing = tuple(n for n in contract.names if n not in matched)
    taken = set(matched.values())
    extra = tuple(c for c in observed if c not in taken)
    return SchemaMatch(matched=matched, missing=missing, extra=extra)


# ---- typing and rules ------------------------------------------------------------------------

_OFFSET_RE = (
    r"[0-9]:[0-9]{2}(?::[0-9]{2}(?:[.,][0-9]*)?)?\s*"
    r"(?:[zZ]|[+-][0-9]{1,2}(?::?[0-9]{2})?|[A-Za-z][A-Za-z0-9_/+-]*)\s*$"
)
_INT_TYPES = (Int8, Int16, Int32, Int64)


def _json_structure(kind: ColumnType) -> str:
    """The ``json_transform`` structure for a nested type, as JSON text."""
    if isinstance(kind, List):
        return f"[{_json_structure(kind.item_type)}]"
    if isinstance(kind, Struct):
        members = ", ".join(f"{_json_key(k)}: {_json_structure(v)}" for k, v in kind.fields.items())
        return "{" + members + "}"
    return f'"{kind.duckdb_type()}"'


def _json_key(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def cast_sql(kind: ColumnType, text: str) -> str:
    """SQL casting the VARCHAR expression ``text`` to ``kind`` (NULL when it cannot)."""
    typed = f"TRY_CAST({text} AS {kind.duckdb_type()})"
    if isinstance(kind, Timestamp):
        has_offset = f"regexp_matches({text}, {sql_string(_OFFSET_RE)})"
        if kind.tz is None:
            return (
                f"CASE WHEN {has_offset} THEN timezone('UTC', TRY_CAST({text} AS TIMESTAMPTZ)) "
                f"ELSE TRY_CAST({text} AS TIMESTAMP) END"
            )
        return (
            f"CASE WHEN {has_offset} THEN TRY_CAST({text} AS TIMESTAMPTZ) "
            f"ELSE timezone({sql_string(kind.tz)}, TRY_CAST({text} AS TIMESTAMP)) END"
        )
    if isinstance(kind, List | Struct):
        structure = sql_string(_json_structure(kind))
        return f"try(json_transform_strict({text}, {structure}))"
    if isinstance(kind, String):
        return text
    return typed


def lossy_sql(kind: ColumnType, text: str, cast: str) -> str | None:
    """SQL condition, given the non-NULL ``cast`` of ``text``, under which the cast lost
    information, or None when it cannot.

    Why: ``TRY_CAST('1.5' AS BIGINT)`` is 2, ``'1.234'`` to DECIMAL(12,2) is 1.23 and
    ``'2024-01-01 10:00'`` to DATE drops the time; a contract must not round silently.
    """
    if isinstance(kind, _INT_TYPES):
        fractional = f"(contains({text}, '.') OR contains({text}, 'e') OR contains({text}, 'E'))"
        return f"({fractional} AND TRY_CAST({text} AS DOUBLE) <> {cast})"
    if isinstance(kind, Float32 | Float64):
        return f"(isinf({cast}) AND NOT contains(lower({text}), 'inf'))"
    if isinstance(kind, Decimal):
        if kind.precision < 38:
            # the same integer digits with 38 - precision more fractional ones
            wide = f"TRY_CAST({text} AS DECIMAL(38,{kind.scale + 38 - kind.precision}))"
            return f"coalesce({cast} <> {wide}, false)"
        digits = sql_string(r"\.[0-9]{" + str(kind.scale) + r"}[0-9]*[1-9]")
        return f"regexp_matches({text}, {digits})"
    if isinstance(kind, Date):
        return (
            f"(length({text}) > 10 AND "
            f"TRY_CAST({text} AS TIMESTAMP) IS DISTINCT FROM {cast}::TIMESTAMP)"
        )
    return None


def typed_sql(kind: ColumnType, text: str) -> str:
    """SQL: ``text`` as ``kind``, NULL when it does not cast or the cast would lose
    information (a self-contained expression; the validation query splits it in two steps
    so each cast runs once)."""
    cast = cast_sql(kind, text)
    lossy = lossy_sql(kind, text, cast)
    return cast if lossy is None else f"CASE WHEN {lossy} THEN NULL ELSE {cast} END"


def _python_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat(sep=" ") if isinstance(value, dt.datetime) else value.isoformat()
    if isinstance(value, decimal.Decimal | int | float):
        return str(value)
    return str(value)


def literal_sql(kind: ColumnType, value: Any) -> str:
    """A contract value (bound or accepted value) as SQL typed like the column's values,
    through the same conversion as the data, so ``tz`` rules apply to bounds too."""
    text = sql_string(_python_text(value))
    if isinstance(kind, String):
        return text
    return typed_sql(kind, text)


def _shown(text: str) -> str:
    """SQL: a value quoted for a message, cut to a readable length."""
    cut = f"left({text}, {_MESSAGE_VALUE_CHARS})"
    more = f"CASE WHEN length({text}) > {_MESSAGE_VALUE_CHARS} THEN '...' ELSE '' END"
    return f"('''' || {cut} || {more} || '''')"


@dataclass(frozen=True)
class _Check:
    """One rule on one row: a boolean condition and the violation it reports."""

    column: str | None
    rule: str
    condition: str
    message: str  # SQL expression


def _column_checks(name: str, kind: ColumnType, i: int, *, present: bool) -> list[_Check]:
    """The checks of one contract column over ``__hr_v{i}`` (text) and ``__hr_t{i}`` (typed,
    NULL when the text does not cast losslessly)."""
    v, t = f"__hr_v{i}", f"__hr_t{i}"
    checks: list[_Check] = []
    duck = kind.duckdb_type()
    if present:
        checks.append(
            _Check(name, "type", f"({v} IS NOT NULL AND {t} IS NULL)", f"{_shown(v)} || ' is not a valid {duck}'")
        )
    if kind.key:
        checks.append(
            _Check(name, "key", f"({v} IS NULL)", sql_string(f"key column {name} is null"))
        )
    elif not kind.nullable:
        checks.append(_Check(name, "not_null", f"({v} IS NULL)", sql_string(f"{name} is null")))
    ok = f"{t} IS NOT NULL"
    if kind.accepted is not None:
        values = ", ".join(literal_sql(kind, a) for a in kind.accepted)
        listed = ", ".join(_python_text(a) for a in kind.accepted)
        checks.append(
            _Check(
                name,
                "accepted",
                f"({ok} AND {t} NOT IN ({values}))",
                f"{_shown(v)} || {sql_string(' is not one of: ' + listed)}",
            )
        )
    if kind.min is not None:
        checks.append(
            _Check(
                name,
                "min",
                f"({ok} AND {t} < {literal_sql(kind, kind.min)})",
                f"{_shown(v)} || {sql_string(' is below the minimum ' + _python_text(kind.min))}",
            )
        )
    if kind.max is not None:
        checks.append(
            _Check(
                name,
                "max",
                f"({ok} AND {t} > {literal_sql(kind, kind.max)})",
                f"{_shown(v)} || {sql_string(' is above the maximum ' + _python_text(kind.max))}",
            )
        )
    if kind.regex is not None:
        checks.append(
            _Check(
                name,
                "regex",
                f"({ok} AND NOT regexp_full_match({t}, {sql_string(kind.regex)}))",
                f"{_shown(v)} || {sql_string(' does not match ' + kind.regex)}",
            )
        )
    if kind.max_length is not None:
        checks.append(
            _Check(
                name,
                "max_length",
                f"({ok} AND length({t}) > {kind.max_length})",
                f"{_shown(v)} || ' is ' || length({t}) || "
                f"{sql_string(f' characters long, more than {kind.max_length}')}",
            )
        )
    return checks


@dataclass(frozen=True)
class ValidationPlan:
    """The validation query and the small queries the caller runs over its result.

    ``sql`` selects the contract's columns (typed, in contract order), then the extra input
    columns (VARCHAR, ``evolve`` only), then ``__hr_file, __hr_line, __hr_raw,
    __hr_violations``. A row is good when ``__hr_violations`` is empty; ``__hr_raw`` is kept
    only on rows with violations. ``columns`` are the data columns (what a good row holds).

    With ``duplicates`` set (see ``plan_validation``) the caller must first store
    ``duplicates_sql()`` under that name.
    """

    sql: str
    columns: tuple[str, ...]
    schema: SchemaMatch
    contract: Contract
    raw: str
    duplicates: str | None = None

    @property
    def key_fields(self) -> tuple[str, ...]:
        """The input fields feeding the key columns (what the duplicate pre-pass reads)."""
        return tuple(self.schema.matched[n] for n in self.contract.keys if n in self.schema.matched)

    def duplicates_sql(self, raw_keys: str | None = None, *, min_count: int = 2) -> str:
        """The duplicate-key pre-pass to store as ``self.duplicates`` before running ``sql``.

        ``raw_keys`` is a raw relation holding at least ``key_fields`` (default: the plan's
        own ``raw``); a reader restricted to the key fields parses less (``RawReader.sql_for``).
        ``min_count=1`` counts every key: one part's counts, to be summed with the others'.
        """
        keys = [i for i, kind in enumerate(self.contract.columns.values()) if kind.key]
        if not keys:
            raise ValueError("the contract has no key columns")
        key_contract = Contract(
            {n: k for n, k in self.contract.columns.items() if k.key}, schema="discard"
        )
        key_typed = _typed_levels(key_contract, raw_keys or self.raw, self.schema, ())
        key_cols = ", ".join(f"__hr_t{j} AS __hr_k{i}" for j, i in enumerate(keys))
        # no filter on the key: DuckDB pushes it below the projections, where it evaluates
        # the JSON extraction a second time (measured +0.9 s on 2M rows). NULL keys (and
        # unreadable records, whose fields are NULL) form a group the join never matches.
        return (
            f"SELECT {key_cols}, count(*) AS __hr_dups FROM ({key_typed}) "
            f"GROUP BY ALL HAVING count(*) >= {int(min_count)}"
        )

    def good_sql(self, validated: str) -> str:
        """Typed good rows, without the ``__hr_`` columns."""
        cols = ", ".join(quote_ident(c) for c in self.columns)
        return f"SELECT {cols} FROM {validated} WHERE len(__hr_violations) = 0"

    def quarantine_sql(self, validated: str) -> str:
        """Bad rows as ``__hr_file, __hr_line, __hr_raw, __hr_violations``."""
        return (
            f"SELECT {', '.join(QUARANTINE_COLUMNS)} FROM {validated} "
            "WHERE len(__hr_violations) > 0"
        )

    def counts_sql(self, validated: str) -> str:
        return split_counts_sql(validated)


def split_counts_sql(validated: str) -> str:
    """One row: ``(rows, quarantined)``, the rows and the rows with violations."""
    return (
        "SELECT count(*) AS rows, count(*) FILTER (WHERE len(__hr_violations) > 0) AS quarantined "
        f"FROM {validated}"
    )


def _typed_levels(
    contract: Contract,
    raw: str,
    match: SchemaMatch,
    extras: Sequence[str],
    meta: str = "__hr_file, __hr_line, __hr_raw, __hr_error",
) -> str:
    """SELECT over ``raw``: meta columns, ``__hr_v{i}`` (text) and ``__hr_t{i}`` (typed,
    NULL unless the text casts losslessly), then the extra columns. Two levels so each cast
    runs once: the loss checks read the cast's column instead of casting again."""
    first: list[str] = []
    second: list[str] = []
    for i, (name, kind) in enumerate(contract.columns.items()):
        source = match.matched.get(name)
        text = quote_ident(source) if source is not None else "NULL::VARCHAR"
        first.append(f"{text} AS __hr_v{i}, {cast_sql(kind, text)} AS __hr_x{i}")
        lossy = lossy_sql(kind, f"__hr_v{i}", f"__hr_x{i}")
        typed = f"__hr_x{i}" if lossy is None else f"CASE WHEN {lossy} THEN NULL ELSE __hr_x{i} END"
        second.append(f"__hr_v{i}, {typed} AS __hr_t{i}")
    extra = "".join(f", {quote_ident(x)}" for x in extras)
    return (
        f"SELECT {meta}, {', '.join(second)}{extra} FROM ("
        f"SELECT {meta}, {', '.join(first)}{extra} FROM {raw})"
    )


def _row_checks(contract: Contract, match: SchemaMatch) -> list[_Check]:
    """The checks of each contract column (and ``missing_column`` under freeze), in order."""
    checks: list[_Check] = []
    for i, (name, kind) in enumerate(contract.columns.items()):
        source = match.matched.get(name)
        if source is None and contract.schema == "freeze":
            message = sql_string(f"column {name} is missing from the input")
            checks.append(_Check(name, "missing_column", "true", message))
            continue
        checks.extend(_column_checks(name, kind, i, present=source is not None))
    return checks


def _schema_checks(contract: Contract, match: SchemaMatch) -> list[_Check]:
    """``extra_column`` violations under freeze (they come after the key check)."""
    if contract.schema != "freeze":
        return []
    return [
        _Check(x, "extra_column", "true", sql_string(f"column {x} is not in the contract"))
        for x in match.extra
    ]


def plan_validation(
    contract: Contract,
    raw: str,
    raw_columns: Sequence[str],
    *,
    duplicates: str | None = None,
) -> ValidationPlan:
    """Build the validation query over the relation ``raw`` (a name, or a parenthesised
    query: it is inserted after FROM) whose fields are ``raw_columns``.

    Duplicate keys: by default a window ``count(*) OVER (PARTITION BY key)`` in the query,
    which holds every row (raw text included) in memory while it runs. With
    ``duplicates="hr_dups"`` the query instead LEFT JOINs a table of the duplicated keys that
    the caller builds first: ``CREATE TEMP TABLE hr_dups AS {plan.duplicates_sql(keys)}``,
    a second read of the input (``keys`` a raw reader restricted to ``plan.key_fields``, see
    ``RawReader.sql_for``, so only the key is parsed) that holds only the duplicated keys in
    memory. Measured on 2M NDJSON rows: window +1.1 s, pre-pass +1.0 s.
    """
    match = check_contract_against_columns(contract, raw_columns)
    extras = match.extra if contract.schema == "evolve" else ()
    checks = _row_checks(contract, match)
    keys = [i for i, kind in enumerate(contract.columns.values()) if kind.key]
    key_names = ", ".join(n for n, k in contract.columns.items() if k.key)
    if keys:
        all_set = " AND ".join(f"__hr_t{i} IS NOT NULL" for i in keys)
        checks.append(
            _Check(
                key_names,
                "key",
                f"({all_set} AND __hr_dups > 1)",
                f"'duplicate key: ' || __hr_dups || {sql_string(f' rows share this {key_names}')}",
            )
        )
    checks.extend(_schema_checks(contract, match))
    inner = _typed_levels(contract, raw, match, extras)
    if keys and duplicates is None:
        partition = ", ".join(f"__hr_t{i}" for i in keys)
        inner = f"SELECT *, count(*) OVER (PARTITION BY {partition}) AS __hr_dups FROM ({inner})"
    elif keys:
        on = " AND ".join(f"__hr_t{i} = __hr_d.__hr_k{i}" for i in keys)
        inner = (
            f"SELECT __hr_i.*, __hr_d.__hr_dups FROM ({inner}) AS __hr_i "
            f"LEFT JOIN {duplicates} AS __hr_d ON {on}"
        )
    flags = ", ".join(f"coalesce({c.condition}, false) AS __hr_c{j}" for j, c in enumerate(checks))
    flagged = f"SELECT *{', ' + flags if flags else ''} FROM ({inner})"
    any_bad = " OR ".join(f"__hr_c{j}" for j in range(len(checks))) or "false"
    items = ", ".join(
        f"CASE WHEN __hr_c{j} THEN {{'column': {sql_string(c.column) if c.column else 'NULL'}, "
        f"'rule': {sql_string(c.rule)}, 'message': {c.message}}}::{VIOLATION_TYPE} END"
        for j, c in enumerate(checks)
    )
    parse = f"[{{'column': NULL, 'rule': 'parse', 'message': __hr_error}}::{VIOLATION_TYPE}]"
    listed = (
        f"list_filter([{items}], lambda x: x IS NOT NULL)" if checks else f"[]::{VIOLATIONS_TYPE}"
    )
    violations = (
        f"CASE WHEN __hr_error IS NOT NULL THEN {parse} "
        f"WHEN {any_bad} THEN {listed} ELSE []::{VIOLATIONS_TYPE} END"
    )
    outputs = [
        f"CAST(__hr_t{i} AS {kind.duckdb_type()}) AS {quote_ident(name)}"
        for i, (name, kind) in enumerate(contract.columns.items())
    ]
    outputs.extend(quote_ident(x) for x in extras)
    bad = f"(__hr_error IS NOT NULL OR {any_bad})"
    sql = (
        f"SELECT {', '.join(outputs)}, __hr_file, __hr_line, "
        f"CASE WHEN {bad} THEN __hr_raw END AS __hr_raw, "
        f"{violations} AS __hr_violations\nFROM ({flagged})"
    )
    return ValidationPlan(
        sql=sql,
        columns=(*contract.names, *extras),
        schema=match,
        contract=contract,
        raw=raw,
        duplicates=duplicates if keys else None,
    )


def result_raw_sql(relation: str, columns: Sequence[str], types: Sequence[str], *, origin: str, line: str) -> str:
    """A transform's result as the raw relation ``plan_validation`` reads, so a derived table's
    contract applies the very rules a source's does: every value as text (nested ones as
    JSON), the row as JSON for the quarantine, ``origin`` (the table) as its file and the SQL
    ``line`` as its line. ``types`` are the columns' DuckDB type names."""
    texts = []
    for name, kind in zip(columns, types, strict=True):
        nested = any(mark in kind for mark in ("[]", "STRUCT(", "MAP("))
        expr = f"to_json({quote_ident(name)})" if nested else quote_ident(name)
        texts.append(f"CAST({expr} AS VARCHAR) AS {quote_ident(name)}")
    row = ", ".join(f"{sql_string(name)}: {quote_ident(name)}" for name in columns)
    return (
        f"SELECT {sql_string(origin)} AS __hr_file, CAST({line} AS BIGINT) AS __hr_line, "
        f"CAST(to_json({{{row}}}) AS VARCHAR) AS __hr_raw, CAST(NULL AS VARCHAR) AS __hr_error, {', '.join(texts)} "
        f"FROM {relation}"
    )


def validation_sql(contract: Contract, raw: str, raw_columns: Sequence[str]) -> str:
    """The validation query alone, duplicate keys found by a window (see ``plan_validation``)."""
    return plan_validation(contract, raw, raw_columns).sql


# ---- the whole sequence ----------------------------------------------------------------------


@dataclass(frozen=True)
class ValidatedBatch:
    """A validated input stored in the temp table ``table``, with its counts.

    ``good_sql()`` and ``quarantine_sql()`` read that table; drop it with ``drop(con)``.
    """

    table: str
    plan: ValidationPlan
    rows: int
    quarantined: int
    fields: tuple[str, ...]

    def good_sql(self) -> str:
        return self.plan.good_sql(quote_ident(self.table))

    def quarantine_sql(self) -> str:
        return self.plan.quarantine_sql(quote_ident(self.table))

    def drop(self, con: duckdb.DuckDBPyConnection) -> None:
        con.execute(f"DROP TABLE IF EXISTS {quote_ident(self.table)}")
        con.execute(f"DROP TABLE IF EXISTS {quote_ident(self.table + '_dups')}")


def validate_files(
    con: duckdb.DuckDBPyConnection,
    spec: FileSource,
    files: Sequence[Path],
    contract: Contract,
    *,
    table: str,
    duplicates: Literal["window", "prepass"] = "window",
    workdir: Path | None = None,
) -> ValidatedBatch:
    """Probe, read, validate and store ``files`` in the temp table ``table``: the
    recommended sequence, in one function. ``duplicates="prepass"`` finds duplicate keys by
    a second, key-only read instead of a window over all rows (less memory, same time)."""
    with open_raw_reader(con, spec, files, contract=contract, workdir=workdir) as raw:
        dups = f"{table}_dups" if duplicates == "prepass" and contract.keys else None
        plan = plan_validation(
            contract, f"({raw.sql})", raw.fields, duplicates=quote_ident(dups) if dups else None
        )
        if dups:
            keys_sql = f"({raw.sql_for(plan.key_fields)})"
            con.execute(
                f"CREATE OR REPLACE TEMP TABLE {quote_ident(dups)} AS {plan.duplicates_sql(keys_sql)}"
            )
        con.execute(f"CREATE OR REPLACE TEMP TABLE {quote_ident(table)} AS {plan.sql}")
    rows, quarantined = con.execute(plan.counts_sql(quote_ident(table))).fetchall()[0]
    return ValidatedBatch(
        table=table, plan=plan, rows=int(rows), quarantined=int(quarantined), fields=raw.fields
    )


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
    stored_rejects = copy_parquet(con, plan.quarantine_sql(f"({plan.sql})"), directory / "rejects")
    con.execute(f"RESET VARIABLE {quote_ident(f'{name}_rejects')}")
    found = con.execute(f"SELECT count(*), sum(hash(__hr_raw)::HUGEINT) FROM {stored_rejects}").fetchall()[0]
    if found != (quarantined, check):
        return None
    return f"SELECT * FROM {stored_rejects}", int(quarantined)


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


# ---- the outcome -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ContractOutcome:
    """Counts after validation and what the contract says to do with the bad rows."""

    rows: int
    quarantined: int
    action: str  # "quarantine" | "drop" | "none"

    @property
    def good(self) -> int:
        return self.rows - self.quarantined

    @property
    def ratio(self) -> float:
        return self.quarantined / self.rows if self.rows else 0.0


def check_outcome(contract: Contract, rows: int, quarantined: int, *, source: str) -> ContractOutcome:
    """Apply ``on_violation`` and ``max_quarantine_ratio``: raise DataQualityError to stop
    the run, else say whether bad rows go to quarantine or are dropped."""
    outcome = ContractOutcome(rows=rows, quarantined=quarantined, action="none")
    if not quarantined:
        return outcome
    if contract.on_violation == "fail":
        raise DataQualityError(
            f"source {source!r}: {quarantined} of {rows} records break the contract",
            hint="see the violations with on_violation='quarantine', or fix the input",
        )
    limit = contract.max_quarantine_ratio
    if limit is not None and outcome.ratio > limit:
        raise DataQualityError(
            f"source {source!r}: {quarantined} of {rows} records ({outcome.ratio:.1%}) break the "
            f"contract, above max_quarantine_ratio {limit:.1%}",
            hint="inspect the quarantined records; raise the ratio only if this is expected",
        )
    return ContractOutcome(rows=rows, quarantined=quarantined, action=contract.on_violation)
