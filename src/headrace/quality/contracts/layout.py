"""The raw layout of a batch of files, and the physical lines it reads.

``probe_layout`` probes the files (``probing``) and decides everything the raw reader's SQL
depends on (``RawLayout``): the field names, the JSON keys or each CSV file's header, and the
Parquet copies of irregular files. ``lines_sql`` yields every physical line of the files,
split by a one-column ``read_csv`` (see ``readers`` for why).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from headrace.errors import SourceError
from headrace.quality.contracts.csv_dialect import CsvDialect, csv_headers, csv_union, unique_names
from headrace.quality.contracts.probing import _SENTINEL, FileProbe, _write_fallback, probe_files
from headrace.sources.files import sql_string
from headrace.spec.contracts import Contract
from headrace.spec.sources import FileSource

_MAX_LINE_SIZE = 256 * 1024 * 1024


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
        return RawLayout(probes=(), fields=tuple(n for n, _ in types), parquet_types=types)
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
