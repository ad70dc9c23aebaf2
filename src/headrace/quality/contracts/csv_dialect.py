"""CSV sources: their dialect, and the field names of each file's header line.

``CsvDialect`` splits a line into fields in SQL (what the raw reader runs) and, for header
lines only, in Python; ``csv_headers`` and ``csv_union`` name the fields of each file and of
a batch of files.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from headrace.errors import SourceError
from headrace.sources.files import sql_string
from headrace.spec.contracts import RESERVED_PREFIX
from headrace.spec.sources import FileSource


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
