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


def day_two(out: Path, rng: random.Random, days: int, per_day: int, product_table: pa.Table) -> None:
    """The next day's delivery: 2% of customers changed, 1% new, 0.5% gone, one more day of
    orders. Re-running headrace then touches only what changed (one new orders partition,
    new versions in the customer history)."""
    path = out / "customers.csv"
    rows = list(csv.reader(path.open()))
    header, body = rows[0], rows[1:]
    kept = [r for r in body if rng.random() > 0.005]
    for r in kept:
        if rng.random() < 0.02:
            r[3] = rng.choice(COUNTRIES)
            r[5] = "business" if r[5] == "consumer" else "consumer"
    next_id = max(int(r[0]) for r in body) + 1
    for cid in range(next_id, next_id + len(body) // 100):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        kept.append([str(cid), f"{first} {last}", f"{first}.{last}{cid}@example.com".lower(),
                     rng.choice(COUNTRIES), "2026-11-15", "consumer"])
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(kept)
    start = date(2026, 11, 1) + timedelta(days=days)
    last_order = sum(1 for f in (out / "orders").glob("*.ndjson") for _ in f.open()) + 10_000_000
    folder = out / "orders"
    prices = dict(zip(product_table["product_id"].to_pylist(), product_table["unit_price"].to_pylist(), strict=True))
    with (folder / f"orders_{start.isoformat()}.ndjson").open("w") as fh:
        for i in range(per_day):
            pid = rng.choice(list(prices))
            fh.write(json.dumps({
                "order_id": last_order + i, "customer_id": int(rng.choice(kept)[0]), "product_id": pid,
                "quantity": 1, "amount": prices[pid], "currency": "EUR",
                "order_ts": f"{start.isoformat()}T12:00:00", "channel": "web",
            }) + "\n")
    print(f"day two: {len(kept):,} customers ({len(body) - len([r for r in kept if int(r[0]) < next_id]):,} gone), "
          f"{per_day:,} orders on {start}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "data")
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--orders-per-day", type=int, default=4000)
    parser.add_argument("--customers", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--bad-ratio", type=float, default=0.005, help="share of corrupted order records")
    parser.add_argument("--day-two", action="store_true", help="apply the next day's changes to existing data")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    product_table = products(rng)
    if args.day_two:
        day_two(args.out, random.Random(args.seed + 1), args.days, args.orders_per_day, product_table)
        return
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
