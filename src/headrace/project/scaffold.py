"""``headrace init DIR``: a small project that runs as soon as it is created.

It shows each kind of definition once: a file source, a Python table with partition
overwrite, a merge table, and a SQL model with ``ref()``.
"""

from __future__ import annotations

import json
import random
from datetime import date, timedelta
from pathlib import Path

from headrace.errors import ConfigError

TOML = """\
# headrace project settings. `headrace config` shows every value and where it came from.
name = "{name}"
lake = "lake"
state = "sqlite:///.headrace/state.db"
engine = "duckdb"

[run]
workers = 4
retries = 2

[write]
compression = "zstd"
target_file_size = "128MB"

[profiles.prod]
# state = "${{HEADRACE_STATE_URL}}"    # e.g. postgresql://user@host/db, kept out of this file
"""

PIPELINE = '''\
"""Bronze tables: raw files landed as Delta tables."""

import headrace as hr

orders_raw = hr.files("data/orders/*.ndjson", format="ndjson")
customers_raw = hr.files("data/customers.csv", format="csv")


@hr.table(
    "bronze.orders",
    source=orders_raw,
    write="overwrite_partitions",
    partition_by="order_date",
    # records that break the contract go to bronze.orders__quarantine with every reason
    contract=hr.Contract({
        "order_id": hr.Int64(key=True),
        "customer_id": hr.Int64(nullable=False),
        "amount": hr.Decimal(12, 2, min=0),
        "order_ts": hr.Timestamp(nullable=False),
    }),
    # checked on the new rows before they become visible; a failure publishes nothing
    checks=[hr.check.relationships("customer_id", to="bronze.customers"), hr.check.row_count(min=1)],
)
def orders(raw):
    """One row per order; re-running a day's files replaces exactly that day."""
    return raw.select("*, CAST(order_ts AS DATE) AS order_date")


@hr.table("bronze.customers", source=customers_raw, write="merge", keys=["customer_id"],
          checks=[hr.check.unique("customer_id")])
def customers(raw):
    """Customers upserted by id."""
    return raw
'''

MODEL = """\
/* headrace
write = "overwrite"
description = "Revenue per day and country"
*/
select o.order_date,
       c.country,
       count(*)           as orders,
       sum(o.amount)      as revenue
from ref('bronze.orders') o
join ref('bronze.customers') c using (customer_id)
group by all
order by all
"""

GITIGNORE = "lake/\n.headrace/\n"


def scaffold(target: Path, *, name: str | None = None) -> list[Path]:
    """Create the project; refuses to write into a folder that already has headrace.toml."""
    if (target / "headrace.toml").exists():
        raise ConfigError(
            f"{target} already holds a headrace project (headrace.toml exists)",
            hint="choose an empty or new folder",
        )
    project = name or target.resolve().name
    files = {
        "headrace.toml": TOML.format(name=project),
        "pipelines/bronze.py": PIPELINE,
        "models/gold/daily_revenue.sql": MODEL,
        ".gitignore": GITIGNORE,
        "data/customers.csv": _customers_csv(),
    }
    written = []
    for rel, text in files.items():
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    written.extend(_orders_files(target / "data" / "orders"))
    return written


def _customers_csv() -> str:
    countries = ["DE", "FR", "NL", "SE", "US"]
    lines = ["customer_id,name,country"]
    lines += [f"{i},Customer {i},{countries[i % len(countries)]}" for i in range(1, 21)]
    return "\n".join(lines) + "\n"


def _orders_files(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(7)
    written = []
    start = date(2026, 1, 1)
    order_id = 0
    for day in range(3):
        d = start + timedelta(days=day)
        path = folder / f"orders_{d.isoformat()}.ndjson"
        with path.open("w") as fh:
            for _ in range(50):
                order_id += 1
                fh.write(json.dumps({
                    "order_id": order_id,
                    "customer_id": rng.randint(1, 20),
                    "amount": round(rng.uniform(5, 500), 2),
                    "order_ts": f"{d.isoformat()}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00",
                }) + "\n")
        written.append(path)
    return written
