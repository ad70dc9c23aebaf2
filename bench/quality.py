"""Quality-check benchmark: headrace's compiled audit vs one hand-written DuckDB query.

Ten mixed checks (not_null x2, unique, accepted_values, range, regex, relationships,
expression, row_count, freshness) run over generated orders held as Parquet files. Timed in the
same process, alternating, each on a fresh DuckDB connection over ``read_parquet(...)``:

- headrace: the audit as the runner runs it: ``DESCRIBE``, ``validate_checks``,
  ``compile_checks``, ``evaluate`` (which also returns up to 5 failing rows per failing check);
- baseline: ONE hand-written SQL query computing the same failure counts, the way someone
  fluent in DuckDB would write it by hand.

Both must report identical failure counts (and the same row_count/freshness verdicts), else
the script exits with 2. Target (from the issue): headrace within 1.3x of the baseline.

    python bench/quality.py [--rows N] [--repeat K] [--work DIR] [--json]

The data (orders with a few planted failures for every row-level check, plus a customers
table) is generated once per row count under ``<work>/quality/`` and reused.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from _common import DEFAULT_WORK, fail, median, reset_dir, verdict

TARGET_RATIO = 1.3
CUSTOMERS = 50_000
FILE_ROWS = 1_000_000  # rows per generated Parquet file
START = datetime(2024, 1, 1)
SPAN_S = 30 * 86_400  # order timestamps cover 30 days
NOW = START + timedelta(seconds=SPAN_S + 3_600)  # an hour after the newest order
CURRENCIES = ("EUR", "USD", "GBP", "CHF")
SKU_PATTERN = "[A-Z]{3}-[0-9]{4}"

# Every row-level check fails on a few planted rows, so failing samples are part of the timing:
# duplicate order ids, NULL and unknown customers, a bad currency, negative amounts, lowercase
# SKUs and zero quantities, each on a sparse, different stride.
ORDERS_SQL = f"""
SELECT
    CASE WHEN i % 999983 = 7 THEN i - 1 ELSE i END AS order_id,
    CASE WHEN i % 10007 = 0 THEN NULL ELSE 1 + (i * 7919) % {CUSTOMERS + 40} END AS customer_id,
    1 + (i * 104729) % 2000 AS product_id,
    CAST(CASE WHEN i % 100003 = 0 THEN 0 ELSE 1 + i % 5 END AS INTEGER) AS quantity,
    CAST(((i * 31337) % 100000) / 100 - CASE WHEN i % 50021 = 0 THEN 2000 ELSE 0 END
         AS DECIMAL(12, 2)) AS amount,
    CASE WHEN i % 200003 = 0 THEN 'XXX' ELSE ['EUR', 'USD', 'GBP', 'CHF'][1 + i % 4] END AS currency,
    CASE WHEN i % 300007 = 0 THEN 'abc-' ELSE ['ABC-', 'DEF-', 'GHI-'][1 + i % 3] END
        || lpad(CAST(i % 10000 AS VARCHAR), 4, '0') AS sku,
    TIMESTAMP '{START:%Y-%m-%d %H:%M:%S}' + to_seconds((i * 7919) % {SPAN_S}) AS order_ts
FROM range({{lo}}, {{hi}}) AS t(i)
"""

CUSTOMERS_SQL = f"SELECT i AS customer_id, 'customer ' || i AS name FROM range(1, {CUSTOMERS + 1}) AS t(i)"


def sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


# ---- data ------------------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[quality] {message}", file=sys.stderr, flush=True)


def generate(folder: Path, rows: int) -> Path:
    """Orders as Parquet files of FILE_ROWS rows plus customers.parquet; once per row count."""
    if (folder / "done").exists():
        return folder
    import duckdb

    tmp = reset_dir(folder.with_name(folder.name + ".tmp"))
    (tmp / "orders").mkdir(parents=True)
    log(f"generating {rows:,} orders -> {folder}")
    t0 = time.perf_counter()
    con = duckdb.connect()
    for n, lo in enumerate(range(0, rows, FILE_ROWS)):
        query = ORDERS_SQL.format(lo=lo, hi=min(rows, lo + FILE_ROWS))
        path = tmp / "orders" / f"part-{n:04d}.parquet"
        con.execute(f"COPY ({query}) TO {sql_string(str(path))} (FORMAT parquet, COMPRESSION zstd)")
    con.execute(f"COPY ({CUSTOMERS_SQL}) TO {sql_string(str(tmp / 'customers.parquet'))} (FORMAT parquet)")
    con.close()
    (tmp / "done").write_text("ok\n")
    reset_dir(folder)
    tmp.replace(folder)
    log(f"  generated in {time.perf_counter() - t0:.1f}s")
    return folder


def connect(data: Path) -> Any:
    """A fresh connection with `orders` and `customers` views over the Parquet files."""
    import duckdb

    con = duckdb.connect()
    orders = sql_string(str(data / "orders" / "*.parquet"))
    con.execute(f"CREATE VIEW orders AS SELECT * FROM read_parquet({orders})")
    con.execute(f"CREATE VIEW customers AS SELECT * FROM read_parquet({sql_string(str(data / 'customers.parquet'))})")
    return con


# ---- the two sides ---------------------------------------------------------------------------


def headrace_checks() -> list[Any]:
    from headrace.spec import checks as check

    return [
        check.not_null("order_id"),
        check.not_null("customer_id"),
        check.unique("order_id"),
        check.accepted_values("currency", list(CURRENCIES)),
        check.range("amount", min=0, max=1000),
        check.regex("sku", SKU_PATTERN),
        check.relationships("customer_id", to="bronze.customers"),
        check.expression("quantity BETWEEN 1 AND 5", name="quantity_1_to_5"),
        check.row_count(min=1),
        check.freshness("order_ts", max_age="2h"),
    ]


def run_headrace(data: Path) -> dict[str, Any]:
    """The audit as the runner does it, on a fresh connection: read the column types,
    validate_checks, compile_checks, evaluate. Counts by check name."""
    from headrace.quality.checks import compile_checks, evaluate, validate_checks

    con = connect(data)
    try:
        t0 = time.perf_counter()
        types = {name: kind for name, kind, *_ in con.execute("DESCRIBE orders").fetchall()}
        checks = headrace_checks()
        validate_checks(checks, table="silver.orders", columns=types,
                        known_tables={"bronze.customers", "silver.orders"})
        plan = compile_checks(checks, relation="orders", tables={"bronze.customers": "customers"},
                              key=("order_id",), columns=list(types), table="silver.orders")
        results = evaluate(plan, lambda sql: con.execute(sql).fetchall(), now=NOW)
        seconds = time.perf_counter() - t0
    finally:
        con.close()
    counts = {r.name: (r.failing if r.kind not in ("row_count", "freshness") else r.passed) for r in results}
    counts["rows"] = results[0].total
    return {"seconds": seconds, "counts": counts, "scans": plan.scans,
            "failed": [r.name for r in results if not r.passed],
            "sampled": sum(1 for r in results if r.sample)}


BASELINE_SQL = f"""
SELECT
    count(*),
    count(*) FILTER (WHERE order_id IS NULL),
    count(*) FILTER (WHERE customer_id IS NULL),
    (SELECT coalesce(sum(n), 0) FROM (SELECT count(*) AS n FROM orders
        WHERE order_id IS NOT NULL GROUP BY order_id HAVING count(*) > 1)),
    count(*) FILTER (WHERE currency NOT IN ({', '.join(sql_string(c) for c in CURRENCIES)})),
    count(*) FILTER (WHERE amount < 0 OR amount > 1000),
    count(*) FILTER (WHERE NOT regexp_full_match(sku, {sql_string(SKU_PATTERN)})),
    count(*) FILTER (WHERE customer_id NOT IN (SELECT customer_id FROM customers)),
    count(*) FILTER (WHERE NOT (quantity BETWEEN 1 AND 5)),
    max(order_ts)
FROM orders
"""


def run_baseline(data: Path) -> dict[str, Any]:
    """The hand-written query on a fresh connection; row_count/freshness judged in Python."""
    con = connect(data)
    try:
        t0 = time.perf_counter()
        row = con.execute(BASELINE_SQL).fetchall()[0]
        seconds = time.perf_counter() - t0
    finally:
        con.close()
    total, nn_order, nn_cust, dupes, currency, amount, sku, orphans, quantity, newest = row
    counts = {
        "not_null(order_id)": nn_order,
        "not_null(customer_id)": nn_cust,
        "unique(order_id)": int(dupes),
        "accepted_values(currency)": currency,
        "range(amount, min=0, max=1000)": amount,
        "regex(sku)": sku,
        "relationships(customer_id, to=bronze.customers)": orphans,
        "quantity_1_to_5": quantity,
        "row_count(min=1)": total >= 1,
        "freshness(order_ts, max_age=2h)": newest is not None and NOW - newest <= timedelta(hours=2),
        "rows": total,
    }
    return {"seconds": seconds, "counts": counts}


# ---- orchestration ---------------------------------------------------------------------------


def measure(data: Path, repeat: int) -> dict[str, Any]:
    """One untimed warm-up of each side (page cache, imports), then REPEAT alternating runs."""
    run_baseline(data)
    run_headrace(data)
    hr_runs: list[dict[str, Any]] = []
    base_runs: list[dict[str, Any]] = []
    sides: list[tuple[list[dict[str, Any]], Callable[[Path], dict[str, Any]]]] = [
        (hr_runs, run_headrace), (base_runs, run_baseline)]
    for i in range(repeat):
        for runs, fn in sides if i % 2 == 0 else sides[::-1]:
            runs.append(fn(data))
        log(f"run {i + 1}/{repeat}: headrace {hr_runs[-1]['seconds']:.2f}s, baseline {base_runs[-1]['seconds']:.2f}s")
    got, want = hr_runs[-1]["counts"], base_runs[-1]["counts"]
    if got != want:
        diff = {k: (got.get(k), want.get(k)) for k in sorted(set(got) | set(want)) if got.get(k) != want.get(k)}
        fail(f"headrace and the hand-written query disagree (headrace, baseline): {diff}")
    return {"headrace": hr_runs, "baseline": base_runs, "counts": want}


def report(args: argparse.Namespace, data: Path, m: dict[str, Any]) -> dict[str, Any]:
    hr_s = median([r["seconds"] for r in m["headrace"]])
    base_s = median([r["seconds"] for r in m["baseline"]])
    ratio = hr_s / base_s
    return {
        "benchmark": "quality",
        "rows": args.rows,
        "repeat": args.repeat,
        "cpus": os.cpu_count(),
        "input_bytes": sum(p.stat().st_size for p in (data / "orders").glob("*.parquet")),
        "checks": len(headrace_checks()),
        "headrace": {
            "seconds": hr_s,
            "runs": [round(r["seconds"], 3) for r in m["headrace"]],
            "rows_per_s": args.rows / hr_s,
            "scans": m["headrace"][-1]["scans"],
            "checks_with_samples": m["headrace"][-1]["sampled"],
            "failed_checks": m["headrace"][-1]["failed"],
        },
        "baseline": {
            "seconds": base_s,
            "runs": [round(r["seconds"], 3) for r in m["baseline"]],
            "rows_per_s": args.rows / base_s,
        },
        "counts": {k: (v if not isinstance(v, bool) else ("pass" if v else "fail")) for k, v in m["counts"].items()},
        "ratio": ratio,
        "target_ratio": TARGET_RATIO,
        "pass": ratio <= TARGET_RATIO,
    }


def render(r: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 150)
    title = (f"quality: {r['checks']} checks over {r['rows']:,} orders in Parquet "
             f"({r['input_bytes'] / 2**20:,.0f} MB; median of {r['repeat']}, {r['cpus']} CPUs)")
    table = Table(title=title, title_justify="left")
    for name in ("side", "seconds", "rows/s", "runs (s)", "ratio hr/base", f"<= {TARGET_RATIO}x"):
        table.add_column(name, justify="left" if name in ("side", "runs (s)") else "right")
    hr, base = r["headrace"], r["baseline"]
    mark = f"[green]{verdict(True)}[/]" if r["pass"] else f"[red]{verdict(False)}[/]"
    table.add_row(f"headrace validate+compile+evaluate ({hr['scans']} scans, {hr['checks_with_samples']} samples)", f"{hr['seconds']:.2f}",
                  f"{hr['rows_per_s']:,.0f}", str(hr["runs"]), f"{r['ratio']:.2f}x", mark)
    table.add_row("hand-written single query", f"{base['seconds']:.2f}", f"{base['rows_per_s']:,.0f}",
                  str(base["runs"]), "1.00x", "")
    console.print(table)
    counts = Table(title="failure counts (identical on both sides)", title_justify="left")
    counts.add_column("check")
    counts.add_column("failing", justify="right")
    for name, value in r["counts"].items():
        counts.add_row(name, f"{value:,}" if isinstance(value, int) else str(value))
    console.print(counts)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/quality.py", description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="orders (default 10,000,000)")
    parser.add_argument("--repeat", type=int, default=3, help="timed repetitions; the median is reported (default 3)")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help=f"working folder (default {DEFAULT_WORK})")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of tables")
    args = parser.parse_args(argv)
    if args.rows < 1 or args.repeat < 1:
        parser.error("--rows and --repeat must be >= 1")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    data = generate(args.work.resolve() / "quality" / f"orders-{args.rows}r", args.rows)
    result = report(args, data, measure(data, args.repeat))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        render(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
