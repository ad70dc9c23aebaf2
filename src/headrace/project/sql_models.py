"""SQL models: ``models/**/*.sql`` files turned into ``TableSpec`` objects.

A model is one DuckDB ``SELECT`` with an optional TOML header in a leading block comment
that starts with ``/* headrace``. Upstream tables and sources are named with ``ref('x')`` and
``source('x')`` in table positions. They are found by parsing the SQL with sqlglot (never by
pattern-matching the text, which breaks on strings and comments) and replaced by plain
placeholder identifiers; the engine binds each input relation under its placeholder.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import sqlglot
from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import Token

from headrace.errors import DefinitionError
from headrace.spec._names import did_you_mean
from headrace.spec.builders import check_table_name
from headrace.spec.sources import SourceSpec
from headrace.spec.tables import SqlTransform, TableInput, TableRef, TableSpec
from headrace.spec.write_modes import write_mode_from_config

DIALECT = "duckdb"
HEADER_KEYS: tuple[str, ...] = (
    "name",
    "write",
    "partition_by",
    "keys",
    "delete_when",
    "key",
    "track",
    "updated_at",
    "deletes",
    "retries",
    "description",
    "tags",
    "checks",
    "contract",
    "schema",
)
_HEADER_START = re.compile(r"\A(\s*)/\*\s*headrace\b")
_TOML_AT = re.compile(r"at line (\d+), column (\d+)")
_TOKEN_REPR = re.compile(r"<Token token_type: [^,]+, text: (.*?), line: \d+.*?>")
_CALLS = ("ref", "source")
_TYPE_NAMES: dict[type, str] = {str: "a string", int: "an integer"}


@dataclass(frozen=True)
class _Header:
    """The parsed header: its TOML values, the raw TOML lines and where they sit in the file."""

    values: dict[str, Any]
    lines: tuple[str, ...]
    first_line: int


# -- header -------------------------------------------------------------------------------


def _split_header(text: str, path: Path) -> tuple[_Header, str]:
    """Separate the header from the SQL body.

    The header is replaced by spaces (newlines kept) rather than removed, so every line and
    column sqlglot reports for the body is already relative to the ``.sql`` file.
    """
    match = _HEADER_START.match(text)
    if match is None:
        return _Header({}, (), 1), text
    end = text.find("*/", match.end())
    start_line = text.count("\n", 0, match.end()) + 1
    if end < 0:
        raise DefinitionError(
            f"{path}:{start_line}: the '/* headrace' header is never closed",
            hint="end the header with */ before the SQL starts",
            path=str(path),
            line=start_line,
        )
    toml_text = text[match.end() : end]
    values = _parse_toml(toml_text, path=path, first_line=start_line)
    body = re.sub(r"[^\n]", " ", text[: end + 2]) + text[end + 2 :]
    return _Header(values, tuple(toml_text.split("\n")), start_line), body


def _parse_toml(toml_text: str, *, path: Path, first_line: int) -> dict[str, Any]:
    """Parse the header TOML, mapping decode errors to file-relative lines."""
    try:
        return tomllib.loads(toml_text)
    except tomllib.TOMLDecodeError as exc:
        found = _TOML_AT.search(str(exc))
        line = first_line + int(found.group(1)) - 1 if found else first_line
        reason = _TOML_AT.sub("", str(exc)).replace("()", "").strip()
        raise DefinitionError(
            f"{path}:{line}: invalid TOML in the model header: {reason}",
            hint='header lines look like: write = "merge" or keys = ["id"]',
            path=str(path),
            line=line,
        ) from None


def _key_line(header: _Header, key: str) -> int:
    """Find the file line of a top-level header key, for error messages.

    This scans TOML lines, not SQL, so a line pattern is enough; the header's first line is
    the fallback when the key is written in an unusual way.
    """
    pattern = re.compile(rf"^\s*(\[\s*)?[\"']?{re.escape(key)}[\"']?\s*[=\].]")
    for offset, line in enumerate(header.lines):
        if pattern.match(line):
            return header.first_line + offset
    return header.first_line


def _header_error(
    path: Path, header: _Header, key: str, message: str, hint: str
) -> DefinitionError:
    line = _key_line(header, key)
    return DefinitionError(f"{path}:{line}: {message}", hint=hint, path=str(path), line=line)


def _check_keys(header: _Header, path: Path) -> None:
    for key in header.values:
        if key not in HEADER_KEYS:
            raise _header_error(
                path,
                header,
                key,
                f"unknown key {key!r} in the model header.{did_you_mean(key, HEADER_KEYS)}",
                f"valid keys: {', '.join(HEADER_KEYS)}",
            )


def _string_list(header: _Header, path: Path, key: str) -> tuple[str, ...]:
    """Read a key that accepts one string or a list of strings."""
    value = header.values.get(key, [])
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise _header_error(
        path,
        header,
        key,
        f"{key} must be a string or a list of strings, got {value!r}",
        f'e.g. {key} = ["a", "b"]',
    )


def _optional(header: _Header, path: Path, key: str, kind: type) -> Any:
    value = header.values.get(key)
    if value is None or (isinstance(value, kind) and not isinstance(value, bool)):
        return value
    raise _header_error(
        path,
        header,
        key,
        f"{key} must be {_TYPE_NAMES[kind]}, got {value!r}",
        f"check the type of {key} in the header",
    )


# -- naming -------------------------------------------------------------------------------


def name_from_path(path: Path, models_dir: Path) -> str:
    """Derive the table name from the model's place under ``models/``.

    ``silver/orders.sql`` -> ``silver.orders``; ``x.sql`` -> ``main.x``; deeper paths keep
    the first folder as the schema and join the rest with ``_`` (``a/b/c.sql`` -> ``a.b_c``)
    so the name stays two-part and unambiguous.
    """
    try:
        parts = path.relative_to(models_dir).with_suffix("").parts
    except ValueError:
        parts = (path.stem,)
    if len(parts) == 1:
        return f"main.{parts[0]}"
    return f"{parts[0]}.{'_'.join(parts[1:])}"


def placeholder_for(kind: str, name: str) -> str:
    """The identifier a ``ref``/``source`` call becomes; stable so one name gives one input."""
    prefix = "ref" if kind == "ref" else "src"
    safe = re.sub(r"[^A-Za-z0-9_]", "_", name.replace(".", "__"))
    return f"{prefix}__{safe}"


# -- SQL ----------------------------------------------------------------------------------


def _clean_description(text: str) -> str:
    """sqlglot embeds token reprs in messages; show just the token text instead."""
    return _TOKEN_REPR.sub(lambda m: repr(m.group(1)), text)


def _tokenize(body: str, path: Path) -> list[Token]:
    tokenizer = Dialect.get_or_raise(DIALECT).tokenizer()
    try:
        return list(tokenizer.tokenize(body))
    except TokenError:
        done = getattr(tokenizer, "tokens", None) or []
        pos = done[-1].end + 1 if done else 0
        rest = body[pos:]
        pos += len(rest) - len(rest.lstrip())
        line = body.count("\n", 0, pos) + 1
        raise DefinitionError(
            f"{path}:{line}: cannot read the SQL: unterminated string, quoted name or comment",
            hint="close every ' and \" and /* on or after this line",
            path=str(path),
            line=line,
        ) from None


def _parse(body: str, path: Path) -> exp.Query:
    """Parse exactly one query statement, with file-relative error positions."""
    try:
        statements = sqlglot.parse(body, dialect=DIALECT)
    except ParseError as exc:
        first = exc.errors[0] if exc.errors else {}
        line, col = first.get("line"), first.get("col")
        description = _clean_description(first.get("description") or str(exc).split("\n")[0])
        near = (first.get("start_context", "") + first.get("highlight", "")).strip()
        where = f"{path}:{line}:{col}" if line else str(path)
        tail = f" (near: {near.splitlines()[-1][-60:]!r})" if near else ""
        raise DefinitionError(
            f"{where}: cannot parse SQL: {description}{tail}",
            hint="models are DuckDB SQL; check the syntax at this position",
            path=str(path),
            line=line,
        ) from None
    real = [s for s in statements if s is not None and not isinstance(s, exp.Semicolon)]
    if not real:
        raise DefinitionError(
            f"{path}: the model has no SQL statement",
            hint="write one SELECT query after the header",
            path=str(path),
        )
    if len(real) > 1:
        raise DefinitionError(
            f"{path}: a model must hold exactly one statement, found {len(real)}",
            hint="split the statements into separate model files",
            path=str(path),
        )
    if not isinstance(real[0], exp.Query):
        kind = real[0].key.upper()
        raise DefinitionError(
            f"{path}: a model must be a SELECT query, found a {kind} statement",
            hint="a model returns rows; headrace writes them according to the header's write mode",
            path=str(path),
        )
    return real[0]


@dataclass
class _Binder:
    """Replaces ``ref``/``source`` calls with placeholders and records the inputs they need."""

    path: Path
    sources: Mapping[str, SourceSpec]
    inputs: dict[str, TableInput]

    def bind(self, tree: exp.Expr) -> exp.Expr:
        calls = [node for node in tree.find_all(exp.Anonymous) if node.name.lower() in _CALLS]
        for call in calls:
            self._replace(call)
        return tree

    def _replace(self, call: exp.Anonymous) -> None:
        kind = call.name.lower()
        line = call.meta.get("line")
        table = call.parent
        if not isinstance(table, exp.Table) or table.this is not call:
            self._fail(
                line,
                f"{kind}() names a table, so it can only stand where a table does",
                f"write: select ... from {kind}('name')",
            )
        name = self._argument(call, kind, line)
        if kind == "ref":
            name = check_table_name(name, where=f"{self.path}:{line}: ")
            target: TableInput = TableRef(name)
        else:
            target = self._source(name, line)
        key = placeholder_for(kind, name)
        self.inputs[key] = target
        call.replace(exp.to_identifier(key))

    def _argument(self, call: exp.Anonymous, kind: str, line: int | None) -> str:
        args = call.expressions
        if len(args) != 1 or not isinstance(args[0], exp.Literal) or not args[0].is_string:
            self._fail(
                line,
                f"{kind}() takes one quoted name, got {kind}({', '.join(a.sql(DIALECT) for a in args)})",
                f"write {kind}('layer.table')" if kind == "ref" else "write source('name')",
            )
        return str(args[0].this)

    def _source(self, name: str, line: int | None) -> SourceSpec:
        spec = self.sources.get(name)
        if spec is None:
            known = ", ".join(sorted(self.sources)) or "none declared"
            self._fail(
                line,
                f"unknown source {name!r}.{did_you_mean(name, self.sources)}",
                f"declare it in pipelines/ (e.g. {name} = hr.files(...)); known sources: {known}",
            )
        return spec if spec.name == name else spec.named(name)

    def _fail(self, line: int | None, message: str, hint: str) -> NoReturn:
        where = f"{self.path}:{line}" if line else str(self.path)
        raise DefinitionError(f"{where}: {message}", hint=hint, path=str(self.path), line=line)


# -- entry point --------------------------------------------------------------------------


def _table_name(header: _Header, path: Path, models_dir: Path) -> str:
    explicit = _optional(header, path, "name", str)
    name = explicit if explicit is not None else name_from_path(path, models_dir)
    line = _key_line(header, "name") if explicit is not None else None
    where = f"{path}:{line}: " if line else f"{path}: "
    return check_table_name(name, where=where)


def _write_mode(header: _Header, path: Path) -> Any:
    mode = _optional(header, path, "write", str) or "overwrite"
    options: dict[str, Any] = {}
    if "keys" in header.values:
        options["keys"] = _string_list(header, path, "keys")
    if "delete_when" in header.values:
        options["delete_when"] = _optional(header, path, "delete_when", str)
    # scd2: key = ["id"], track = "all" | ["a", "b"], updated_at = "ts", deletes = "close" | "ignore"
    if "key" in header.values:
        options["key"] = _string_list(header, path, "key")
    if "track" in header.values:
        track = header.values["track"]
        options["track"] = track if track == "all" else _string_list(header, path, "track")
    for name in ("updated_at", "deletes"):
        if name in header.values:
            options[name] = _optional(header, path, name, str)
    line = _key_line(header, "write") if "write" in header.values else header.first_line
    return write_mode_from_config(mode, options or None, where=f"{path}:{line}: ")


def parse_model(path: Path, *, models_dir: Path, sources: Mapping[str, SourceSpec]) -> TableSpec:
    """Read one ``.sql`` model file into a ``TableSpec``.

    Unknown ``ref`` names are not checked here: tables come from many files, so the DAG
    checks them once everything is loaded.
    """
    text = path.read_text(encoding="utf-8")
    header, body = _split_header(text, path)
    _check_keys(header, path)
    name = _table_name(header, path, models_dir)
    write = _write_mode(header, path)
    retries = _optional(header, path, "retries", int)
    if retries is not None and retries < 0:
        raise _header_error(
            path, header, "retries", f"retries must be >= 0, got {retries}", "e.g. retries = 3"
        )
    checks = _checks(header, path)
    contract = _contract(header, path)
    tokens = _tokenize(body, path)
    tree = _parse(body, path)
    inputs: dict[str, TableInput] = {}
    query = _Binder(path, sources, inputs).bind(tree).sql(dialect=DIALECT)
    first_line = tokens[0].line if tokens else 1
    return TableSpec(
        name=name,
        inputs=inputs,
        transform=SqlTransform(sql=text, query=query, path=str(path)),
        write=write,
        partition_by=_string_list(header, path, "partition_by"),
        retries=retries,
        description=_optional(header, path, "description", str),
        tags=_string_list(header, path, "tags"),
        origin=f"{path}:{first_line}",
        checks=tuple(checks),
        contract=contract,
        schema_policy=_schema_policy(header, path),
    )


def _schema_policy(header: _Header, path: Path) -> str:
    from headrace.spec.builders import check_schema_policy

    value = _optional(header, path, "schema", str) or "evolve"
    line = _key_line(header, "schema") if "schema" in header.values else header.first_line
    return check_schema_policy(value, where=f"{path}:{line}: ")


def _checks(header: _Header, path: Path) -> list[Any]:
    """``checks = [{unique = ["id"]}, {range = "amount", min = 0}]`` in the header."""
    if "checks" not in header.values:
        return []
    items = header.values["checks"]
    line = _key_line(header, "checks")
    if not isinstance(items, list):
        raise _header_error(path, header, "checks", "checks must be a list of tables",
                            'e.g. checks = [{unique = ["order_id"]}]')
    from headrace.spec.checks import checks_from_config

    return checks_from_config(items, where=f"{path}:{line}")


def _contract(header: _Header, path: Path) -> Any:
    """``[contract]`` / ``contract = {...}`` in the header: columns and policies."""
    if "contract" not in header.values:
        return None
    value = header.values["contract"]
    if not isinstance(value, dict):
        raise _header_error(path, header, "contract", "contract must be a table",
                            '[contract] with on_violation = "quarantine" and [contract.columns]')
    from headrace.spec.contracts import contract_from_config

    return contract_from_config(value, where=f"{path}:{_key_line(header, 'contract')}")
