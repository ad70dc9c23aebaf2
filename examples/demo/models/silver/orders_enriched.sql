/* headrace
write = "overwrite_partitions"
partition_by = ["order_date"]
description = "Orders joined to customers and products; returned orders flagged"
*/
select o.order_id,
       o.order_date,
       o.order_ts_parsed as order_ts,
       o.customer_id,
       c.country,
       c.segment,
       o.product_id,
       p.category,
       p.name            as product_name,
       o.quantity,
       o.amount,
       o.channel,
       r.order_id is not null as returned
from ref('bronze.orders') o
left join ref('bronze.customers') c using (customer_id)
left join ref('bronze.products') p using (product_id)
left join (select distinct order_id from ref('bronze.returns')) r using (order_id)
