"""The ``headrace`` command line (typer + rich)."""
