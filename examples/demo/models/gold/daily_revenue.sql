/* headrace
write = "overwrite_partitions"
partition_by = ["order_date"]
description = "Net revenue per day, country and category"
tags = ["daily"]
checks = [
  {row_count = {min = 1}},
  {expression = "revenue <= gross_revenue", name = "net_not_above_gross"},
  {not_null = ["country"], severity = "warn"},
]
*/
-- Result types are spelled out: engines differ in the precision they give a SUM of decimals
-- (DuckDB 38 digits, Spark p+10), and the same project must make the same table on both.
select order_date,
       country,
       category,
       count(*)                                        as orders,
       cast(sum(quantity) as bigint)                   as units,
       cast(sum(amount) as decimal(18, 2))             as gross_revenue,
       cast(sum(case when returned then 0 else amount end) as decimal(18, 2)) as revenue
from ref('silver.orders_enriched')
group by all
