"""Quality checks: the typed spec, header config, validation, compilation and evaluation on
real DuckDB, plus a property test against a naive Python computation."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import duckdb
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headrace.errors import DefinitionError
from headrace.quality.checks import (
    CheckResult,
    breaker_tripped,
    compile_checks,
    evaluate,
    format_report,
    preflight,
    validate_checks,
)
from headrace.spec import checks as check
from headrace.spec.checks import checks_from_config, format_duration, parse_duration

NOW = datetime(2024, 1, 2, 12, 0, tzinfo=UTC)

ORDERS = """
CREATE TABLE orders AS SELECT * FROM (VALUES
    (1, 10,   'new',  5.0::DOUBLE, 'AB-1', TIMESTAMP '2024-01-02 11:00:00'),
    (2, 11,   'paid', -1.0, 'AB-2', TIMESTAMP '2024-01-02 10:00:00'),
    (3, NULL, 'paid', NULL, NULL,   NULL),
    (3, 12,   'lost', 50.0, 'ab-3', TIMESTAMP '2024-01-01 00:00:00'),
    (4, 99,   NULL,   20.0, 'AB-4', TIMESTAMP '2024-01-02 09:00:00')
) AS t(order_id, customer_id, status, amount, code, order_ts)
"""
CUSTOMERS = "CREATE TABLE customers AS SELECT * FROM (VALUES (10), (11), (12), (NULL)) AS t(customer_id)"


@pytest.fixture
def con():
    c = duckdb.connect()
    c.execute(ORDERS)
    c.execute(CUSTOMERS)
    yield c
    c.close()


def run_sql(c: duckdb.DuckDBPyConnection):
    return lambda sql: c.execute(sql).fetchall()


def audit(c, checks, relation="orders", *, history=None, now=NOW, key=("order_id",), columns=None):
    plan = compile_checks(checks, relation=relation, tables={"bronze.customers": "customers"},
                          key=key, columns=columns, table="silver.orders")
    return evaluate(plan, run_sql(c), history=history, now=now)


def one(c, chk, **kw) -> CheckResult:
    (result,) = audit(c, [chk], **kw)
    return result


# ---- spec: constructors, names, validation --------------------------------------------------


def test_default_names_are_readable_and_stable():
    assert check.not_null("a", "b").name == "not_null(a, b)"
    assert check.not_null(["a", "b"]).name == "not_null(a, b)"
    assert check.unique("order_id").name == "unique(order_id)"
    assert check.range("amount", min=0).name == "range(amount, min=0)"
    assert check.range("d", min=date(2024, 1, 1), max=date(2024, 2, 1)).name == "range(d, min=2024-01-01, max=2024-02-01)"
    assert check.accepted_values("s", ["a"]).name == "accepted_values(s)"
    assert check.regex("s", "[a-z]+").name == "regex(s)"
    assert check.relationships("c", to="bronze.customers").name == "relationships(c, to=bronze.customers)"
    assert check.relationships("c", to="customers", field="id").name == "relationships(c, to=main.customers.id)"
    assert check.row_count(min=1, max=9).name == "row_count(min=1, max=9)"
    assert check.freshness("ts", max_age="120m").name == "freshness(ts, max_age=2h)"
    assert check.freshness("ts", max_age=timedelta(minutes=90)).name == "freshness(ts, max_age=90m)"
    assert check.expression("a > 0", name="positive").name == "positive"
    assert check.volume_anomaly().name == "volume_anomaly(row_count)"
    assert check.volume_anomaly(metric="sum(amount)").name == "volume_anomaly(sum(amount))"
    assert check.unique("a", name="pk").name == "pk"


def test_checks_are_frozen_and_hashable():
    a, b = check.range("x", min=0), check.range("x", min=0)
    assert a == b and hash(a) == hash(b)
    with pytest.raises(AttributeError):
        a.min = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("build", "pattern"),
    [
        (lambda: check.regex("s", "(a"), "invalid regular expression"),
        (lambda: check.regex("s", "a(?=b)"), "lookaround"),
        (lambda: check.regex("s", r"(a)\1"), "backreference"),
        (lambda: check.not_null("a", severity="eror"), "Did you mean 'error'"),
        (lambda: check.freshness("ts", max_age="2 fortnights"), "cannot read '2 fortnights'"),
        (lambda: check.freshness("ts", max_age="0s"), "positive duration"),
        (lambda: check.freshness("ts", max_age=7200), "positive duration"),
        (lambda: check.range("a", min=5, max=1), "min=5 is greater than max=1"),
        (lambda: check.range("a", min=1, max="z"), "different types"),
        (lambda: check.range("a"), "give min=, max= or both"),
        (lambda: check.range("a", min=True), "not a number"),
        (lambda: check.row_count(min=10, max=1), "greater than max"),
        (lambda: check.row_count(), "give min=, max= or both"),
        (lambda: check.row_count(min=-1), "whole number"),
        (lambda: check.not_null(), "at least one column"),
        (lambda: check.unique("a", "a"), "named twice"),
        (lambda: check.not_null(""), "non-empty column name"),
        (lambda: check.accepted_values("s", "abc"), "must be a list"),
        (lambda: check.accepted_values("s", [None]), "no values given"),
        (lambda: check.accepted_values("s", [object()]), "not a plain scalar"),
        (lambda: check.expression("a > 0", name=""), "needs a name"),
        (lambda: check.expression("  ", name="x"), "non-empty SQL"),
        (lambda: check.volume_anomaly(method="zscor"), "Did you mean 'zscore'"),
        (lambda: check.volume_anomaly(threshold=0), "positive number"),
        (lambda: check.volume_anomaly(min_history=1), ">= 2"),
        (lambda: check.volume_anomaly(metric=""), "metric must be"),
        (lambda: check.not_null("a", max_failures=-1), "max_failures"),
        (lambda: check.not_null("a", max_fail_ratio=1.5), "max_fail_ratio"),
        (lambda: check.row_count(min=1, max_failures=3), "row-level checks only"),
        (lambda: check.freshness("ts", max_age="1h", max_fail_ratio=0.1), "row-level checks only"),
        (lambda: check.not_null("a", severty="warn"), "Did you mean 'severity'"),
        (lambda: check.relationships("c", to="not a table"), "invalid table name"),
    ],
)
def test_constructor_errors(build, pattern):
    with pytest.raises(DefinitionError, match=re.escape(pattern)):
        build()


def test_constructor_errors_carry_a_hint():
    with pytest.raises(DefinitionError) as info:
        check.not_null("a", severity="fatal")
    assert info.value.hint and "'error'" in info.value.hint


def test_accepted_values_drops_null_and_relationships_normalises_names():
    assert check.accepted_values("s", ["a", None]).values == ("a",)
    rel = check.relationships("customer_id", to="Customers")
    assert (rel.to, rel.field) == ("main.customers", "customer_id")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("2h", 7200), ("30m", 1800), ("1d", 86400), ("90s", 90), ("1h30m", 5400), ("1w", 604800), ("1.5h", 5400)],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == timedelta(seconds=seconds)


def test_format_duration_is_the_shortest_exact_form():
    assert [format_duration(timedelta(seconds=s)) for s in (7200, 5400, 86400 * 2, 61, 0.5)] == [
        "2h", "90m", "2d", "61s", "0.5s"]


# ---- spec: SQL model header config ----------------------------------------------------------

HEADER = [
    {"unique": ["order_id"]},
    {"not_null": ["a", "b"], "severity": "warn"},
    {"range": "amount", "min": 0},
    {"accepted_values": "status", "values": ["a", "b"]},
    {"relationships": "customer_id", "to": "bronze.customers"},
    {"freshness": "order_ts", "max_age": "2h"},
    {"row_count": {"min": 1}},
    {"expression": "amount >= 0", "name": "non_negative"},
    {"volume_anomaly": {"method": "pct_change", "threshold": 0.5}},
    {"regex": "code", "pattern": "[A-Z]+-[0-9]+", "max_failures": 2},
    {"unique": "id"},
    {"range": {"column": "amount", "max": 10}},
]


def test_checks_from_config_builds_every_kind():
    built = checks_from_config(HEADER, where="models/orders.sql")
    assert [c.name for c in built] == [
        "unique(order_id)", "not_null(a, b)", "range(amount, min=0)", "accepted_values(status)",
        "relationships(customer_id, to=bronze.customers)", "freshness(order_ts, max_age=2h)",
        "row_count(min=1)", "non_negative", "volume_anomaly(row_count)", "regex(code)", "unique(id)",
        "range(amount, max=10)",
    ]
    assert built[1].severity == "warn"
    assert built[8].method == "pct_change" and built[8].threshold == 0.5
    assert built[9].max_failures == 2


@pytest.mark.parametrize(
    ("items", "pattern"),
    [
        ([{"uniqe": ["a"]}], "models/x.sql: checks[0]: no check kind in ['uniqe']. Did you mean 'unique'?"),
        ([{"unique": "a"}, {"range": "a", "mn": 0}], "checks[1]: unknown option 'mn' for range. Did you mean 'min'?"),
        ([{"not_null": "a", "severity": "eror"}], "Did you mean 'error'"),
        ([{"unique": "a", "not_null": "a"}], "one check per table"),
        (["unique"], "each check must be a table"),
        ([{"accepted_values": "s"}], "missing values"),
        ([{"regex": "s"}], "missing pattern"),
        ([{"relationships": "c"}], "missing to"),
        ([{"freshness": "ts"}], "missing max_age"),
        ([{"expression": "a > 0"}], "missing name"),
        ([{"row_count": {"min": 1}, "min": 2}], "given twice"),
        ([{"row_count": 5}], "takes options only"),
        ([{"range": {"min": 0}}], "missing its column"),
        ([{"freshness": "ts", "max_age": "soon"}], "checks[0]: freshness(ts): cannot read 'soon'"),
        ([{"volume_anomaly": {"methd": "zscore"}}], "Did you mean 'method'?"),
    ],
)
def test_checks_from_config_errors_name_where_and_key(items, pattern):
    with pytest.raises(DefinitionError, match=re.escape(pattern)) as info:
        checks_from_config(items, where="models/x.sql")
    assert str(info.value).startswith("models/x.sql: checks[")


def test_checks_from_config_rejects_a_non_list():
    with pytest.raises(DefinitionError, match="checks must be a list"):
        checks_from_config({"unique": "a"}, where="models/x.sql")  # type: ignore[arg-type]


# ---- validation against the result's schema --------------------------------------------------

TYPES = {"order_id": "BIGINT", "customer_id": "INTEGER", "status": "VARCHAR", "amount": "DECIMAL(12,2)",
         "code": "VARCHAR", "order_ts": "TIMESTAMP WITH TIME ZONE", "day": "DATE"}


def validate(checks, known=("bronze.customers",)):
    validate_checks(checks, table="silver.orders", columns=TYPES, known_tables=known)


def test_validate_accepts_good_checks():
    validate([
        check.not_null("ORDER_ID"), check.unique("order_id", "day"), check.range("amount", min=0),
        check.range("day", min=date(2024, 1, 1)), check.range("order_ts", max="2030-01-01"),
        check.accepted_values("status", ["a"]), check.regex("order_id", "[0-9]+"),
        check.relationships("customer_id", to="bronze.customers"),
        check.freshness("order_ts", max_age="1h"), check.freshness("day", max_age="2d"),
        check.expression("amount > 0", name="pos"), check.volume_anomaly(), check.row_count(min=1),
    ])


@pytest.mark.parametrize(
    ("chk", "pattern"),
    [
        (check.not_null("amout"), "check 'not_null(amout)': column 'amout' is not in the result. Did you mean 'amount'?"),
        (check.relationships("customer_id", to="bronze.customer"), "table 'bronze.customer' is unknown. Did you mean 'bronze.customers'?"),
        (check.freshness("status", max_age="1h"), "column 'status' is VARCHAR, not a date or timestamp"),
        (check.range("amount", min="0"), "'0' cannot be compared with column 'amount'"),
        (check.range("status", min=1), "cannot be compared with column 'status'"),
        (check.accepted_values("customer_id", ["a"]), "cannot be compared"),
        (check.accepted_values("status", [1, 2]), "cannot be compared"),
    ],
)
def test_validate_errors(chk, pattern):
    with pytest.raises(DefinitionError, match=re.escape(pattern)) as info:
        validate([chk])
    assert "table 'silver.orders'" in str(info.value)
    assert info.value.table == "silver.orders"


def test_validate_rejects_duplicate_names():
    with pytest.raises(DefinitionError, match="declared twice"):
        validate([check.unique("order_id"), check.unique("order_id", severity="warn")])


def test_validate_checks_relationship_field_when_target_columns_are_known():
    known = {"bronze.customers": {"id": "INTEGER"}}
    with pytest.raises(DefinitionError, match=re.escape("'bronze.customers' has no column 'customer_id'")) as info:
        validate([check.relationships("customer_id", to="bronze.customers")], known=known)
    assert "columns of bronze.customers: id" in (info.value.hint or "")
    validate([check.relationships("customer_id", to="bronze.customers", field="id")], known=known)


# ---- evaluation: every kind passing and failing ----------------------------------------------


@pytest.mark.parametrize(
    ("chk", "failing"),
    [
        (check.not_null("order_id"), 0),
        (check.not_null("customer_id"), 1),
        (check.not_null("customer_id", "amount", "status"), 2),  # a row with several NULLs counts once
        (check.unique("customer_id"), 0),  # the NULL customer is not a duplicate
        (check.unique("order_id"), 2),  # both rows of the duplicated group fail
        (check.unique("order_id", "status"), 0),
        (check.accepted_values("status", ["new", "paid"]), 1),  # NULL status does not fail
        (check.accepted_values("status", ["new", "paid", "lost"]), 0),
        (check.range("amount", min=0), 1),
        (check.range("amount", min=0, max=20), 2),  # bounds are inclusive: 20.0 passes
        (check.range("amount", max=100), 0),
        (check.range("order_ts", min=datetime(2024, 1, 2)), 1),
        (check.regex("code", "[A-Z]{2}-[0-9]"), 1),
        (check.regex("code", "[A-Z]{2}"), 4),  # a full match is required
        (check.regex("order_id", "[0-3]"), 1),  # non-string columns are matched as text
        (check.relationships("customer_id", to="bronze.customers"), 1),  # 99; NULL does not fail
        (check.expression("amount >= 0", name="non_negative"), 1),  # NULL amount does not fail
        (check.expression("order_id < 10", name="small"), 0),
    ],
)
def test_row_level_counts(con, chk, failing):
    result = one(con, chk)
    assert (result.failing, result.total) == (failing, 5)
    assert result.passed is (failing == 0)
    assert result.ratio == pytest.approx(failing / 5)
    assert result.kind == chk.kind and result.name == chk.name
    assert (result.message == "ok") is (failing == 0)
    assert len(result.sample) == failing if chk.kind != "unique" else len(result.sample) == (1 if failing else 0)


def test_relationships_to_a_field_of_another_name(con):
    con.execute("CREATE TABLE cust2 AS SELECT customer_id AS id FROM customers")
    plan = compile_checks([check.relationships("customer_id", to="cust", field="id")],
                          relation="orders", tables={"main.cust": "cust2"})
    (result,) = evaluate(plan, run_sql(con))
    assert result.failing == 1 and result.sample == [{"customer_id": 99}]


def test_several_unique_checks_share_one_grouping_scan(con):
    checks = [check.unique("order_id"), check.unique("customer_id"), check.unique("status"),
              check.unique("order_id", "status"), check.unique("order_id", name="pk_again", severity="warn"),
              check.unique("status", "order_id")]
    plan = compile_checks(checks, relation="orders", tables={})
    assert plan.sql.count("GROUPING SETS") == 1 and plan.scans == 2
    results = evaluate(plan, run_sql(con))
    assert [r.failing for r in results] == [2, 0, 2, 0, 2, 0]
    assert results[0].sample == [{"order_id": 3, "n_rows": 2}]
    assert results[2].sample == [{"status": "paid", "n_rows": 2}]


def test_the_whole_audit_is_one_statement(con):
    calls = []

    def counting(sql):
        calls.append(sql)
        return con.execute(sql).fetchall()

    checks = [check.not_null("customer_id"), check.unique("order_id"), check.range("amount", min=0),
              check.relationships("customer_id", to="bronze.customers"), check.row_count(min=1),
              check.freshness("order_ts", max_age="1h"), check.volume_anomaly(metric="sum(amount)")]
    plan = compile_checks(checks, relation="orders", tables={"bronze.customers": "customers"})
    results = evaluate(plan, counting, now=NOW)
    assert len(calls) == 1 and plan.scans == 3
    assert [r.passed for r in results] == [False, False, False, False, True, True, True]


def test_row_count(con):
    assert one(con, check.row_count(min=1, max=5)).passed
    low = one(con, check.row_count(min=6))
    assert (low.passed, low.failing, low.total, low.ratio) == (False, 1, 5, None)
    assert "below min 6" in low.message
    assert "above max 4" in one(con, check.row_count(max=4)).message


# ---- thresholds and severities ---------------------------------------------------------------


def test_max_failures_and_max_fail_ratio(con):
    chk = check.not_null("customer_id", "amount", "status")  # 2 of 5 rows fail
    assert not one(con, chk).passed
    tolerated = one(con, check.not_null("customer_id", "amount", "status", max_failures=2))
    assert tolerated.passed and "tolerated (max_failures=2)" in tolerated.message
    assert tolerated.sample  # tolerated failures still come with a sample
    assert not one(con, check.not_null("customer_id", "amount", "status", max_failures=1)).passed
    assert one(con, check.not_null("customer_id", "amount", "status", max_fail_ratio=0.4)).passed
    assert not one(con, check.not_null("customer_id", "amount", "status", max_fail_ratio=0.39)).passed


def test_empty_result_has_no_ratio(con):
    con.execute("CREATE TABLE empty AS SELECT * FROM orders LIMIT 0")
    result = one(con, check.not_null("order_id", max_fail_ratio=0.5), relation="empty")
    assert (result.passed, result.failing, result.total, result.ratio) == (True, 0, 0, None)


def test_warn_does_not_trip_the_breaker(con):
    results = audit(con, [check.not_null("customer_id", severity="warn"), check.unique("order_id"),
                          check.range("amount", min=0, severity="warn", name="amount_ok")])
    assert [r.passed for r in results] == [False, False, False]
    assert [r.name for r in breaker_tripped(results)] == ["unique(order_id)"]
    report = format_report(results).splitlines()
    assert report[0].startswith("WARN  not_null(customer_id)") and "1/5" in report[0]
    assert report[1].startswith("FAIL  unique(order_id)") and "sample: order_id=3, n_rows=2" in report[1]
    assert report[2].startswith("WARN  amount_ok")


def test_format_report_shows_pass_and_table_level_lines(con):
    results = audit(con, [check.unique("customer_id"), check.row_count(min=1)])
    lines = format_report(results).splitlines()
    assert lines[0].startswith("PASS  unique(customer_id)") and lines[0].endswith("0/5  ok")
    assert lines[1].startswith("PASS  row_count(min=1)") and "5 rows" in lines[1]
    assert format_report([]) == "no checks"


# ---- samples ---------------------------------------------------------------------------------


def test_samples_hold_key_and_offending_values(con):
    result = one(con, check.range("amount", min=0, max=20))
    assert result.sample == [{"order_id": 2, "amount": -1.0}, {"order_id": 3, "amount": 50.0}]
    nulls = one(con, check.not_null("customer_id"))
    assert nulls.sample == [{"order_id": 3, "customer_id": None}]
    no_key = one(con, check.accepted_values("status", ["new", "paid"]), key=())
    assert no_key.sample == [{"status": "lost"}]


def test_quoted_column_names():
    c = duckdb.connect()
    c.execute('CREATE TABLE t AS SELECT i AS "Order ID", CASE WHEN i > 2 THEN \'x\' END AS "my ""col""" FROM range(5) r(i)')
    checks = [check.not_null('my "col"'), check.unique("Order ID", 'my "col"'), check.range("Order ID", max=3)]
    validate_checks(checks, table="main.t", columns={"Order ID": "BIGINT", 'my "col"': "VARCHAR"}, known_tables=[])
    plan = compile_checks(checks, relation="t", tables={}, key=("Order ID",))
    results = evaluate(plan, run_sql(c))
    assert [r.failing for r in results] == [3, 0, 1]
    assert results[0].sample[0] == {"Order ID": 0, 'my "col"': None}


def test_samples_are_capped_at_five_and_ordered_by_key():
    c = duckdb.connect()
    c.execute("CREATE TABLE t AS SELECT 100 - i AS id, -i AS v FROM range(50) r(i)")
    plan = compile_checks([check.range("v", min=0)], relation="t", tables={}, key=("id",))
    (result,) = evaluate(plan, run_sql(c))
    assert result.failing == 49
    assert [row["id"] for row in result.sample] == [51, 52, 53, 54, 55]


def test_sample_values_are_json_safe(con):
    con.execute("CREATE TABLE d AS SELECT 1 AS id, 1.50::DECIMAL(5,2) AS amount, DATE '2024-01-01' AS day")
    plan = compile_checks([check.range("amount", max=1), check.range("day", max=date(2023, 1, 1))],
                          relation="d", tables={}, key=("id",))
    amount, day = evaluate(plan, run_sql(con))
    assert amount.sample == [{"id": 1, "amount": "1.50"}]
    assert day.sample == [{"id": 1, "day": "2024-01-01"}]


def test_expression_sample_holds_the_columns_it_names(con):
    chk = check.expression('amount >= 0 AND "code" <> \'status\'', name="e")
    cols = ["order_id", "customer_id", "status", "amount", "code", "order_ts"]
    narrow = one(con, chk, columns=cols)
    assert narrow.sample == [{"order_id": 2, "amount": -1.0, "code": "AB-2"}]
    whole = one(con, chk)  # columns unknown: the whole row
    assert whole.sample[0]["order_id"] == 2 and set(whole.sample[0]) == set(cols)
    assert whole.sample[0]["order_ts"] == "2024-01-02T10:00:00"


# ---- freshness -------------------------------------------------------------------------------


def test_freshness_naive_timestamps_are_utc(con):
    assert one(con, check.freshness("order_ts", max_age="1h")).passed  # newest 11:00, now 12:00
    late = one(con, check.freshness("order_ts", max_age="59m"))
    assert not late.passed and "1h 00m old, older than 59m" in late.message
    assert one(con, check.freshness("order_ts", max_age="1h"), now=datetime(2024, 1, 2, 12)).passed


def test_freshness_with_time_zone_and_dates():
    c = duckdb.connect()
    c.execute("SET TimeZone = 'America/New_York'")
    c.execute("CREATE TABLE t AS SELECT TIMESTAMPTZ '2024-01-02 11:00:00+00' AS ts, DATE '2024-01-02' AS d, "
              "TIMESTAMP_NS '2024-01-02 11:30:00' AS ns")
    plan = compile_checks([check.freshness("ts", max_age="1h"), check.freshness("ts", max_age="30m", name="tight"),
                           check.freshness("d", max_age="12h"), check.freshness("ns", max_age="30m")],
                          relation="t", tables={})
    results = evaluate(plan, run_sql(c), now=NOW)
    assert [r.passed for r in results] == [True, False, True, True]
    # an aware `now` in another zone is the same instant: 11:40 CET = 10:40Z, 20 min before ts
    berlin = datetime(2024, 1, 2, 11, 40, tzinfo=ZoneInfo("Europe/Berlin"))
    assert [r.passed for r in evaluate(plan, run_sql(c), now=berlin)] == [True, True, True, True]


def test_freshness_fails_on_empty_or_all_null(con):
    con.execute("CREATE TABLE empty AS SELECT * FROM orders LIMIT 0")
    empty = one(con, check.freshness("order_ts", max_age="1h"), relation="empty")
    assert not empty.passed and "no rows: cannot tell how fresh order_ts is" in empty.message
    con.execute("CREATE TABLE nulls AS SELECT NULL::TIMESTAMP AS order_ts")
    nulls = one(con, check.freshness("order_ts", max_age="1h"), relation="nulls", key=())
    assert not nulls.passed and "every order_ts is NULL" in nulls.message


# ---- volume anomaly --------------------------------------------------------------------------


def test_volume_not_enough_history_passes(con):
    result = one(con, check.volume_anomaly(), history={"volume_anomaly(row_count)": [5, 5, 5]})
    assert result.passed and "not enough history (3 of 5)" in result.message
    assert result.metric == 5.0
    assert "(0 of 5)" in one(con, check.volume_anomaly()).message


def test_volume_zscore(con):
    chk = check.volume_anomaly(threshold=3.0, min_history=3)
    ok = one(con, chk, history={chk.name: [4, 5, 6, 5]})
    assert ok.passed and ok.metric == 5.0 and "z = +0.00" in ok.message
    bad = one(con, chk, history={chk.name: [100, 101, 99, 100]})
    assert not bad.passed and bad.failing == 1 and bad.ratio is None
    flat = one(con, chk, history={chk.name: [7, 7, 7]})  # no spread: any change is an anomaly
    assert not flat.passed
    assert one(con, chk, history={chk.name: [5, 5, 5]}).passed


def test_volume_pct_change_and_metric_expression(con):
    chk = check.volume_anomaly(metric="sum(amount)", method="pct_change", threshold=0.5, min_history=1)
    total = 5.0 - 1.0 + 50.0 + 20.0
    ok = one(con, chk, history={chk.name: [1.0, total * 1.4]})  # only the previous value counts
    assert ok.passed and ok.metric == pytest.approx(total)
    bad = one(con, chk, history={chk.name: [total * 3]})
    assert not bad.passed and "change 66.7%" in bad.message
    assert not one(con, chk, history={chk.name: [0.0]}).passed


def test_volume_metric_null_fails_once_history_exists(con):
    con.execute("CREATE TABLE empty AS SELECT * FROM orders LIMIT 0")
    chk = check.volume_anomaly(metric="sum(amount)", min_history=2)
    result = one(con, chk, relation="empty", history={chk.name: [1.0, 2.0]})
    assert not result.passed and "is NULL" in result.message and result.metric is None


# ---- errors at compile and evaluation time ---------------------------------------------------


def test_relationships_target_must_be_bound():
    with pytest.raises(DefinitionError, match=re.escape("no relation is bound for table 'bronze.customers'")):
        compile_checks([check.relationships("c", to="bronze.customers")], relation="t", tables={})


@pytest.mark.parametrize(
    ("chk", "pattern"),
    [
        (check.expression("amout >= 0", name="non_negative"), "check 'non_negative' cannot run: Binder Error"),
        (check.volume_anomaly(metric="sum(nope)"), "check 'volume_anomaly(sum(nope))' cannot run"),
        (check.not_null("nope"), "check 'not_null(nope)' cannot run"),
        (check.expression("CAST(status AS INTEGER) > 0", name="castme"), "check 'castme' cannot run: Conversion Error"),
    ],
)
def test_a_check_that_cannot_run_is_named(con, chk, pattern):
    ok = check.not_null("order_id")
    with pytest.raises(DefinitionError, match=re.escape(pattern)) as info:
        audit(con, [ok, chk])
    assert "table 'silver.orders'" in str(info.value) and info.value.hint


def test_preflight_binds_without_reading(con):
    plan = compile_checks([check.expression("amout > 0", name="typo")], relation="orders", tables={})
    with pytest.raises(DefinitionError, match="check 'typo' cannot run"):
        preflight(plan, run_sql(con))
    preflight(compile_checks([check.expression("amount > 0", name="ok")], relation="orders", tables={}), run_sql(con))


def test_an_unreadable_relation_is_not_blamed_on_a_check(con):
    plan = compile_checks([check.not_null("a")], relation="no_such_table", tables={})
    with pytest.raises(duckdb.CatalogException):
        evaluate(plan, run_sql(con))


def test_a_bad_sample_key_is_named(con):
    with pytest.raises(DefinitionError, match=re.escape("sample key ['id'] cannot be read")):
        audit(con, [check.not_null("customer_id")], key=("id",))


def test_no_checks_run_nothing():
    plan = compile_checks([], relation="t", tables={})
    assert evaluate(plan, lambda sql: pytest.fail("ran SQL")) == []


# ---- on staged files, through the engine -----------------------------------------------------


def test_audit_of_staged_partitioned_files(tmp_path: Path):
    from headrace.engines.base import StageTarget
    from headrace.engines.duckdb_engine import DuckDBEngine
    from headrace.spec.tables import TableSpec

    engine = DuckDBEngine(threads=1)
    session = engine.session()
    try:
        rel = session.con.sql(
            "SELECT i AS id, CASE WHEN i = 3 THEN NULL ELSE i % 4 END AS v, DATE '2024-01-01' + (i % 2)::INT AS day "
            "FROM range(10) t(i)")
        spec = TableSpec(name="main.t", inputs={}, transform=None, partition_by=("day",))
        staged = session.stage(spec, rel, StageTarget(directory=tmp_path / "t", partition_by=("day",)))
        checks = [check.not_null("v"), check.unique("day", "v"), check.freshness("day", max_age="2d"),
                  check.expression("v < 3", name="small")]
        validate_checks(checks, table="main.t", columns={"id": "BIGINT", "v": "BIGINT", "day": "DATE"},
                        known_tables=["main.t"])
        plan = compile_checks(checks, relation="{staged}", tables={}, key=("id",), columns=["id", "v", "day"])
        results = evaluate(plan, lambda sql: session.staged_rows(staged, sql), now=datetime(2024, 1, 3))
    finally:
        session.close()
        engine.close()
    # v = 0 1 2 NULL 0 1 2 3 0 1, day alternating: (day, v) groups of 3, 3 and 2 rows repeat
    assert [(r.name, r.failing, r.passed) for r in results] == [
        ("not_null(v)", 1, False), ("unique(day, v)", 8, False), ("freshness(day, max_age=2d)", 0, True),
        ("small", 1, False)]
    assert results[0].sample == [{"id": 3, "v": None}]
    assert results[3].sample == [{"id": 7, "v": 3}]


# ---- property: compiled counts equal a naive computation ------------------------------------

ROWS = st.lists(
    st.tuples(
        st.integers(0, 6),
        st.one_of(st.none(), st.integers(-3, 3)),
        st.one_of(st.none(), st.sampled_from(["x", "y", "z", "xy", ""])),
    ),
    max_size=25,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=ROWS, parents=st.lists(st.one_of(st.none(), st.integers(-3, 3)), max_size=6),
       low=st.integers(-3, 3), span=st.integers(0, 4))
def test_compiled_counts_match_python(rows, parents, low, span):
    c = duckdb.connect()
    try:
        c.register("t_arrow", pa.table({
            "k": pa.array([r[0] for r in rows], pa.int64()),
            "a": pa.array([r[1] for r in rows], pa.int64()),
            "s": pa.array([r[2] for r in rows], pa.string()),
        }))
        c.register("p_arrow", pa.table({"a": pa.array(parents, pa.int64())}))
        high = low + span
        checks = [
            check.not_null("a"),
            check.not_null("a", "s"),
            check.unique("k"),
            check.unique("k", "s"),
            check.unique("a"),
            check.accepted_values("s", ["x", "y"]),
            check.range("a", min=low, max=high),
            check.range("a", min=low, name="lower_only"),
            check.regex("s", "[xy]+"),
            check.relationships("a", to="parents"),
            check.expression("a > k", name="a_gt_k"),
            check.row_count(min=3),
        ]
        plan = compile_checks(checks, relation="t_arrow", tables={"main.parents": "p_arrow"}, key=("k",))
        got = {r.name: r.failing for r in evaluate(plan, run_sql(c))}
    finally:
        c.close()

    def dupes(key):
        keys = [key(r) for r in rows]
        keys = [k for k in keys if None not in k]
        return sum(1 for k in keys if keys.count(k) > 1)

    parent_set = {p for p in parents if p is not None}
    want = {
        "not_null(a)": sum(r[1] is None for r in rows),
        "not_null(a, s)": sum(r[1] is None or r[2] is None for r in rows),
        "unique(k)": dupes(lambda r: (r[0],)),
        "unique(k, s)": dupes(lambda r: (r[0], r[2])),
        "unique(a)": dupes(lambda r: (r[1],)),
        "accepted_values(s)": sum(r[2] is not None and r[2] not in ("x", "y") for r in rows),
        f"range(a, min={low}, max={high})": sum(r[1] is not None and not low <= r[1] <= high for r in rows),
        "lower_only": sum(r[1] is not None and r[1] < low for r in rows),
        "regex(s)": sum(r[2] is not None and re.fullmatch("[xy]+", r[2]) is None for r in rows),
        "relationships(a, to=main.parents)": sum(r[1] is not None and r[1] not in parent_set for r in rows),
        "a_gt_k": sum(r[1] is not None and not r[1] > r[0] for r in rows),
        "row_count(min=3)": 0 if len(rows) >= 3 else 1,
    }
    assert got == want
