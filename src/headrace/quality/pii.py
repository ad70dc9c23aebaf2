"""Personal data: the contract columns marked ``mask=`` are protected before a table sees them.

Where: right after validation, on the rows the transform reads (a source's good rows, or a
derived table's checked result), so the transform, the checks and every later layer only see
protected values, whatever the transform renames; the raw values live only in the run's work
folder, which is deleted after the attempt. A quarantined record keeps its raw text for
debugging, with each marked field's value (as written) replaced by ``***``
(:func:`redact_raw_sql`, part of the validation SQL, so every engine and path does the same).

How: ``hash`` is SHA-256 (hex) of the key, a separator and the value: the same value gives the
same hash, so joins and distinct counts still work, and without the key a hash cannot be
matched against guessed values. The key is the environment variable ``HEADRACE_PII_KEY``
(a secret; never in the project files); a table's fingerprint includes a digest of it, so
changing the key recomputes the tables that hash. ``mask`` stars all but the last four
characters (shorter values entirely); ``redact`` stores NULL. Both engines get the same
values: the expressions are spelled per engine (:func:`protect_sql`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from typing import Literal

from headrace.errors import ConfigError
from headrace.spec.contracts import Contract

KEY_ENV = "HEADRACE_PII_KEY"
_MIN_KEY = 16
Dialect = Literal["duckdb", "spark"]


def masked_columns(contract: Contract | None) -> dict[str, str]:
    """Column -> mask (``hash``/``mask``/``redact``) of the contract's protected columns."""
    if contract is None:
        return {}
    return {name: kind.mask for name, kind in contract.columns.items() if kind.mask}


def pii_key(masks: Mapping[str, str], *, table: str) -> str | None:
    """The hashing key when a column is hashed (None otherwise); a clear error without one."""
    if "hash" not in masks.values():
        return None
    key = os.environ.get(KEY_ENV, "")
    hashed = ", ".join(sorted(c for c, m in masks.items() if m == "hash"))
    if len(key) < _MIN_KEY:
        raise ConfigError(
            f"table {table!r} hashes personal data ({hashed}) but {KEY_ENV} is "
            + ("not set" if not key else f"shorter than {_MIN_KEY} characters"),
            hint=f"export {KEY_ENV} with a secret of {_MIN_KEY}+ characters (the same on every machine "
                 "that writes these tables: another key gives other hashes)",
        )
    return key


def key_digest(key: str | None) -> str:
    """What a fingerprint records of the key: enough to notice a change, nothing to recover it."""
    return hashlib.sha256(f"headrace-pii-key:{key}".encode()).hexdigest()[:16] if key else "-"


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def protect_sql(mask: str, column: str, *, dialect: Dialect, key: str | None) -> str:
    """The expression replacing the (string) column ``column`` (quoted SQL) on ``dialect``."""
    if mask == "redact":
        return "CAST(NULL AS VARCHAR)" if dialect == "duckdb" else "CAST(NULL AS STRING)"
    if mask == "hash":
        assert key is not None, "pii_key() gives the key of a hashed column"
        salted = f"concat({_literal(key + ':')}, {column})"
        digest = f"sha256({salted})" if dialect == "duckdb" else f"sha2({salted}, 256)"
        return f"CASE WHEN {column} IS NULL THEN NULL ELSE {digest} END"
    if mask == "mask":
        stars = f"repeat('*', length({column}) - 4)"
        kept = f"concat({stars}, right({column}, 4))"
        return (f"CASE WHEN {column} IS NULL THEN NULL WHEN length({column}) <= 4 "
                f"THEN repeat('*', length({column})) ELSE {kept} END")
    raise ValueError(f"unknown mask {mask!r}")


def redact_raw_sql(raw: str, texts: Iterable[str]) -> str:
    """``raw`` (a record's raw text, SQL) with each protected field's text replaced by ``***``;
    ``texts`` are the SQL of those fields' texts as read (DuckDB, in validation)."""
    for text in texts:  # DuckDB's replace leaves the text as it is for an empty search
        raw = f"replace({raw}, coalesce({text}, ''), '***')"
    return raw
