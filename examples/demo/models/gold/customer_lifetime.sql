/* headrace
write = "overwrite"
description = "Per customer: orders, revenue, first and last order"
*/
select customer_id,
       any_value(country)        as country,
       any_value(segment)        as segment,
       count(*)                  as orders,
       cast(sum(amount) as decimal(18, 2)) as revenue,
       min(order_date)           as first_order,
       max(order_date)           as last_order
from ref('silver.orders_enriched')
group by customer_id
