"""Bronze: raw files landed as Delta tables, one table per source."""

import headrace as hr

orders_raw = hr.files("data/orders/*.ndjson", format="ndjson")
customers_raw = hr.files("data/customers.csv", format="csv")
products_raw = hr.files("data/products.parquet", format="parquet")
returns_raw = hr.files("data/returns/*.csv", format="csv")


ORDER_CONTRACT = hr.Contract(
    {
        "order_id": hr.Int64(key=True),
        "customer_id": hr.Int64(nullable=False),
        "product_id": hr.Int64(nullable=False),
        "quantity": hr.Int32(min=1),
        "amount": hr.Decimal(12, 2, min=0),
        "currency": hr.String(accepted=["EUR"]),
        "order_ts": hr.Timestamp(nullable=False),
        "channel": hr.String(accepted=["web", "app", "store"]),
    },
    on_violation="quarantine",
    max_quarantine_ratio=0.05,  # more than 5% bad records means the feed changed: stop
)


@hr.table(
    "bronze.orders",
    source=orders_raw,
    write="overwrite_partitions",
    partition_by="order_date",
    contract=ORDER_CONTRACT,
    checks=[
        hr.check.relationships("customer_id", to="bronze.customers"),
        hr.check.relationships("product_id", to="bronze.products"),
        hr.check.row_count(min=1),
    ],
)
def orders(raw):
    """Orders by day: a day's files re-run replace exactly that day's partition. Records that
    break the contract go to bronze.orders__quarantine with every reason.

    A SQL string over the input names is portable: it runs on DuckDB and, transpiled, on Spark
    (``raw`` is a DuckDB relation on one engine and a Spark DataFrame on the other)."""
    return "SELECT *, order_ts AS order_ts_parsed, CAST(order_ts AS DATE) AS order_date FROM raw"


@hr.table("bronze.customers", source=customers_raw, write="merge", keys=["customer_id"],
          checks=[hr.check.unique("customer_id"), hr.check.regex("email", r"[^@]+@[^@]+\.[a-z]+")])
def customers(raw):
    """Customers upserted by id, so a new customer extract updates rows in place."""
    return raw


@hr.table("bronze.products", source=products_raw, write="overwrite")
def products(raw):
    """The product catalogue is small: replace it whole."""
    return raw


@hr.table("bronze.returns", source=returns_raw, write="append")
def returns(raw):
    """Returns arrive as weekly batches; each batch is appended exactly once."""
    return "SELECT *, CAST(returned_at AS DATE) AS returned_on FROM raw"
