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
select order_date,
       country,
       category,
       count(*)                                        as orders,
       sum(quantity)                                   as units,
       round(sum(amount), 2)                           as gross_revenue,
       round(sum(case when returned then 0 else amount end), 2) as revenue
from ref('silver.orders_enriched')
group by all
