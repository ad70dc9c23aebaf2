"""Data quality: checks audited on a table's staged result before it is published."""
