/* headrace
write = "scd2"
key = ["customer_id"]
track = ["name", "email", "country", "segment"]
deletes = "close"
description = "Customer dimension with full history (SCD Type 2): valid_from, valid_to, is_current"
*/
select customer_id, name, email, country, segment
from ref('bronze.customers')
