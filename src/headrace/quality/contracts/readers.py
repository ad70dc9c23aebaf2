"""The raw reader: every record of the input as one row of text, none lost.

The raw reader (``open_raw_reader`` / ``raw_reader_sql``) reads CSV and NDJSON files line by
line so no record is ever lost: each non-blank line becomes one row with ``__hr_file,
__hr_line, __hr_raw, __hr_error`` and one VARCHAR column per field. A record that cannot be
parsed (malformed JSON, wrong field count, invalid UTF-8, ...) is a row with ``__hr_error``
set instead of an exception or a silently skipped line. Parquet rows always parse; their
``__hr_raw`` is the row as JSON.

Why line by line through ``read_csv``: DuckDB's ``read_json``/``read_csv`` either stop at the
first bad record or skip it (``ignore_errors``), and neither reports line numbers nor raw text
of good rows. A one-column ``read_csv`` (a delimiter that cannot occur, no quoting) is DuckDB's
fastest line splitter; JSON is then parsed with ``json_valid``/``json_extract_string`` and CSV
fields with ``string_split`` (or a regular expression for quoted lines).
"""

from __future__ import annotations

import tempfile
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import duckdb

from headrace.errors import SourceError
from headrace.quality.contracts.csv_dialect import CsvDialect
from headrace.quality.contracts.layout import RawLayout, _list_literal, lines_sql, probe_layout
from headrace.sources.files import quote_ident, sql_string
from headrace.spec.contracts import Contract
from headrace.spec.sources import FileSource

META_COLUMNS: tuple[str, ...] = ("__hr_file", "__hr_line", "__hr_raw", "__hr_error")
"""The raw reader's leading columns, in order."""


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
