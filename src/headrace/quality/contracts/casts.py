"""Typing a record's text: each field as its contract column's type, in SQL.

``typed_sql`` is NULL when the text does not cast or the cast would lose information
(``lossy_sql``); ``literal_sql`` gives a contract's own values (bounds, accepted values)
the same conversion, so they compare like the data.
"""

from __future__ import annotations

import datetime as dt
import decimal
from typing import Any

from headrace.sources.files import sql_string
from headrace.spec.contracts import (
    ColumnType,
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
