"""Compute engines. DuckDB is the embedded default; engines are looked up in ``registry``."""
