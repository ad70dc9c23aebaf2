"""Quality checks: what a table's new result must satisfy before it is published.

Users reach this module as ``headrace.check``::

    import headrace as hr

    checks = [
        hr.check.unique("order_id"),
        hr.check.not_null("order_id", "customer_id"),
        hr.check.range("amount", min=0, severity="warn"),
        hr.check.relationships("customer_id", to="bronze.customers"),
        hr.check.freshness("order_ts", max_age="2h"),
        hr.check.volume_anomaly(method="pct_change", threshold=0.5),
    ]

Every constructor returns a frozen dataclass, validated when it is built so that a typo fails
while the project loads, not after an hour of computing. Nothing here touches data:
``headrace.quality.checks`` compiles these objects into SQL and judges the results.

Options common to every check:

- ``severity``: ``"error"`` (a failure stops the table from being published) or ``"warn"``.
- ``max_failures`` / ``max_fail_ratio``: a row-level check passes when the failing rows are at
  most ``max_failures`` OR, when ``max_fail_ratio`` is set, at most that share of all rows.
  Table-level checks (``row_count``, ``freshness``, ``volume_anomaly``) take neither.
- ``name``: the check's id in reports and in the metric history; by default a readable id
  derived from the arguments, such as ``unique(order_id)`` or ``range(amount, min=0)``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, ClassVar, Literal, TypedDict, Unpack

from headrace.errors import DefinitionError
from headrace.spec._durations import duration_seconds
from headrace.spec._names import did_you_mean

Severity = Literal["error", "warn"]
SEVERITIES: tuple[str, ...] = ("error", "warn")
AnomalyMethod = Literal["zscore", "pct_change"]
ANOMALY_METHODS: tuple[str, ...] = ("zscore", "pct_change")
COMMON_OPTIONS: tuple[str, ...] = ("severity", "max_failures", "max_fail_ratio", "name")

Scalar = str | int | float | Decimal | bool | date | datetime
Bound = int | float | Decimal | date | datetime | str


class _Limits(TypedDict, total=False):
    severity: Severity
    max_failures: int
    max_fail_ratio: float | None


class CheckOptions(_Limits, total=False):
    """Keyword options every check constructor accepts."""

    name: str | None


# ---- the check objects ---------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class _CheckBase:
    """Options shared by every check; subclasses add their arguments and a default name.

    Validation runs in ``__post_init__`` so a check built directly from its class is held to
    the same rules as one built by the constructor functions.
    """

    kind: ClassVar[str]
    row_level: ClassVar[bool] = True
    name: str = ""
    severity: Severity = "error"
    max_failures: int = 0
    max_fail_ratio: float | None = None

    def __post_init__(self) -> None:
        self._validate()
        _validate_common(self)
        if not self.name:
            object.__setattr__(self, "name", self.default_name())

    def _validate(self) -> None:
        """Check the kind's own arguments; overridden by each kind."""

    def default_name(self) -> str:
        raise NotImplementedError

    def columns_used(self) -> tuple[str, ...]:
        """Columns of the audited table this check reads (for validation against a schema)."""
        return ()


@dataclass(frozen=True, kw_only=True)
class NotNull(_CheckBase):
    """No row has NULL in any of ``columns``; failing rows are rows with at least one NULL."""

    kind: ClassVar[str] = "not_null"
    columns: tuple[str, ...]

    def _validate(self) -> None:
        object.__setattr__(self, "columns", _check_columns(self.columns, self.kind))

    def default_name(self) -> str:
        return f"not_null({', '.join(self.columns)})"

    def columns_used(self) -> tuple[str, ...]:
        return self.columns


@dataclass(frozen=True, kw_only=True)
class Unique(_CheckBase):
    """The combination of ``columns`` is unique.

    Every row of a duplicated group fails (3 rows sharing a key are 3 failures). Rows with a
    NULL in any key column are not compared, as with a SQL UNIQUE constraint; use ``not_null``
    to forbid them.
    """

    kind: ClassVar[str] = "unique"
    columns: tuple[str, ...]

    def _validate(self) -> None:
        object.__setattr__(self, "columns", _check_columns(self.columns, self.kind))

    def default_name(self) -> str:
        return f"unique({', '.join(self.columns)})"

    def columns_used(self) -> tuple[str, ...]:
        return self.columns


@dataclass(frozen=True, kw_only=True)
class AcceptedValues(_CheckBase):
    """Every non-NULL value of ``column`` is one of ``values``."""

    kind: ClassVar[str] = "accepted_values"
    column: str
    values: tuple[Scalar, ...]

    def _validate(self) -> None:
        object.__setattr__(self, "column", _check_column(self.column, self.kind))
        values = self.values
        if isinstance(values, str | bytes) or not isinstance(values, Sequence | set | frozenset):
            raise DefinitionError(
                f"accepted_values({self.column}): values must be a list, got {values!r}",
                hint=f"write accepted_values({self.column!r}, [{values!r}, ...])",
            )
        # NULL never fails this check, and `x NOT IN (..., NULL)` is never true: drop it
        kept = tuple(v for v in values if v is not None)
        for v in kept:
            if not isinstance(v, Scalar) or (isinstance(v, float) and not math.isfinite(v)):
                raise DefinitionError(
                    f"accepted_values({self.column}): value {v!r} is not a plain scalar",
                    hint="use strings, numbers, booleans, dates or timestamps",
                )
        if not kept:
            raise DefinitionError(
                f"accepted_values({self.column}): no values given",
                hint="list at least one accepted value",
            )
        object.__setattr__(self, "values", kept)

    def default_name(self) -> str:
        return f"accepted_values({self.column})"

    def columns_used(self) -> tuple[str, ...]:
        return (self.column,)


@dataclass(frozen=True, kw_only=True)
class Range(_CheckBase):
    """Every non-NULL value of ``column`` lies within ``[min, max]`` (bounds inclusive)."""

    kind: ClassVar[str] = "range"
    column: str
    min: Bound | None = None
    max: Bound | None = None

    def _validate(self) -> None:
        object.__setattr__(self, "column", _check_column(self.column, self.kind))
        where = f"range({self.column})"
        if self.min is None and self.max is None:
            raise DefinitionError(
                f"{where}: give min=, max= or both",
                hint=f"e.g. range({self.column!r}, min=0)",
            )
        for label, bound in (("min", self.min), ("max", self.max)):
            if bound is None:
                continue
            if isinstance(bound, bool) or not isinstance(bound, Bound):
                raise DefinitionError(
                    f"{where}: {label}={bound!r} is not a number, date, timestamp or string",
                )
            if isinstance(bound, float) and not math.isfinite(bound):
                raise DefinitionError(f"{where}: {label}={bound!r} must be finite")
        if self.min is not None and self.max is not None:
            _check_order(self.min, self.max, where)

    def default_name(self) -> str:
        bounds = [f"{k}={_show(v)}" for k, v in (("min", self.min), ("max", self.max)) if v is not None]
        return f"range({self.column}, {', '.join(bounds)})"

    def columns_used(self) -> tuple[str, ...]:
        return (self.column,)


# RE2 (DuckDB's regex engine) rejects what Python accepts here; catch it while loading
_RE2_UNSUPPORTED = re.compile(r"\(\?<?[=!]|\\[1-9]|\(\?P=")


@dataclass(frozen=True, kw_only=True)
class Regex(_CheckBase):
    """Every non-NULL value of ``column`` matches ``pattern`` in full (not just a part).

    Non-string columns are checked in their text form (``CAST(col AS VARCHAR)``).
    """

    kind: ClassVar[str] = "regex"
    column: str
    pattern: str

    def _validate(self) -> None:
        object.__setattr__(self, "column", _check_column(self.column, self.kind))
        where = f"regex({self.column})"
        if not isinstance(self.pattern, str) or not self.pattern:
            raise DefinitionError(f"{where}: pattern must be a non-empty string")
        try:
            re.compile(self.pattern)
        except re.error as exc:
            raise DefinitionError(
                f"{where}: invalid regular expression {self.pattern!r}: {exc}",
                hint="the pattern must match the whole value; check brackets and escapes",
            ) from exc
        if _RE2_UNSUPPORTED.search(self.pattern):
            raise DefinitionError(
                f"{where}: {self.pattern!r} uses lookaround or a backreference",
                hint="DuckDB matches with RE2, which supports neither; rewrite the pattern",
            )

    def default_name(self) -> str:
        return f"regex({self.column})"

    def columns_used(self) -> tuple[str, ...]:
        return (self.column,)


@dataclass(frozen=True, kw_only=True)
class Relationships(_CheckBase):
    """Every non-NULL value of ``column`` exists in table ``to``'s column ``field``.

    ``to`` is a table of the project (normalised like every table name: ``customers`` means
    ``main.customers``); ``field`` defaults to ``column``.
    """

    kind: ClassVar[str] = "relationships"
    column: str
    to: str
    field: str = ""

    def _validate(self) -> None:
        # imported here: builders may well import this module (table(..., checks=[...]))
        from headrace.spec.builders import check_table_name

        object.__setattr__(self, "column", _check_column(self.column, self.kind))
        where = f"relationships({self.column}): "
        object.__setattr__(self, "to", check_table_name(self.to, where=where))
        target = self.field or self.column
        object.__setattr__(self, "field", _check_column(target, self.kind))

    def default_name(self) -> str:
        target = self.to if self.field == self.column else f"{self.to}.{self.field}"
        return f"relationships({self.column}, to={target})"

    def columns_used(self) -> tuple[str, ...]:
        return (self.column,)


@dataclass(frozen=True, kw_only=True)
class RowCount(_CheckBase):
    """The number of rows lies within ``[min, max]``."""

    kind: ClassVar[str] = "row_count"
    row_level: ClassVar[bool] = False
    min: int | None = None
    max: int | None = None

    def _validate(self) -> None:
        if self.min is None and self.max is None:
            raise DefinitionError("row_count: give min=, max= or both", hint="e.g. row_count(min=1)")
        for label, bound in (("min", self.min), ("max", self.max)):
            if bound is not None and (isinstance(bound, bool) or not isinstance(bound, int) or bound < 0):
                raise DefinitionError(f"row_count: {label}={bound!r} must be a whole number >= 0")
        if self.min is not None and self.max is not None:
            _check_order(self.min, self.max, "row_count")

    def default_name(self) -> str:
        bounds = [f"{k}={v}" for k, v in (("min", self.min), ("max", self.max)) if v is not None]
        return f"row_count({', '.join(bounds)})"


@dataclass(frozen=True, kw_only=True)
class Freshness(_CheckBase):
    """The newest value of ``column`` is at most ``max_age`` old when the check runs.

    Timestamps without a time zone are taken as UTC; a DATE counts as its midnight UTC.
    An empty result, or one where every value is NULL, fails: its freshness is unknown.
    """

    kind: ClassVar[str] = "freshness"
    row_level: ClassVar[bool] = False
    column: str
    max_age: timedelta

    def _validate(self) -> None:
        object.__setattr__(self, "column", _check_column(self.column, self.kind))
        age = self.max_age
        age = parse_duration(age, where=f"freshness({self.column})") if isinstance(age, str) else age
        if not isinstance(age, timedelta) or age <= timedelta(0):
            raise DefinitionError(
                f"freshness({self.column}): max_age={self.max_age!r} must be a positive duration",
                hint="write max_age='2h' (units s, m, h, d, w) or a datetime.timedelta",
            )
        object.__setattr__(self, "max_age", age)

    def default_name(self) -> str:
        return f"freshness({self.column}, max_age={format_duration(self.max_age)})"

    def columns_used(self) -> tuple[str, ...]:
        return (self.column,)


@dataclass(frozen=True, kw_only=True)
class Expression(_CheckBase):
    """Every row satisfies the SQL predicate ``sql`` (DuckDB dialect, over the table's columns).

    As with a SQL CHECK constraint, a row where the predicate is NULL does not fail.
    """

    kind: ClassVar[str] = "expression"
    sql: str

    def _validate(self) -> None:
        if not isinstance(self.sql, str) or not self.sql.strip():
            raise DefinitionError("expression: sql must be a non-empty SQL predicate",
                                  hint="e.g. expression('amount >= 0', name='non_negative')")
        if not self.name:
            raise DefinitionError(
                f"expression({self.sql!r}) needs a name",
                hint=f"write expression({self.sql!r}, name='...'): the name shows in reports",
            )

    def default_name(self) -> str:  # never used: the name is required
        return "expression"


@dataclass(frozen=True, kw_only=True)
class VolumeAnomaly(_CheckBase):
    """This run's ``metric`` is in line with the table's own history of earlier runs.

    ``metric`` is ``"row_count"`` or a SQL aggregate over the result, e.g. ``"sum(amount)"``.
    ``zscore``: fails when ``|value - mean| / stdev`` of the history exceeds ``threshold``.
    ``pct_change``: fails when ``|value - previous| / |previous|`` exceeds ``threshold``
    (0.5 = 50%). With fewer than ``min_history`` earlier values it passes and says so.
    """

    kind: ClassVar[str] = "volume_anomaly"
    row_level: ClassVar[bool] = False
    metric: str = "row_count"
    method: AnomalyMethod = "zscore"
    threshold: float = 3.0
    min_history: int = 5

    def _validate(self) -> None:
        if not isinstance(self.metric, str) or not self.metric.strip():
            raise DefinitionError(
                "volume_anomaly: metric must be 'row_count' or a SQL aggregate such as 'sum(amount)'"
            )
        object.__setattr__(self, "metric", self.metric.strip())
        if self.method not in ANOMALY_METHODS:
            raise DefinitionError(
                f"volume_anomaly: unknown method {self.method!r}.{did_you_mean(str(self.method), ANOMALY_METHODS)}",
                hint=f"valid methods: {', '.join(ANOMALY_METHODS)}",
            )
        if (
            isinstance(self.threshold, bool)
            or not isinstance(self.threshold, int | float)
            or not math.isfinite(self.threshold)
            or self.threshold <= 0
        ):
            raise DefinitionError(
                f"volume_anomaly: threshold={self.threshold!r} must be a positive number",
                hint="zscore: standard deviations, e.g. 3; pct_change: a fraction, e.g. 0.5 for 50%",
            )
        object.__setattr__(self, "threshold", float(self.threshold))
        lowest = 2 if self.method == "zscore" else 1
        if isinstance(self.min_history, bool) or not isinstance(self.min_history, int) or self.min_history < lowest:
            raise DefinitionError(
                f"volume_anomaly: min_history={self.min_history!r} must be a whole number >= {lowest}",
                hint="zscore needs at least 2 earlier values to have a standard deviation",
            )

    def default_name(self) -> str:
        return f"volume_anomaly({self.metric})"

    @property
    def is_row_count(self) -> bool:
        return self.metric.lower().replace(" ", "") in ("row_count", "count(*)")


Check = (
    NotNull | Unique | AcceptedValues | Range | Regex | Relationships | RowCount | Freshness
    | Expression | VolumeAnomaly
)


# ---- validation helpers ---------------------------------------------------------------------


def _validate_common(check: _CheckBase) -> None:
    where = check.kind
    if check.severity not in SEVERITIES:
        raise DefinitionError(
            f"{where}: unknown severity {check.severity!r}.{did_you_mean(str(check.severity), SEVERITIES)}",
            hint="severity is 'error' (blocks publishing) or 'warn' (reported only)",
        )
    mf = check.max_failures
    if isinstance(mf, bool) or not isinstance(mf, int) or mf < 0:
        raise DefinitionError(f"{where}: max_failures={mf!r} must be a whole number >= 0")
    ratio = check.max_fail_ratio
    if ratio is not None and (
        isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 <= ratio <= 1
    ):
        raise DefinitionError(
            f"{where}: max_fail_ratio={ratio!r} must be a fraction between 0 and 1",
            hint="e.g. max_fail_ratio=0.01 tolerates 1% failing rows",
        )
    if not check.row_level and (mf != 0 or ratio is not None):
        raise DefinitionError(
            f"{where}: max_failures and max_fail_ratio apply to row-level checks only",
            hint=f"{where} judges the table as a whole; use severity='warn' to tolerate it",
        )
    if not isinstance(check.name, str) or (check.name and not check.name.strip()):
        raise DefinitionError(f"{where}: name={check.name!r} must be a non-empty string")
    object.__setattr__(check, "name", check.name.strip())


def _check_column(column: Any, kind: str) -> str:
    if not isinstance(column, str) or not column.strip():
        raise DefinitionError(
            f"{kind}: column must be a non-empty column name, got {column!r}",
            hint=f"e.g. {kind}('order_id', ...)",
        )
    return column.strip()


def _check_columns(columns: Any, kind: str) -> tuple[str, ...]:
    if isinstance(columns, str):
        columns = (columns,)
    # accept both not_null("a", "b") and not_null(["a", "b"])
    if len(columns) == 1 and isinstance(columns[0], Sequence) and not isinstance(columns[0], str):
        columns = tuple(columns[0])
    if not columns:
        raise DefinitionError(f"{kind}: name at least one column", hint=f"e.g. {kind}('order_id')")
    names = tuple(_check_column(c, kind) for c in columns)
    if len(set(names)) != len(names):
        raise DefinitionError(f"{kind}({', '.join(names)}): a column is named twice")
    return names


def _check_order(low: Any, high: Any, where: str) -> None:
    try:
        wrong = low > high
    except TypeError as exc:
        raise DefinitionError(
            f"{where}: min={low!r} and max={high!r} are of different types",
            hint="give both bounds as numbers, both as dates, or both as strings",
        ) from exc
    if wrong:
        raise DefinitionError(f"{where}: min={_show(low)} is greater than max={_show(high)}")


def _show(value: Any) -> str:
    """A bound as it appears in a default check name: stable and readable."""
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str):
        return repr(value)
    return str(value)


# ---- durations --------------------------------------------------------------------------------

_UNITS: dict[str, int] = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}  # for format_duration


def parse_duration(text: str | timedelta, *, where: str = "duration") -> timedelta:
    """``"2h"``, ``"30m"``, ``"1d"``, ``"90s"``, ``"1h30m"`` (units w d h m s) as a timedelta."""
    if isinstance(text, timedelta):
        return text
    seconds = duration_seconds(text) if isinstance(text, str) else None
    if seconds is None:
        raise DefinitionError(
            f"{where}: cannot read {text!r} as a duration",
            hint="write a number and a unit: '90s', '30m', '2h', '1d', '1w' (or '1h30m')",
        )
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """The shortest exact form: 7200 s -> ``2h``, 5400 s -> ``90m``; stable for check names."""
    seconds = value.total_seconds()
    if seconds != int(seconds):
        return f"{seconds:g}s"
    whole = int(seconds)
    for unit in ("d", "h", "m"):
        if whole % _UNITS[unit] == 0:
            return f"{whole // _UNITS[unit]}{unit}"
    return f"{whole}s"


# ---- constructors (the ``headrace.check`` namespace) -----------------------------------------


def _common(kind: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The common options, with a did-you-mean for anything else (a typo must not pass)."""
    unknown = [k for k in options if k not in COMMON_OPTIONS]
    if unknown:
        raise DefinitionError(
            f"{kind}: unknown option {unknown[0]!r}.{did_you_mean(unknown[0], COMMON_OPTIONS)}",
            hint=f"options of every check: {', '.join(COMMON_OPTIONS)}",
        )
    out = dict(options)
    if out.get("name") is None:
        out.pop("name", None)
    return out


def not_null(*columns: str, **options: Unpack[CheckOptions]) -> NotNull:
    """No NULL in any of ``columns``: ``not_null("order_id", "customer_id")``."""
    return NotNull(columns=tuple(columns), **_common("not_null", options))


def unique(*columns: str, **options: Unpack[CheckOptions]) -> Unique:
    """The combination of ``columns`` is unique: ``unique("order_id")``."""
    return Unique(columns=tuple(columns), **_common("unique", options))


def accepted_values(column: str, values: Sequence[Scalar], **options: Unpack[CheckOptions]) -> AcceptedValues:
    """Non-NULL values of ``column`` are among ``values``: ``accepted_values("status", ["new", "paid"])``."""
    return AcceptedValues(column=column, values=values, **_common("accepted_values", options))  # type: ignore[arg-type]


def range(  # the user-facing name is hr.check.range; shadows the builtin in this module
    column: str,
    *,
    min: Bound | None = None,
    max: Bound | None = None,
    **options: Unpack[CheckOptions],
) -> Range:
    """Non-NULL values of ``column`` lie within ``[min, max]``: ``range("amount", min=0)``."""
    return Range(column=column, min=min, max=max, **_common("range", options))


def regex(column: str, pattern: str, **options: Unpack[CheckOptions]) -> Regex:
    """Non-NULL values of ``column`` fully match ``pattern``: ``regex("sku", r"[A-Z]{3}-\\d+")``."""
    return Regex(column=column, pattern=pattern, **_common("regex", options))


def relationships(
    column: str, *, to: str, field: str | None = None, **options: Unpack[CheckOptions]
) -> Relationships:
    """Non-NULL values of ``column`` exist in ``to.field``: ``relationships("customer_id", to="bronze.customers")``."""
    return Relationships(column=column, to=to, field=field or "", **_common("relationships", options))


def row_count(
    *,
    min: int | None = None,
    max: int | None = None,
    **options: Unpack[CheckOptions],
) -> RowCount:
    """The result has between ``min`` and ``max`` rows: ``row_count(min=1)``."""
    return RowCount(min=min, max=max, **_common("row_count", options))


def freshness(column: str, *, max_age: str | timedelta, **options: Unpack[CheckOptions]) -> Freshness:
    """The newest ``column`` value is at most ``max_age`` old: ``freshness("order_ts", max_age="2h")``."""
    return Freshness(column=column, max_age=max_age, **_common("freshness", options))  # type: ignore[arg-type]


def expression(sql: str, *, name: str, **options: Unpack[_Limits]) -> Expression:
    """Every row satisfies a SQL predicate: ``expression("amount >= 0", name="non_negative")``."""
    return Expression(sql=sql, name=name or "", **_common("expression", options))


def volume_anomaly(
    *,
    metric: str = "row_count",
    method: AnomalyMethod = "zscore",
    threshold: float = 3.0,
    min_history: int = 5,
    **options: Unpack[CheckOptions],
) -> VolumeAnomaly:
    """This run's metric is in line with earlier runs: ``volume_anomaly(method="pct_change", threshold=0.5)``."""
    return VolumeAnomaly(
        metric=metric, method=method, threshold=threshold, min_history=min_history,
        **_common("volume_anomaly", options),
    )


# ---- SQL model headers ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Kind:
    """How a config item of one kind maps onto its constructor.

    ``arg`` names what the kind's own key holds (``{"range": "amount"}`` -> column);
    ``options`` are the kind's extra keys besides the common ones.
    """

    build: Any
    arg: Literal["columns", "column", "sql", ""]
    options: tuple[str, ...] = field(default=())


_KINDS: dict[str, _Kind] = {
    "not_null": _Kind(not_null, "columns"),
    "unique": _Kind(unique, "columns"),
    "accepted_values": _Kind(accepted_values, "column", ("values",)),
    "range": _Kind(range, "column", ("min", "max")),
    "regex": _Kind(regex, "column", ("pattern",)),
    "relationships": _Kind(relationships, "column", ("to", "field")),
    "row_count": _Kind(row_count, "", ("min", "max")),
    "freshness": _Kind(freshness, "column", ("max_age",)),
    "expression": _Kind(expression, "sql"),
    "volume_anomaly": _Kind(volume_anomaly, "", ("metric", "method", "threshold", "min_history")),
}
CHECK_KINDS: tuple[str, ...] = tuple(_KINDS)


def checks_from_config(items: Sequence[Mapping[str, Any]], *, where: str) -> list[Check]:
    """Build checks from a SQL model header's ``checks = [...]`` (one inline table each).

    Each item names its kind as a key; the key's value is the column(s) (or the SQL of an
    ``expression``), or a table of options; the other keys are options::

        checks = [{unique = ["order_id"]}, {range = "amount", min = 0, severity = "warn"},
                  {row_count = {min = 1}}, {expression = "amount >= 0", name = "non_negative"}]
    """
    prefix = where if not where or where.rstrip().endswith(":") else f"{where}: "
    if prefix and not prefix.endswith(" "):
        prefix += " "
    if isinstance(items, str | bytes | Mapping) or not isinstance(items, Sequence):
        raise DefinitionError(
            f"{prefix}checks must be a list of tables, got {type(items).__name__}",
            hint='write checks = [{unique = ["order_id"]}, {not_null = ["order_id"]}]',
        )
    return [_check_from_item(item, f"{prefix}checks[{i}]: ") for i, item in enumerate(items)]


def _check_from_item(item: Any, at: str) -> Check:
    if not isinstance(item, Mapping):
        raise DefinitionError(
            f"{at}each check must be a table such as {{unique = ['order_id']}}, got {item!r}",
        )
    kinds = [k for k in item if k in _KINDS]
    if len(kinds) != 1:
        if kinds:
            raise DefinitionError(f"{at}one check per table; found {', '.join(kinds)}",
                                  hint="split them into separate {...} entries")
        guesses = [k for k in item if k not in COMMON_OPTIONS] or list(item)
        first = str(guesses[0]) if guesses else ""
        raise DefinitionError(
            f"{at}no check kind in {sorted(map(str, item))}.{did_you_mean(first, CHECK_KINDS) if first else ''}",
            hint=f"check kinds: {', '.join(CHECK_KINDS)}",
        )
    kind = kinds[0]
    spec = _KINDS[kind]
    value = item[kind]
    options = {str(k): v for k, v in item.items() if k != kind}
    if isinstance(value, Mapping):
        for key, v in value.items():
            if key in options:
                raise DefinitionError(f"{at}{kind}: option {key!r} is given twice")
            options[str(key)] = v
    elif spec.arg:
        options[spec.arg] = value
    elif value not in (True, None):
        raise DefinitionError(
            f"{at}{kind} takes options only, got {value!r}",
            hint=f"write {{{kind} = {{{', '.join(f'{o} = ...' for o in spec.options[:2])}}}}}",
        )
    allowed = (*((spec.arg,) if spec.arg else ()), *spec.options, *COMMON_OPTIONS)
    for key in options:
        if key not in allowed:
            raise DefinitionError(
                f"{at}unknown option {key!r} for {kind}.{did_you_mean(key, allowed)}",
                hint=f"{kind} takes: {', '.join(allowed)}",
            )
    try:
        return _build(kind, spec, options)
    except DefinitionError as exc:
        raise DefinitionError(f"{at}{exc.message}", hint=exc.hint) from exc


def _build(kind: str, spec: _Kind, options: dict[str, Any]) -> Check:
    if spec.arg and spec.arg not in options:
        raise DefinitionError(f"{kind}: missing its {spec.arg}",
                              hint=f"write {{{kind} = ...}} with the {spec.arg}")
    arg = options.pop(spec.arg) if spec.arg else None
    if spec.arg == "columns":
        cols = (arg,) if isinstance(arg, str) else tuple(arg) if isinstance(arg, Sequence) else (arg,)
        return spec.build(*cols, **options)
    if spec.arg == "column":
        if kind == "accepted_values" and "values" not in options:
            raise DefinitionError("accepted_values: missing values", hint="add values = [...]")
        if kind == "regex" and "pattern" not in options:
            raise DefinitionError("regex: missing pattern", hint="add pattern = '...'")
        if kind == "relationships" and "to" not in options:
            raise DefinitionError("relationships: missing to", hint="add to = 'layer.table'")
        if kind == "freshness" and "max_age" not in options:
            raise DefinitionError("freshness: missing max_age", hint="add max_age = '2h'")
        if kind in ("accepted_values", "regex"):
            second = options.pop("values" if kind == "accepted_values" else "pattern")
            return spec.build(arg, second, **options)
        return spec.build(arg, **options)
    if spec.arg == "sql":
        if "name" not in options:
            raise DefinitionError(f"expression {arg!r}: missing name",
                                  hint="add name = '...': the name shows in reports")
        return spec.build(arg, **options)
    return spec.build(**options)


__all__ = [
    "ANOMALY_METHODS",
    "CHECK_KINDS",
    "SEVERITIES",
    "AcceptedValues",
    "Check",
    "CheckOptions",
    "Expression",
    "Freshness",
    "NotNull",
    "Range",
    "Regex",
    "Relationships",
    "RowCount",
    "Severity",
    "Unique",
    "VolumeAnomaly",
    "accepted_values",
    "checks_from_config",
    "expression",
    "format_duration",
    "freshness",
    "not_null",
    "parse_duration",
    "range",
    "regex",
    "relationships",
    "row_count",
    "unique",
    "volume_anomaly",
]
