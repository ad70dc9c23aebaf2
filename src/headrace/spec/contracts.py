"""Data contracts: the declared shape and rules of a source's records.

A contract is pure data (no I/O, no engine import) so it can be compared, hashed into a run
fingerprint and built from Python, ``headrace.toml`` or a SQL model header alike. The engine
side (``headrace.quality.contracts``) turns it into one vectorised validation query.

>>> c = Contract({"order_id": Int64(key=True), "amount": Decimal(12, 2, min=0)})
>>> c.names
('order_id', 'amount')
"""

from __future__ import annotations

import datetime as dt
import decimal
import re
import zoneinfo
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar, Literal, NoReturn

from headrace.errors import DefinitionError
from headrace.spec._names import did_you_mean

OnViolation = Literal["quarantine", "fail", "drop"]
SchemaPolicy = Literal["evolve", "freeze", "discard"]
ON_VIOLATION: tuple[str, ...] = ("quarantine", "fail", "drop")
SCHEMA_POLICIES: tuple[str, ...] = ("evolve", "freeze", "discard")
RESERVED_PREFIX = "__hr_"
"""Column names starting with this are headrace's own (file, line, raw text, violations)."""


class FrozenMap(Mapping[str, Any]):
    """An ordered, read-only, hashable mapping, so specs holding one stay hashable."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, Any] | Sequence[tuple[str, Any]] = ()) -> None:
        pairs = tuple(items.items()) if isinstance(items, Mapping) else tuple(items)
        self._items: tuple[tuple[str, Any], ...] = pairs

    def __getitem__(self, key: str) -> Any:
        for name, value in self._items:
            if name == key:
                return value
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(self._items)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FrozenMap):
            return self._items == other._items
        return isinstance(other, Mapping) and tuple(other.items()) == self._items

    def __repr__(self) -> str:
        return "{" + ", ".join(f"{k!r}: {v!r}" for k, v in self._items) + "}"


# ---- column types ----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, repr=False)
class ColumnType:
    """Options every column type shares.

    ``key`` implies not null and unique within the batch. ``accepted`` lists the allowed
    values; ``min``/``max`` are inclusive bounds (Python values or ISO strings); ``regex`` must
    fully match and ``max_length`` bounds the length (strings only). ``pii`` labels personal
    data (``"email"``, ``"name"``, ...); ``mask`` protects it (strings only): ``"hash"``
    (keyed SHA-256 of the value, the same for the same value so joins still work; the key is
    ``HEADRACE_PII_KEY``), ``"mask"`` (all but the last 4 characters starred) or ``"redact"``
    (NULL). The rows a table reads hold the protected values, and a quarantined record shows
    ``***`` in their place (see :mod:`headrace.quality.pii`).
    """

    sql_name: ClassVar[str] = ""
    ordered: ClassVar[bool] = False  # min/max make sense
    textual: ClassVar[bool] = False  # regex/max_length make sense
    nullable: bool = True
    key: bool = False
    accepted: Sequence[Any] | None = None
    min: Any = None
    max: Any = None
    regex: str | None = None
    max_length: int | None = None
    pii: str | None = None
    mask: Literal["hash", "mask", "redact"] | None = None

    def __post_init__(self) -> None:
        if self.accepted is not None:
            if isinstance(self.accepted, str | bytes) or not isinstance(self.accepted, Sequence | set | frozenset):
                raise DefinitionError(
                    f"{self.describe()}: accepted must be a list of values, got {self.accepted!r}",
                    hint="write accepted=['a', 'b']",
                )
            object.__setattr__(self, "accepted", tuple(self.accepted))
        self._check_options()

    def duckdb_type(self) -> str:
        """The DuckDB type this column is cast to."""
        return self.sql_name

    def __repr__(self) -> str:
        # only what differs from the defaults: these show up in error messages
        positional = [repr(getattr(self, f.name)) for f in fields(self) if not f.kw_only]
        options = [
            f"{f.name}={getattr(self, f.name)!r}"
            for f in fields(self)
            if f.kw_only and getattr(self, f.name) != f.default
        ]
        return f"{type(self).__name__}({', '.join(positional + options)})"

    def describe(self) -> str:
        return self.duckdb_type()

    def has_rules(self) -> bool:
        """True when any option beyond the type itself is set (nested items allow none)."""
        defaults = {f.name: f.default for f in fields(ColumnType)}
        return any(getattr(self, name) != default for name, default in defaults.items())

    def _check_options(self) -> None:
        where = self.describe()
        if self.accepted is not None and not self.accepted:
            raise DefinitionError(
                f"{where}: accepted is empty, so no value could pass",
                hint="list at least one value or drop accepted=",
            )
        if (self.min is not None or self.max is not None) and not self.ordered:
            raise DefinitionError(
                f"{where}: min/max apply to numbers, dates and timestamps only",
                hint="use accepted= or regex= for other types",
            )
        if (self.regex is not None or self.max_length is not None) and not self.textual:
            raise DefinitionError(
                f"{where}: regex/max_length apply to String columns only",
                hint="declare the column as String() or drop the option",
            )
        if self.mask is not None:
            if self.mask not in ("hash", "mask", "redact"):
                raise DefinitionError(f"{where}: mask must be 'hash', 'mask' or 'redact', got {self.mask!r}")
            if not self.textual:
                raise DefinitionError(f"{where}: mask applies to String columns only",
                                      hint="declare the personal data as String()")
            if self.key and self.mask != "hash":
                raise DefinitionError(f"{where}: a key column can only be masked with 'hash'",
                                      hint="'mask' and 'redact' would make different keys equal")
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as exc:
                raise DefinitionError(
                    f"{where}: regex {self.regex!r} does not compile: {exc}",
                    hint="the pattern must fully match the value (RE2 syntax, as DuckDB uses)",
                ) from exc
        if self.max_length is not None and (
            isinstance(self.max_length, bool) or not isinstance(self.max_length, int) or self.max_length <= 0
        ):
            raise DefinitionError(
                f"{where}: max_length must be a positive integer, got {self.max_length!r}"
            )
        low = self.bound("min") if self.min is not None else None
        high = self.bound("max") if self.max is not None else None
        if low is not None and high is not None:
            try:
                inverted = low > high
            except TypeError:
                inverted = False  # naive vs aware datetimes: the engine compares them
            if inverted:
                raise DefinitionError(
                    f"{where}: min {self.min!r} is greater than max {self.max!r}",
                    hint="min and max are inclusive bounds; swap them",
                )
        for value in self.accepted or ():
            self.python_value(value, setting="accepted")

    def bound(self, which: Literal["min", "max"]) -> Any:
        """The bound as a comparable Python value (raises DefinitionError if unparseable)."""
        return self.python_value(getattr(self, which), setting=which)

    def python_value(self, value: Any, *, setting: str) -> Any:
        """Parse a literal given for this type; the base accepts anything."""
        return value


@dataclass(frozen=True, kw_only=True, repr=False)
class _Number(ColumnType):
    ordered: ClassVar[bool] = True

    def python_value(self, value: Any, *, setting: str) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float | decimal.Decimal | str):
            raise DefinitionError(f"{self.describe()}: {setting} {value!r} is not a number")
        try:
            return decimal.Decimal(str(value).strip())
        except decimal.InvalidOperation as exc:
            raise DefinitionError(f"{self.describe()}: {setting} {value!r} is not a number") from exc


@dataclass(frozen=True, kw_only=True, repr=False)
class Int8(_Number):
    sql_name: ClassVar[str] = "TINYINT"


@dataclass(frozen=True, kw_only=True, repr=False)
class Int16(_Number):
    sql_name: ClassVar[str] = "SMALLINT"


@dataclass(frozen=True, kw_only=True, repr=False)
class Int32(_Number):
    sql_name: ClassVar[str] = "INTEGER"


@dataclass(frozen=True, kw_only=True, repr=False)
class Int64(_Number):
    sql_name: ClassVar[str] = "BIGINT"


@dataclass(frozen=True, kw_only=True, repr=False)
class Float32(_Number):
    sql_name: ClassVar[str] = "FLOAT"


@dataclass(frozen=True, kw_only=True, repr=False)
class Float64(_Number):
    sql_name: ClassVar[str] = "DOUBLE"


@dataclass(frozen=True, repr=False)
class Decimal(_Number):
    """DECIMAL(precision, scale); a value that would lose digits is a type violation."""

    precision: int
    scale: int = 0

    def __post_init__(self) -> None:
        p, s = self.precision, self.scale
        if isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= 38:
            raise DefinitionError(
                f"decimal precision must be an integer in 1..38, got {p!r}",
                hint="e.g. Decimal(12, 2) holds 10 digits before the point and 2 after",
            )
        if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= p:
            raise DefinitionError(
                f"decimal scale must be an integer in 0..precision ({p}), got {s!r}",
                hint="e.g. Decimal(12, 2)",
            )
        super().__post_init__()

    def duckdb_type(self) -> str:
        return f"DECIMAL({self.precision},{self.scale})"


@dataclass(frozen=True, kw_only=True, repr=False)
class String(ColumnType):
    sql_name: ClassVar[str] = "VARCHAR"
    textual: ClassVar[bool] = True

    def python_value(self, value: Any, *, setting: str) -> Any:
        if not isinstance(value, str):
            raise DefinitionError(f"{self.describe()}: {setting} {value!r} is not a string")
        return value


@dataclass(frozen=True, kw_only=True, repr=False)
class Bool(ColumnType):
    sql_name: ClassVar[str] = "BOOLEAN"

    def python_value(self, value: Any, *, setting: str) -> Any:
        if not isinstance(value, bool):
            raise DefinitionError(f"{self.describe()}: {setting} {value!r} is not true/false")
        return value


@dataclass(frozen=True, kw_only=True, repr=False)
class Date(ColumnType):
    sql_name: ClassVar[str] = "DATE"
    ordered: ClassVar[bool] = True

    def python_value(self, value: Any, *, setting: str) -> Any:
        if isinstance(value, dt.datetime):
            raise DefinitionError(f"{self.describe()}: {setting} {value!r} is a datetime, not a date")
        if isinstance(value, dt.date):
            return value
        if isinstance(value, str):
            try:
                return dt.date.fromisoformat(value.strip())
            except ValueError as exc:
                raise DefinitionError(
                    f"{self.describe()}: {setting} {value!r} is not an ISO date",
                    hint="write 'YYYY-MM-DD'",
                ) from exc
        raise DefinitionError(f"{self.describe()}: {setting} {value!r} is not a date")


@dataclass(frozen=True, kw_only=True, repr=False)
class Timestamp(ColumnType):
    """TIMESTAMP, or TIMESTAMPTZ when ``tz`` is given.

    With ``tz``, values without an explicit offset are read as wall-clock time in ``tz``;
    without it, values that carry an offset are converted to UTC.
    """

    ordered: ClassVar[bool] = True
    tz: str | None = None

    def __post_init__(self) -> None:
        if self.tz is not None:
            try:
                zoneinfo.ZoneInfo(self.tz)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError) as exc:
                raise DefinitionError(
                    f"unknown time zone {self.tz!r}",
                    hint="use an IANA name such as 'UTC' or 'Europe/Paris'",
                ) from exc
        super().__post_init__()

    def duckdb_type(self) -> str:
        return "TIMESTAMPTZ" if self.tz is not None else "TIMESTAMP"

    def python_value(self, value: Any, *, setting: str) -> Any:
        if isinstance(value, dt.datetime):
            return value
        if isinstance(value, dt.date):
            return dt.datetime(value.year, value.month, value.day)
        if isinstance(value, str):
            try:
                return dt.datetime.fromisoformat(value.strip())
            except ValueError as exc:
                raise DefinitionError(
                    f"{self.describe()}: {setting} {value!r} is not an ISO timestamp",
                    hint="write 'YYYY-MM-DD HH:MM:SS', optionally with an offset such as '+02:00'",
                ) from exc
        raise DefinitionError(f"{self.describe()}: {setting} {value!r} is not a timestamp")


def _check_nested_item(item: Any, where: str) -> ColumnType:
    if not isinstance(item, ColumnType):
        raise DefinitionError(
            f"{where}: {item!r} is not a column type",
            hint="use a type such as String() or Int64()",
        )
    if item.has_rules():
        raise DefinitionError(
            f"{where}: options on nested item types are not checked ({item!r})",
            hint="put rules on top-level columns; nested items only declare their type",
        )
    return item


@dataclass(frozen=True, repr=False)
class List(ColumnType):
    """A list of ``item_type`` values, read from JSON array text."""

    item_type: ColumnType

    def __post_init__(self) -> None:
        _check_nested_item(self.item_type, "list item")
        super().__post_init__()

    def duckdb_type(self) -> str:
        return f"{self.item_type.duckdb_type()}[]"


@dataclass(frozen=True, repr=False)
class Struct(ColumnType):
    """A struct of named fields, read from JSON object text."""

    fields: Mapping[str, ColumnType]

    def __post_init__(self) -> None:
        if not isinstance(self.fields, Mapping) or not self.fields:
            raise DefinitionError(
                "a struct needs at least one field",
                hint="write Struct({'name': String(), 'age': Int32()})",
            )
        for name, item in self.fields.items():
            if not isinstance(name, str) or not name:
                raise DefinitionError(f"struct field name {name!r} is not a non-empty string")
            _check_nested_item(item, f"struct field {name!r}")
        object.__setattr__(self, "fields", FrozenMap(self.fields))
        super().__post_init__()

    def duckdb_type(self) -> str:
        inner = ", ".join(f"{quote_ident(k)} {v.duckdb_type()}" for k, v in self.fields.items())
        return f"STRUCT({inner})"


def quote_ident(name: str) -> str:
    """Quote an identifier for DuckDB (kept here so the spec needs no engine import)."""
    return '"' + name.replace('"', '""') + '"'


# ---- the contract ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Contract:
    """Columns with their types and rules, and what to do with records that break them.

    ``on_violation``: ``quarantine`` writes bad records to the quarantine table and the rest
    to the target; ``drop`` discards them (counted); ``fail`` stops the run. A quarantine ratio
    above ``max_quarantine_ratio`` (0..1) stops the run too. ``schema``: ``evolve`` lets extra
    input columns through as text, ``freeze`` makes a missing or extra column a violation of
    every record, ``discard`` drops extra columns. Missing columns are NULL except under freeze.
    """

    columns: Mapping[str, ColumnType]
    on_violation: OnViolation = field(default="quarantine", kw_only=True)
    max_quarantine_ratio: float | None = field(default=None, kw_only=True)
    schema: SchemaPolicy = field(default="evolve", kw_only=True)

    def __post_init__(self) -> None:
        if not isinstance(self.columns, Mapping) or not self.columns:
            raise DefinitionError(
                "a contract needs at least one column",
                hint="write Contract({'id': Int64(key=True), ...})",
            )
        seen: set[str] = set()
        for name, kind in self.columns.items():
            if not isinstance(name, str) or not name.strip():
                raise DefinitionError(f"contract column name {name!r} is not a non-empty string")
            if name.lower().startswith(RESERVED_PREFIX):
                raise DefinitionError(
                    f"contract column {name!r}: names starting with {RESERVED_PREFIX!r} are reserved",
                    hint="rename the column",
                )
            if name.lower() in seen:
                raise DefinitionError(f"contract column {name!r} is declared twice (names are case-insensitive)")
            seen.add(name.lower())
            if not isinstance(kind, ColumnType):
                raise DefinitionError(
                    f"contract column {name!r}: {kind!r} is not a column type",
                    hint="use a type such as Int64(), String(), Decimal(12, 2)",
                )
        object.__setattr__(self, "columns", FrozenMap(self.columns))
        _check_choice("on_violation", self.on_violation, ON_VIOLATION, where="contract: ")
        _check_choice("schema", self.schema, SCHEMA_POLICIES, where="contract: ")
        ratio = self.max_quarantine_ratio
        if ratio is not None and (
            isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 <= ratio <= 1
        ):
            raise DefinitionError(
                f"contract: max_quarantine_ratio must be a number in [0, 1], got {ratio!r}",
                hint="e.g. 0.05 stops the run when more than 5% of the records are bad",
            )

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.columns)

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(name for name, kind in self.columns.items() if kind.key)

    def with_options(self, **changes: Any) -> Contract:
        return replace(self, **changes)


def _check_choice(setting: str, value: Any, choices: Sequence[str], *, where: str) -> None:
    if value not in choices:
        shown = value if isinstance(value, str) else repr(value)
        raise DefinitionError(
            f"{where}unknown {setting} {value!r}.{did_you_mean(str(shown), choices)}",
            hint=f"valid values: {', '.join(choices)}",
        )


# ---- building from configuration (headrace.toml, SQL headers) ---------------------------------

_SIMPLE_TYPES: dict[str, type[ColumnType]] = {
    "int8": Int8,
    "tinyint": Int8,
    "int16": Int16,
    "smallint": Int16,
    "int32": Int32,
    "int": Int32,
    "integer": Int32,
    "int64": Int64,
    "bigint": Int64,
    "long": Int64,
    "float": Float32,
    "float32": Float32,
    "real": Float32,
    "double": Float64,
    "float64": Float64,
    "string": String,
    "varchar": String,
    "text": String,
    "bool": Bool,
    "boolean": Bool,
    "date": Date,
    "timestamp": Timestamp,
    "timestamptz": Timestamp,
}
_TYPE_NAMES: tuple[str, ...] = (*_SIMPLE_TYPES, "decimal(p,s)", "list<type>", "struct<name: type>")
_COLUMN_OPTIONS: tuple[str, ...] = (
    "type",
    "nullable",
    "key",
    "accepted",
    "min",
    "max",
    "regex",
    "max_length",
    "pii",
    "mask",
    "tz",
)
_CONTRACT_OPTIONS: tuple[str, ...] = ("columns", "on_violation", "max_quarantine_ratio", "schema")
_TOKEN = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*|\"(?:[^\"]|\"\")*\"|\d+|[<>(),:])")


class _TypeParser:
    """Recursive-descent parser for type names like ``list<struct<a: int64, b: string>>``."""

    def __init__(self, text: str, where: str) -> None:
        self.text = text
        self.where = where
        self.tokens: list[str] = []
        pos = 0
        stripped = text.rstrip()
        while pos < len(stripped):
            match = _TOKEN.match(stripped, pos)
            if not match:
                self.fail(f"unexpected character {stripped[pos:].strip()[:1]!r}")
            self.tokens.append(match.group(1))
            pos = match.end()
        self.pos = 0

    def fail(self, why: str) -> NoReturn:
        raise DefinitionError(
            f"{self.where}type {self.text!r}: {why}",
            hint=f"valid types: {', '.join(_TYPE_NAMES)}",
        )

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, expected: str | None = None) -> str:
        token = self.peek()
        if token is None or (expected is not None and token != expected):
            self.fail(f"expected {expected or 'more'} but found {token or 'the end'}")
        self.pos += 1
        return token

    def parse(self) -> ColumnType:
        kind = self.parse_type()
        if self.peek() is not None:
            self.fail(f"unexpected {self.peek()!r} after the type")
        return kind

    def parse_type(self) -> ColumnType:
        name = self.take().lower()
        if name in ("decimal", "numeric"):
            if self.peek() != "(":
                return Decimal(18, 3)
            self.take("(")
            precision = self.number()
            scale = 0
            if self.peek() == ",":
                self.take(",")
                scale = self.number()
            self.take(")")
            return Decimal(precision, scale)
        if name in ("list", "array"):
            self.take("<")
            item = self.parse_type()
            self.take(">")
            return List(item)
        if name == "struct":
            self.take("<")
            members: dict[str, ColumnType] = {}
            while True:
                token = self.take()
                member = token[1:-1].replace('""', '"') if token.startswith('"') else token
                self.take(":")
                members[member] = self.parse_type()
                if self.peek() == ",":
                    self.take(",")
                    continue
                self.take(">")
                return Struct(members)
        factory = _SIMPLE_TYPES.get(name)
        if factory is None:
            self.fail(f"unknown type {name!r}.{did_you_mean(name, _SIMPLE_TYPES)}")
        if name == "timestamptz":
            return Timestamp(tz="UTC")
        return factory()

    def number(self) -> int:
        token = self.take()
        if not token.isdigit():
            self.fail(f"expected a number, found {token!r}")
        return int(token)


def parse_type(text: str, *, where: str = "") -> ColumnType:
    """Parse a type name such as ``decimal(12,2)`` or ``list<string>`` (case-insensitive)."""
    if not isinstance(text, str) or not text.strip():
        raise DefinitionError(
            f"{where}type must be a non-empty string, got {text!r}",
            hint=f"valid types: {', '.join(_TYPE_NAMES)}",
        )
    try:
        return _TypeParser(text, where).parse()
    except DefinitionError as exc:
        if exc.message.startswith(f"{where}type "):
            raise
        raise DefinitionError(f"{where}type {text!r}: {exc.message}", hint=exc.hint) from exc


def column_from_config(name: str, settings: Any, *, where: str = "") -> ColumnType:
    """One column's table (``{"type": "int64", "key": true}``) or bare type name as a type."""
    here = f"{where}column {name!r}: "
    if isinstance(settings, str):
        settings = {"type": settings}
    if not isinstance(settings, Mapping):
        raise DefinitionError(
            f"{here}expected a table of settings or a type name, got {settings!r}",
            hint='write {type = "int64", key = true} or just "int64"',
        )
    for option in settings:
        if option not in _COLUMN_OPTIONS:
            raise DefinitionError(
                f"{here}unknown setting {option!r}.{did_you_mean(str(option), _COLUMN_OPTIONS)}",
                hint=f"valid settings: {', '.join(_COLUMN_OPTIONS)}",
            )
    if "type" not in settings:
        raise DefinitionError(f"{here}missing setting 'type'", hint='e.g. type = "string"')
    base = parse_type(settings["type"], where=here)
    options = {k: v for k, v in settings.items() if k != "type"}
    if "tz" in options:
        if not isinstance(base, Timestamp):
            raise DefinitionError(
                f"{here}setting 'tz' applies to timestamp columns only",
                hint='use type = "timestamp" with tz = "UTC"',
            )
        if options["tz"] is not None and not isinstance(options["tz"], str):
            raise DefinitionError(f"{here}setting 'tz' must be a time zone name, got {options['tz']!r}")
    for flag in ("nullable", "key"):
        if flag in options and not isinstance(options[flag], bool):
            raise DefinitionError(f"{here}setting {flag!r} must be true or false, got {options[flag]!r}")
    for text_option in ("regex", "pii", "mask"):
        if text_option in options and not isinstance(options[text_option], str):
            raise DefinitionError(f"{here}setting {text_option!r} must be a string, got {options[text_option]!r}")
    try:
        return replace(base, **options)
    except DefinitionError as exc:
        raise DefinitionError(f"{here}{exc.message}", hint=exc.hint) from exc


def contract_from_config(mapping: Mapping[str, Any], *, where: str) -> Contract:
    """Build a contract from a TOML table or SQL header dictionary.

    ``where`` names the place (``"headrace.toml [sources.orders.contract]"``) so every error
    points at the file and setting to edit.
    """
    here = f"{where}: " if where and not where.endswith(": ") else where
    if not isinstance(mapping, Mapping):
        raise DefinitionError(f"{here}contract must be a table, got {mapping!r}")
    for option in mapping:
        if option not in _CONTRACT_OPTIONS:
            raise DefinitionError(
                f"{here}unknown contract setting {option!r}.{did_you_mean(str(option), _CONTRACT_OPTIONS)}",
                hint=f"valid settings: {', '.join(_CONTRACT_OPTIONS)}",
            )
    columns = mapping.get("columns")
    if not isinstance(columns, Mapping) or not columns:
        raise DefinitionError(
            f"{here}contract needs a non-empty 'columns' table",
            hint='e.g. columns = {order_id = {type = "int64", key = true}}',
        )
    built = {name: column_from_config(name, settings, where=here) for name, settings in columns.items()}
    options = {k: mapping[k] for k in ("on_violation", "max_quarantine_ratio", "schema") if k in mapping}
    try:
        return Contract(built, **options)
    except DefinitionError as exc:
        raise DefinitionError(f"{here}{exc.message.removeprefix('contract: ')}", hint=exc.hint) from exc
