"""Bronze: raw files landed as Delta tables, one table per source."""

import headrace as hr

orders_raw = hr.files("data/orders/*.ndjson", format="ndjson")
customers_raw = hr.files("data/customers.csv", format="csv")
products_raw = hr.files("data/products.parquet", format="parquet")
returns_raw = hr.files("data/returns/*.csv", format="csv")


@hr.table("bronze.orders", source=orders_raw, write="overwrite_partitions", partition_by="order_date")
def orders(raw):
    """Orders by day: a day's files re-run replace exactly that day's partition."""
    return raw.select("*, CAST(order_ts AS TIMESTAMP) AS order_ts_parsed, CAST(order_ts AS DATE) AS order_date")


@hr.table("bronze.customers", source=customers_raw, write="merge", keys=["customer_id"])
def customers(raw):
    """Customers upserted by id, so a new customer extract updates rows in place."""
    return raw


@hr.table("bronze.products", source=products_raw, write="overwrite")
def products(raw):
    """The product catalogue is small: replace it whole."""
    return raw


@hr.table("bronze.returns", source=returns_raw, write="append")
def returns(raw, ctx):
    """Returns arrive as weekly batches; each batch is appended exactly once."""
    return raw.select(f"*, '{ctx.run_id}' AS loaded_by_run")
