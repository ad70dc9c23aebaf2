"""Executes the DAG: scheduling, retries, the per-table task, and the run-state store."""
