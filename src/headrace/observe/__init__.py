"""Observability: alerts about runs (failures, failed checks, breakers, missed SLAs)."""
