"""Generate the demo's raw data: orders (NDJSON per day), customers (CSV), products (Parquet),
and returns (CSV batches). Deterministic for a given --seed, so re-running gives the same
files and headrace finds nothing to do.

    python examples/demo/generate.py --out examples/demo/data --days 14 --orders-per-day 4000
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from datetime import date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

COUNTRIES = ["DE", "FR", "NL", "SE", "ES", "IT", "PL", "US", "GB", "DK"]
CATEGORIES = {
    "coffee": ["Espresso beans", "Filter roast", "Decaf", "Single origin"],
    "gear": ["Grinder", "Kettle", "Scale", "Dripper", "Tamper"],
    "tea": ["Green tea", "Black tea", "Oolong", "Herbal mix"],
    "merch": ["Mug", "T-shirt", "Tote bag"],
}
FIRST = ["Ada", "Alan", "Grace", "Linus", "Edsger", "Barbara", "Ken", "Margaret", "Dennis", "Frances"]
LAST = ["Lovelace", "Turing", "Hopper", "Torvalds", "Dijkstra", "Liskov", "Thompson", "Hamilton"]


def products(rng: random.Random) -> pa.Table:
    rows = []
    pid = 100
    for category, names in CATEGORIES.items():
        for name in names:
            for size in ("S", "M", "L"):
                pid += 1
                rows.append({"product_id": pid, "name": f"{name} ({size})", "category": category,
                             "unit_price": round(rng.uniform(4, 180), 2), "active": rng.random() > 0.05})
    return pa.Table.from_pylist(rows)


def write_customers(path: Path, rng: random.Random, n: int) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["customer_id", "name", "email", "country", "signup_date", "segment"])
        for cid in range(1, n + 1):
            first, last = rng.choice(FIRST), rng.choice(LAST)
            w.writerow([cid, f"{first} {last}", f"{first}.{last}{cid}@example.com".lower(),
                        rng.choice(COUNTRIES), (date(2024, 1, 1) + timedelta(days=rng.randint(0, 700))).isoformat(),
                        rng.choice(["consumer", "consumer", "consumer", "business"])])


def _corrupt(line: str, rng: random.Random, order_id: int) -> str:
    """The kinds of bad records real feeds carry; each must end up in quarantine with its reason."""
    record = json.loads(line)
    kind = rng.choice(["truncated", "bad_amount", "negative_qty", "bad_channel", "duplicate", "bad_ts"])
    if kind == "truncated":
        return line[: len(line) // 2]
    if kind == "bad_amount":
        record["amount"] = "12,50"
    elif kind == "negative_qty":
        record["quantity"] = -record["quantity"]
    elif kind == "bad_channel":
        record["channel"] = "fax"
    elif kind == "duplicate":
        record["order_id"] = max(1, order_id - 1)
    else:
        record["order_ts"] = "yesterday"
    return json.dumps(record)


def write_orders(folder: Path, rng: random.Random, start: date, days: int, per_day: int,
                 customers: int, product_table: pa.Table, bad_ratio: float = 0.005) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    prices = dict(zip(product_table["product_id"].to_pylist(), product_table["unit_price"].to_pylist(), strict=True))
    product_ids = list(prices)
    order_id = 0
    for day in range(days):
        d = start + timedelta(days=day)
        with (folder / f"orders_{d.isoformat()}.ndjson").open("w") as fh:
            for _ in range(int(per_day * rng.uniform(0.8, 1.2))):
                order_id += 1
                pid = rng.choice(product_ids)
                qty = rng.choice([1, 1, 1, 2, 2, 3, 5])
                ts = datetime(d.year, d.month, d.day, rng.randint(0, 23), rng.randint(0, 59), rng.randint(0, 59))
                line = json.dumps({
                    "order_id": order_id,
                    "customer_id": rng.randint(1, customers),
                    "product_id": pid,
                    "quantity": qty,
                    "amount": round(prices[pid] * qty * rng.choice([1, 1, 1, 0.9, 0.8]), 2),
                    "currency": "EUR",
                    "order_ts": ts.isoformat(),
                    "channel": rng.choice(["web", "web", "app", "store"]),
                })
                if rng.random() < bad_ratio:
                    line = _corrupt(line, rng, order_id)
                fh.write(line + "\n")
    return order_id


def write_returns(folder: Path, rng: random.Random, start: date, days: int, max_order: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for week in range(0, days, 7):
        d = start + timedelta(days=week + 6)
        with (folder / f"returns_{d.isoformat()}.csv").open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["return_id", "order_id", "reason", "returned_at"])
            for i in range(rng.randint(20, 60)):
                w.writerow([f"R{week:03d}{i:04d}", rng.randint(1, max_order),
                            rng.choice(["damaged", "wrong item", "changed mind", "late delivery"]),
                            d.isoformat()])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "data")
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--orders-per-day", type=int, default=4000)
    parser.add_argument("--customers", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--bad-ratio", type=float, default=0.005, help="share of corrupted order records")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    product_table = products(rng)
    pq.write_table(product_table, args.out / "products.parquet")
    write_customers(args.out / "customers.csv", rng, args.customers)
    start = date(2026, 11, 1)
    last_order = write_orders(args.out / "orders", rng, start, args.days, args.orders_per_day,
                              args.customers, product_table, args.bad_ratio)
    write_returns(args.out / "returns", rng, start, args.days, last_order)
    print(f"generated {last_order:,} orders over {args.days} days, {args.customers:,} customers, "
          f"{product_table.num_rows} products into {args.out}")


if __name__ == "__main__":
    main()
