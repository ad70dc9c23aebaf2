"""Audit a table's staged rows with its checks: validate, compile to SQL, evaluate, report.

The audit sits between staging and publishing (write-audit-publish), so it must cost little
next to computing the table. Compilation therefore turns all of a table's checks into ONE SQL
statement, one round trip, whose parts DuckDB runs side by side:

- failing rows: every row-level check (``not_null``, ``accepted_values``, ``range``,
  ``regex``, ``expression``, ``relationships``) becomes a boolean flag computed once per row;
  only rows with a raised flag reach the aggregates, which count them per check and keep up
  to 5 of them as a sample (``arg_min(struct_pack(...), key, 5) FILTER (WHERE flag)``). A
  ``relationships`` check is a LEFT JOIN of this scan against the target's distinct keys;
- totals: the row count, each freshness ``max()`` and each volume metric, over every row
  (on Parquet the row count comes from the footers; only aggregated columns are read);
- ``unique``: one GROUP BY scan shared by all unique checks (GROUPING SETS for several
  keys), which also yields the most duplicated keys as the sample.

So each column is decoded about once, and ``plan.scans`` (1 to 3) counts the parts reading the
audited rows. Samples come with the counts, never from follow-up queries. Why: failures are
usually rare, and a ``... WHERE <failing> LIMIT 5`` query then reads the whole input before it
finds 5 rows, one more full scan per failing check (measured: the audit went from 0.19 s to
0.44 s on 1M rows with 7 failing checks), while filtered aggregates over every row cost ~0.03 s
per check per 10M rows even when nothing fails. Aggregating only the flagged rows costs neither.

Typical use by the runner (``{staged}`` is the engine's placeholder for the staged rows)::

    validate_checks(checks, table="silver.orders", columns=staged_types, known_tables=names)
    plan = compile_checks(checks, relation="{staged}", tables={"bronze.customers": "cust_view"},
                          key=("order_id",), columns=list(staged_types), table="silver.orders")
    results = evaluate(plan, lambda sql: session.staged_rows(staged, sql),
                       history={"volume_anomaly(row_count)": [980.0, 1010.0, ...]})
    # store r.metric of every result where it is not None as that check's next history value
    if breaker_tripped(results):
        raise DataQualityError(format_report(results), table="silver.orders")
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from headrace.errors import DefinitionError, engine_message
from headrace.sources.files import quote_ident, sql_string
from headrace.spec._names import did_you_mean
from headrace.spec.checks import (
    AcceptedValues,
    Check,
    Expression,
    Freshness,
    NotNull,
    Range,
    Regex,
    Relationships,
    RowCount,
    Unique,
    VolumeAnomaly,
    format_duration,
)

RunSql = Callable[[str], list[tuple[Any, ...]]]
SAMPLE_ROWS = 5
_ALIAS = "__hr_r"  # the audited rows inside every generated query
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# ---- results ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckResult:
    """The verdict of one check on one staged result.

    Row-level checks report ``failing`` rows out of ``total`` and ``ratio = failing/total``
    (None when the result is empty). Table-level checks (row_count, freshness,
    volume_anomaly) report ``failing`` 1 when violated and 0 otherwise, ``ratio`` None.
    ``metric`` is set for volume_anomaly only: the caller stores it as that check's history.
    ``sample`` holds up to 5 failing rows whenever rows fail (even within max_failures): the
    key and offending columns (an expression: the columns it names, or the whole row; a
    unique check: the most duplicated keys with ``n_rows``), as JSON-safe values.
    """

    name: str
    kind: str
    severity: str
    passed: bool
    failing: int
    total: int
    ratio: float | None
    sample: list[dict[str, Any]]
    message: str
    metric: float | None = None


@dataclass(frozen=True)
class CompiledCheck:
    """One check's place in a plan.

    ``column`` indexes the check's figure in the main query's single row (failing count,
    ``epoch_ns`` of the newest value, or the volume metric); None means the row total.
    ``sample`` indexes its failing sample (a list of up to 5 structs), None when it has none.
    ``standalone_sql`` computes the figure alone (used to pin an error on a check);
    ``probe_sql`` is the same over zero rows, to test that it binds without reading data.
    """

    check: Check
    column: int | None
    sample: int | None
    standalone_sql: str
    probe_sql: str


@dataclass(frozen=True)
class CheckPlan:
    """Everything needed to audit one relation: ``sql`` is the single main statement."""

    sql: str
    checks: tuple[CompiledCheck, ...]
    relation: str
    scans: int
    key: tuple[str, ...] = ()
    table: str | None = None


# ---- validation (before any data is read) ----------------------------------------------------


_NUMERIC = {
    "TINYINT", "SMALLINT", "INTEGER", "INT", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
    "UINTEGER", "UBIGINT", "UHUGEINT", "FLOAT", "REAL", "DOUBLE", "DECIMAL", "NUMERIC",
    "INT1", "INT2", "INT4", "INT8", "VARINT", "BIGNUM",
}
_STRING = {"VARCHAR", "TEXT", "STRING", "CHAR", "BPCHAR"}


def _family(duck_type: str) -> str:
    """Coarse DuckDB type family: numeric, temporal (DATE/TIMESTAMP*), string, boolean, other."""
    base = duck_type.upper().split("(", 1)[0].strip()
    if base in _NUMERIC:
        return "numeric"
    if base == "DATE" or base.startswith(("TIMESTAMP", "DATETIME")):
        return "temporal"
    if base in _STRING:
        return "string"
    if base in ("BOOLEAN", "BOOL"):
        return "boolean"
    return "other"


_FITS: dict[str, tuple[type, ...]] = {
    "numeric": (int, float, Decimal),
    "temporal": (date, datetime, str),
    "string": (str,),
    "boolean": (bool,),
}


def validate_checks(
    checks: Sequence[Check],
    *,
    table: str,
    columns: Mapping[str, str],
    known_tables: Collection[str],
) -> None:
    """Reject checks that cannot work on this table, before any data is touched.

    ``columns`` maps the result's column names to DuckDB types. Column names match
    case-insensitively, as in DuckDB. ``known_tables`` are the project's tables; when it is a
    mapping of table -> {column: type}, a relationships check's target column is checked too.
    Regex checks accept any column type (values are matched in their text form). What only
    the engine can judge (an expression's or a metric's SQL) is checked by ``preflight``.
    """
    names: set[str] = set()
    by_lower = {c.lower(): c for c in columns}
    for check in checks:
        where = f"table {table!r}: check {check.name!r}"
        if check.name in names:
            raise DefinitionError(
                f"{where} is declared twice",
                hint="checks are reported and keep history by name: give one a distinct name=",
                table=table,
            )
        names.add(check.name)
        for col in check.columns_used():
            if col.lower() not in by_lower:
                raise DefinitionError(
                    f"{where}: column {col!r} is not in the result.{did_you_mean(col, columns)}",
                    hint=f"columns of {table}: {', '.join(columns)}",
                    table=table,
                )
        _validate_kind(check, where, table, {k.lower(): v for k, v in columns.items()}, known_tables)


def _validate_kind(
    check: Check, where: str, table: str, types: Mapping[str, str], known_tables: Collection[str]
) -> None:
    if isinstance(check, Relationships):
        if check.to not in known_tables:
            raise DefinitionError(
                f"{where}: table {check.to!r} is unknown.{did_you_mean(check.to, known_tables)}",
                hint="relationships(to=...) names a table of the project, e.g. 'bronze.customers'",
                table=table,
            )
        target = known_tables.get(check.to) if isinstance(known_tables, Mapping) else None
        if isinstance(target, Mapping) and check.field.lower() not in {c.lower() for c in target}:
            raise DefinitionError(
                f"{where}: {check.to!r} has no column {check.field!r}.{did_you_mean(check.field, target)}",
                hint=f"columns of {check.to}: {', '.join(target)}; set field= to the matching column",
                table=table,
            )
    elif isinstance(check, Freshness):
        kind = types[check.column.lower()]
        if _family(kind) != "temporal":
            raise DefinitionError(
                f"{where}: column {check.column!r} is {kind}, not a date or timestamp",
                hint="freshness needs a DATE or TIMESTAMP column; cast it in the table's query",
                table=table,
            )
    elif isinstance(check, Range | AcceptedValues):
        kind = types[check.column.lower()]
        family = _family(kind)
        given = (check.min, check.max) if isinstance(check, Range) else check.values
        fits = _FITS.get(family)
        for value in given:
            if value is None or fits is None:
                continue
            if not isinstance(value, fits) or (family == "numeric" and isinstance(value, bool)):
                raise DefinitionError(
                    f"{where}: {value!r} cannot be compared with column {check.column!r} ({kind})",
                    hint=f"give {family} values for a {kind} column",
                    table=table,
                )


# ---- compilation -----------------------------------------------------------------------------


def sql_literal(value: Any) -> str:
    """A Python scalar as a DuckDB literal (bool before int: True is an int too)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | Decimal):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, datetime):
        kind = "TIMESTAMPTZ" if value.tzinfo is not None else "TIMESTAMP"
        return f"{kind} {sql_string(value.isoformat(sep=' '))}"
    if isinstance(value, date):
        return f"DATE {sql_string(value.isoformat())}"
    return sql_string(str(value))


def _fail_predicate(check: Check) -> str:
    """The WHERE condition of a failing row, for checks decided row by row on their own.

    NULL values make these predicates NULL, so they never fail; only not_null sees NULLs.
    """
    if isinstance(check, NotNull):
        return " OR ".join(f"{quote_ident(c)} IS NULL" for c in check.columns)
    if isinstance(check, AcceptedValues):
        return f"{quote_ident(check.column)} NOT IN ({', '.join(sql_literal(v) for v in check.values)})"
    if isinstance(check, Range):
        col = quote_ident(check.column)
        parts = [f"{col} < {sql_literal(check.min)}"] if check.min is not None else []
        parts += [f"{col} > {sql_literal(check.max)}"] if check.max is not None else []
        return " OR ".join(parts)
    if isinstance(check, Regex):
        return f"NOT regexp_full_match(CAST({quote_ident(check.column)} AS VARCHAR), {sql_string(check.pattern)})"
    if isinstance(check, Expression):
        return f"NOT ({check.sql})"
    raise TypeError(f"no row predicate for {check.kind}")


def _join(check: Relationships, target: str, n: int) -> tuple[str, str]:
    """A LEFT JOIN against the target's distinct non-NULL keys, and the failing condition.

    DISTINCT keeps one match per row, so counts over the joined scan stay row counts;
    the non-NULL filter matters because `x NOT IN (..., NULL)` would never be true.
    """
    field, key, alias = quote_ident(check.field), f"__hr_k{n}", f"__hr_j{n}"
    join = (
        f"LEFT JOIN (SELECT DISTINCT {field} AS {key} FROM {target} WHERE {field} IS NOT NULL) "
        f"AS {alias} ON {quote_ident(check.column)} = {alias}.{key}"
    )
    return join, f"{quote_ident(check.column)} IS NOT NULL AND {alias}.{key} IS NULL"


def _unique_sql(sets: Sequence[tuple[str, ...]], relation: str) -> str:
    """A one-row subquery with, per key set, the rows of duplicated groups and a sample of
    the most duplicated keys, all from ONE GROUP BY scan (GROUPING SETS for several keys).

    Rows with a NULL in the key are left out, like a SQL UNIQUE constraint.
    """
    every = list(dict.fromkeys(c for s in sets for c in s))
    items = []
    for j, s in enumerate(sets):
        cond = ["__hr_n > 1", *(f"{quote_ident(c)} IS NOT NULL" for c in s)]
        if len(sets) > 1:
            # GROUPING(a, b, c): a bit per column, first most significant, set when NOT grouped
            gid = sum(1 << (len(every) - 1 - i) for i, c in enumerate(every) if c not in s)
            cond.insert(0, f"__hr_g = {gid}")
        where = " AND ".join(cond)
        count_as = "__hr_n_rows" if "n_rows" in s else "n_rows"
        pack = "struct_pack(" + ", ".join([*map(quote_ident, s), f"{count_as} := __hr_n"]) + ")"
        items.append(f"coalesce(sum(__hr_n) FILTER (WHERE {where}), 0) AS __hr_u{2 * j}")
        # most duplicated first, ties by key: the same sample on every run and engine
        order = "row(" + ", ".join(["-__hr_n", *map(quote_ident, s)]) + ")"
        items.append(f"arg_min({pack}, {order}, {SAMPLE_ROWS}) FILTER (WHERE {where}) AS __hr_u{2 * j + 1}")
    cols = ", ".join(quote_ident(c) for c in every)
    if len(sets) == 1:
        nonnull = " AND ".join(f"{quote_ident(c)} IS NOT NULL" for c in sets[0])
        inner = (f"SELECT {cols}, count(*) AS __hr_n FROM {relation} AS {_ALIAS} "
                 f"WHERE {nonnull} GROUP BY {cols}")
    else:
        sets_sql = ", ".join("(" + ", ".join(map(quote_ident, s)) + ")" for s in sets)
        inner = (f"SELECT GROUPING({cols}) AS __hr_g, {cols}, count(*) AS __hr_n "
                 f"FROM {relation} AS {_ALIAS} GROUP BY GROUPING SETS ({sets_sql})")
    return f"(SELECT {', '.join(items)} FROM ({inner}) AS __hr_groups)"


def _figure(check: Check, relation: str, tables: Mapping[str, str]) -> str:
    """A query computing this check's figure alone (failing rows, newest value or metric)."""
    frm = f"FROM {relation} AS {_ALIAS}"
    if isinstance(check, Unique):
        return f"SELECT __hr_u0 FROM {_unique_sql([check.columns], relation)}"
    if isinstance(check, Relationships):
        join, fail = _join(check, tables[check.to], 0)
        return f"SELECT count(*) {frm} {join} WHERE {fail}"
    if isinstance(check, Freshness):
        return f"SELECT epoch_ns(max({quote_ident(check.column)})) {frm}"
    if isinstance(check, VolumeAnomaly) and not check.is_row_count:
        return f"SELECT CAST(({check.metric}) AS DOUBLE) {frm}"
    if isinstance(check, RowCount | VolumeAnomaly):
        return f"SELECT count(*) {frm}"
    return f"SELECT count(*) {frm} WHERE {_fail_predicate(check)}"


_IDENT = re.compile(r'"((?:[^"]|"")+)"|([A-Za-z_][A-Za-z0-9_$]*)')
_STRING_LITERAL = re.compile(r"'(?:[^']|'')*'")


def _mentioned(sql: str, columns: Collection[str]) -> list[str]:
    """Columns of the relation an expression names (identifiers outside string literals).

    A false match only widens the sample, so a plain scan of identifiers is enough.
    """
    by_lower = {c.lower(): c for c in columns}
    found = []
    for quoted, bare in _IDENT.findall(_STRING_LITERAL.sub(" ", sql)):
        name = quoted.replace('""', '"') if quoted else bare
        if name.lower() in by_lower:
            found.append(by_lower[name.lower()])
    return list(dict.fromkeys(found))


def _sample_agg(check: Check, flag: str, key: Sequence[str], columns: Collection[str] | None) -> str:
    """Up to 5 failing rows as a list of structs.

    Fields: the key plus the offending columns; for an expression, the columns it names when
    ``columns`` is known, else the whole row. Ordered by key when there is one (else by the
    sampled values), so reruns show the same rows; ``row(...)`` keeps rows whose key is NULL
    (arg_min skips NULL orders).
    """
    names = [*key, *check.columns_used()]
    if isinstance(check, Expression) and columns is not None:
        names += _mentioned(check.sql, columns)
    names = list(dict.fromkeys(names))
    whole_row = isinstance(check, Expression) and (columns is None or not names)
    pack = _ROW if whole_row else "struct_pack(" + ", ".join(f"{quote_ident(n)} := {quote_ident(n)}" for n in names) + ")"
    # without a key the sampled values order themselves: the same sample on every run and engine
    order = f"row({', '.join(map(quote_ident, key))})" if key else pack
    return f"arg_min({pack}, {order}, {SAMPLE_ROWS}) FILTER (WHERE {flag})"


_ROW = "__hr_row"


@dataclass
class _Statement:
    """The three parts of the audit statement, filled check by check.

    ``totals``: aggregates over every row (row count, freshness maxima, volume metrics);
    ``rows``: counts and samples over the rows that fail at least one row-level check, whose
    per-check flags ``flags`` are computed once per row below the aggregate. Why the split:
    an ``arg_min(...) FILTER`` over every row costs ~0.03 s per check per 10M rows even when
    nothing fails, while over the pre-filtered failing rows it costs nothing; the row count on
    Parquet comes from the file footers, so the totals part reads only what it aggregates.
    ``unique``: the key sets of unique checks, one GROUP BY scan for all.
    """

    totals: list[str]
    flags: list[str]
    rows: list[str]
    joins: list[str]
    unique: list[tuple[str, ...]]
    whole_row: bool = False

    def sql(self, relation: str) -> str:
        parts = [f"(SELECT {_aliased(self.totals, 't')} FROM {relation} AS {_ALIAS}) AS __hr_a"]
        if self.rows:
            extra = f", {_ALIAS} AS {_ROW}" if self.whole_row else ""
            flags = ", ".join(f"({f}) AS __hr_f{i}" for i, f in enumerate(self.flags))
            inner = f"SELECT *{extra}, {flags} FROM {relation} AS {_ALIAS}"
            if self.joins:
                inner += " " + " ".join(self.joins)
            failing = " OR ".join(f"__hr_f{i}" for i in range(len(self.flags)))
            parts.append(f"(SELECT {_aliased(self.rows, 'c')} FROM ({inner}) AS __hr_x WHERE {failing}) AS __hr_b")
        if self.unique:
            parts.append(f"{_unique_sql(self.unique, relation)} AS __hr_u")
        return f"SELECT * FROM {', '.join(parts)}"

    @property
    def scans(self) -> int:
        return 1 + bool(self.rows) + bool(self.unique)


def _aliased(items: Sequence[str], prefix: str) -> str:
    return ", ".join(f"{e} AS __hr_{prefix}{i}" for i, e in enumerate(items))


def compile_checks(
    checks: Sequence[Check],
    *,
    relation: str,
    tables: Mapping[str, str],
    key: Sequence[str] = (),
    columns: Collection[str] | None = None,
    table: str | None = None,
) -> CheckPlan:
    """Compile all of a table's checks into one statement over ``relation``.

    ``relation`` is how SQL names the audited rows (a view, ``{staged}``, ``read_parquet(...)``);
    ``tables`` maps each relationships target to a relation the caller has bound (e.g. a view
    over the target's current version). ``key`` columns (say the merge keys) head every
    failing sample so a row can be found again. ``columns`` (the relation's column names, as
    given to ``validate_checks``) lets an expression's sample hold just the columns it names
    instead of the whole row. ``table`` only names the table in errors.
    """
    for check in checks:
        if isinstance(check, Relationships) and check.to not in tables:
            raise DefinitionError(
                f"check {check.name!r}: no relation is bound for table {check.to!r}",
                hint="pass tables={'<table>': '<view over its current version>'} to compile_checks",
                table=table,
            )
    key = tuple(key)
    st = _Statement(totals=["count(*)"], flags=[], rows=[], joins=[], unique=[])
    # where each check's figure and sample sit: (part, index within the part)
    slots: list[tuple[Check, tuple[str, int] | None, tuple[str, int] | None]] = []
    for check in checks:
        if isinstance(check, Unique):
            # one grouping set per column SET: (a, b) and (b, a) would share a GROUPING() id
            sets = [frozenset(s) for s in st.unique]
            if frozenset(check.columns) not in sets:
                st.unique.append(check.columns)
                sets.append(frozenset(check.columns))
            j = sets.index(frozenset(check.columns))
            slots.append((check, ("u", 2 * j), ("u", 2 * j + 1)))
        elif isinstance(check, RowCount) or (isinstance(check, VolumeAnomaly) and check.is_row_count):
            slots.append((check, None, None))
        elif isinstance(check, Freshness | VolumeAnomaly):
            if isinstance(check, Freshness):
                st.totals.append(f"epoch_ns(max({quote_ident(check.column)}))")
            else:
                st.totals.append(f"CAST(({check.metric}) AS DOUBLE)")
            slots.append((check, ("t", len(st.totals) - 1), None))
        else:
            if isinstance(check, Relationships):
                join, predicate = _join(check, tables[check.to], len(st.joins))
                st.joins.append(join)
            else:
                predicate = _fail_predicate(check)
            flag = f"__hr_f{len(st.flags)}"
            st.flags.append(predicate)
            sample = _sample_agg(check, flag, key, columns)
            st.whole_row = st.whole_row or _ROW in sample
            st.rows += [f"count(*) FILTER (WHERE {flag})", sample]
            slots.append((check, ("c", len(st.rows) - 2), ("c", len(st.rows) - 1)))
    offset = {"t": 0, "c": len(st.totals), "u": len(st.totals) + len(st.rows)}
    compiled = tuple(
        CompiledCheck(
            check=check,
            column=None if figure is None else offset[figure[0]] + figure[1],
            sample=None if sample is None else offset[sample[0]] + sample[1],
            standalone_sql=_figure(check, relation, tables),
            probe_sql=_figure(check, _empty(relation), {t: _empty(r) for t, r in tables.items()}),
        )
        for check, figure, sample in slots
    )
    return CheckPlan(
        sql=st.sql(relation), checks=compiled, relation=relation, scans=st.scans, key=key, table=table
    )


def _empty(relation: str) -> str:
    """The relation's columns with no rows: SQL over it binds (and fails to) like the real one."""
    return f"(SELECT * FROM {relation} LIMIT 0)"


# ---- evaluation ------------------------------------------------------------------------------


def evaluate(
    plan: CheckPlan,
    run_sql: RunSql,
    *,
    history: Mapping[str, Sequence[float]] | None = None,
    now: datetime | None = None,
) -> list[CheckResult]:
    """Run the plan and judge every check.

    ``run_sql`` runs one statement and returns its rows as tuples. ``history`` maps a
    volume_anomaly check's name to earlier runs' metric values, oldest first. ``now`` (UTC
    when naive) is the reference time of freshness checks. A check whose SQL cannot run
    raises DefinitionError naming it.
    """
    if not plan.checks:
        return []
    try:
        row = run_sql(plan.sql)[0]
    except Exception as exc:
        blamed = _blame(plan, run_sql)
        if blamed is None:
            raise
        raise blamed from exc
    total = int(row[0] or 0)
    at = _as_utc(now or datetime.now(UTC))
    results = []
    for cc in plan.checks:
        figure = row[cc.column] if cc.column is not None else total
        result = _judge(cc.check, figure, total, (history or {}).get(cc.check.name, ()), at)
        if cc.sample is not None and row[cc.sample]:
            result = replace(result, sample=[_jsonable(r) for r in row[cc.sample]])
        results.append(result)
    return results


def preflight(plan: CheckPlan, run_sql: RunSql) -> None:
    """Bind every check's SQL over zero rows; raise DefinitionError naming the first that
    does not bind (unknown column in an expression, bad metric, mismatched join types).

    An error reading the relation itself is raised as it is: no check is to blame for it.
    """
    run_sql(f"SELECT * FROM {plan.relation} LIMIT 0")
    if plan.key:
        try:
            run_sql(f"SELECT {', '.join(map(quote_ident, plan.key))} FROM {_empty(plan.relation)}")
        except Exception as exc:
            where = f"table {plan.table!r}: " if plan.table else ""
            raise DefinitionError(
                f"{where}sample key {list(plan.key)} cannot be read: {engine_message(exc)}",
                hint="key= names columns of the audited rows (e.g. the merge keys)",
                table=plan.table,
            ) from exc
    for cc in plan.checks:
        try:
            run_sql(cc.probe_sql)
        except Exception as exc:
            raise _definition_error(plan, cc.check, exc) from exc


def _blame(plan: CheckPlan, run_sql: RunSql) -> DefinitionError | None:
    """Find the check behind a failed main query: first one that does not bind; else, when
    the rows themselves read fine, the one that fails on them (e.g. a CAST in an expression).
    None when no check is to blame (the relation itself is unreadable)."""
    try:
        preflight(plan, run_sql)
    except DefinitionError as blamed:
        return blamed
    except Exception:
        return None
    try:
        run_sql(f"SELECT count(*) FROM {plan.relation}")
    except Exception:
        return None
    for cc in plan.checks:
        try:
            run_sql(cc.standalone_sql)
        except Exception as inner:
            return _definition_error(plan, cc.check, inner)
    return None


def _definition_error(plan: CheckPlan, check: Check, exc: BaseException) -> DefinitionError:
    hints = {
        "expression": "the expression is a SQL predicate over the table's columns, e.g. 'amount >= 0'",
        "volume_anomaly": "metric is 'row_count' or an aggregate of the table's columns, e.g. 'sum(amount)'",
        "relationships": "the target column must exist and be comparable with the checked column",
    }
    where = f"table {plan.table!r}: " if plan.table else ""
    return DefinitionError(
        f"{where}check {check.name!r} cannot run: {engine_message(exc)}",
        hint=hints.get(check.kind, "check the columns and values the check names"),
        table=plan.table,
    )


def _as_utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _judge(check: Check, figure: Any, total: int, history: Sequence[float], now: datetime) -> CheckResult:
    if isinstance(check, RowCount):
        return _judge_row_count(check, total)
    if isinstance(check, Freshness):
        return _judge_freshness(check, figure, total, now)
    if isinstance(check, VolumeAnomaly):
        return _judge_volume(check, figure, total, history)
    return _judge_rows(check, int(figure or 0), total)


def _result(check: Check, *, passed: bool, failing: int, total: int, message: str,
            ratio: float | None = None, metric: float | None = None) -> CheckResult:
    return CheckResult(
        name=check.name, kind=check.kind, severity=check.severity, passed=passed,
        failing=failing, total=total, ratio=ratio, sample=[], message=message, metric=metric,
    )


def _judge_rows(check: Check, failing: int, total: int) -> CheckResult:
    ratio = failing / total if total else None
    passed = failing <= check.max_failures or (
        check.max_fail_ratio is not None and ratio is not None and ratio <= check.max_fail_ratio
    )
    if failing == 0:
        message = "ok"
    else:
        message = f"{failing:,} of {total:,} rows ({_pct(ratio)}) {_what(check)}"
        if passed:
            limits = [f"max_failures={check.max_failures}"]
            if check.max_fail_ratio is not None:
                limits.append(f"max_fail_ratio={check.max_fail_ratio}")
            message += f"; tolerated ({' or '.join(limits)})"
    return _result(check, passed=passed, failing=failing, total=total, message=message, ratio=ratio)


def _what(check: Check) -> str:
    """What the failing rows did wrong, for the report line."""
    if isinstance(check, NotNull):
        return f"have NULL in {', '.join(check.columns)}"
    if isinstance(check, Unique):
        return f"share a duplicated ({', '.join(check.columns)})"
    if isinstance(check, AcceptedValues):
        shown = ", ".join(map(repr, check.values[:6])) + (", ..." if len(check.values) > 6 else "")
        return f"have {check.column} outside [{shown}]"
    if isinstance(check, Range):
        lo = "-inf" if check.min is None else str(check.min)
        hi = "+inf" if check.max is None else str(check.max)
        return f"have {check.column} outside [{lo}, {hi}]"
    if isinstance(check, Regex):
        return f"have {check.column} not matching {check.pattern!r}"
    if isinstance(check, Relationships):
        return f"have {check.column} not found in {check.to}.{check.field}"
    if isinstance(check, Expression):
        return f"do not satisfy {check.sql}"
    return "fail"


def _pct(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2%}"


def _judge_row_count(check: RowCount, total: int) -> CheckResult:
    if check.min is not None and total < check.min:
        message, passed = f"{total:,} rows, below min {check.min:,}", False
    elif check.max is not None and total > check.max:
        message, passed = f"{total:,} rows, above max {check.max:,}", False
    else:
        message, passed = f"{total:,} rows", True
    return _result(check, passed=passed, failing=0 if passed else 1, total=total, message=message)


def _judge_freshness(check: Freshness, newest_ns: Any, total: int, now: datetime) -> CheckResult:
    if newest_ns is None:
        why = "no rows" if total == 0 else f"every {check.column} is NULL"
        return _result(check, passed=False, failing=1, total=total,
                       message=f"{why}: cannot tell how fresh {check.column} is")
    newest = _EPOCH + timedelta(microseconds=int(newest_ns) // 1000)
    age = now - newest
    limit = format_duration(check.max_age)
    shown = newest.strftime("%Y-%m-%d %H:%M:%S") + "Z"
    if age <= check.max_age:
        message = f"newest {check.column} {shown} is {_human(age)} old (max {limit})"
        return _result(check, passed=True, failing=0, total=total, message=message)
    message = f"newest {check.column} {shown} is {_human(age)} old, older than {limit}"
    return _result(check, passed=False, failing=1, total=total, message=message)


def _human(age: timedelta) -> str:
    """An age as '3h 05m' / '2d 4h' / '45s'; 'in the future' for negative ages."""
    seconds = int(age.total_seconds())
    if seconds < 0:
        return "0s (in the future)"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def _judge_volume(check: VolumeAnomaly, figure: Any, total: int, history: Sequence[float]) -> CheckResult:
    value = None if figure is None else float(figure)
    past = [float(v) for v in history if v is not None and math.isfinite(float(v))]
    if len(past) < check.min_history:
        message = f"{check.metric} = {_num(value)}; not enough history ({len(past)} of {check.min_history})"
        return _result(check, passed=True, failing=0, total=total, message=message, metric=value)
    if value is None or not math.isfinite(value):
        return _result(check, passed=False, failing=1, total=total,
                       message=f"{check.metric} is NULL on this result", metric=value)
    if check.method == "zscore":
        mean, stdev = statistics.fmean(past), statistics.stdev(past)
        score = (value - mean) / stdev if stdev else (0.0 if value == mean else math.inf)
        passed = abs(score) <= check.threshold
        detail = (f"z = {score:+.2f} vs mean {_num(mean)}, stdev {_num(stdev)} over {len(past)} runs "
                  f"(threshold {check.threshold:g})")
    else:
        previous = past[-1]
        change = abs(value - previous) / abs(previous) if previous else (0.0 if value == 0 else math.inf)
        passed = change <= check.threshold
        detail = f"change {change:.1%} vs previous {_num(previous)} (threshold {check.threshold:.0%})"
    message = f"{check.metric} = {_num(value)}: {detail}"
    return _result(check, passed=passed, failing=0 if passed else 1, total=total,
                   message=message, metric=value)


def _num(value: float | None) -> str:
    if value is None:
        return "NULL"
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.4g}"


def _jsonable(value: Any) -> Any:
    """Sample values made JSON-safe: numbers stay numbers, nested values recurse, the rest is
    text (Decimal, timestamps, UUIDs ...), so the caller can store samples as they are."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


# ---- verdicts and report ---------------------------------------------------------------------


def breaker_tripped(results: Iterable[CheckResult]) -> list[CheckResult]:
    """The failed checks of severity 'error': non-empty means the table must not be published."""
    return [r for r in results if not r.passed and r.severity == "error"]


def status_of(result: CheckResult) -> str:
    """PASS, FAIL (error severity) or WARN (failed, warn severity)."""
    if result.passed:
        return "PASS"
    return "FAIL" if result.severity == "error" else "WARN"


def format_report(results: Sequence[CheckResult]) -> str:
    """One line per check: status, name, failing/total, message, and a failing sample."""
    if not results:
        return "no checks"
    width = max(len(r.name) for r in results)
    lines = []
    for r in results:
        counts = f"{r.failing:,}/{r.total:,}" if r.ratio is not None or r.kind in _ROW_KINDS else "-"
        line = f"{status_of(r):<4}  {r.name:<{width}}  {counts:>13}  {r.message}"
        if r.sample:
            line += f"  sample: {_sample_text(r.sample)}"
        lines.append(line)
    return "\n".join(lines)


_ROW_KINDS = {"not_null", "unique", "accepted_values", "range", "regex", "relationships", "expression"}


def _sample_text(sample: Sequence[Mapping[str, Any]], limit: int = 240) -> str:
    text = "; ".join(", ".join(f"{k}={v!r}" for k, v in row.items()) for row in sample)
    return text if len(text) <= limit else text[: limit - 3] + "..."


__all__ = [
    "CheckPlan",
    "CheckResult",
    "CompiledCheck",
    "breaker_tripped",
    "compile_checks",
    "evaluate",
    "format_report",
    "preflight",
    "status_of",
    "validate_checks",
]
