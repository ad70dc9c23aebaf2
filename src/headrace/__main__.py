"""``python -m headrace`` runs the CLI."""

from headrace.cli.main import entry

entry()
