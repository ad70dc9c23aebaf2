"""The headrace error tree.

Every error a user can see is a ``HeadraceError``. The families tell the runner and the CLI
what to do with it, so retry and rendering decisions are made by type, never by parsing text::

    HeadraceError
    ├── ConfigError              the user must edit something (toml, a pipeline, a model)
    │   ├── ProjectError         headrace.toml missing or invalid
    │   ├── DefinitionError      a table/source/model definition is wrong (unknown ref, cycle ...)
    │   └── SelectionError       --select names nothing / unknown table
    ├── SourceError              input cannot be read (missing file, empty glob, ragged CSV)
    ├── DataQualityError         data broke a rule that is set to stop the run
    ├── TransformError           a user's table function or SQL failed
    ├── EngineError              the engine or lake failed in a way that is not the user's input
    ├── StateStoreError          the state store cannot be reached or used
    └── TransientError           worth retrying: I/O hiccups, commit conflicts, lock timeouts

Each error carries a ``hint`` (what to do) and optional structured fields (``table``, ``path``,
``line``) so the CLI renders them without parsing messages.
"""

from __future__ import annotations


class HeadraceError(Exception):
    """Root of every error headrace raises on purpose."""

    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        table: str | None = None,
        path: str | None = None,
        line: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.table = table
        self.path = path
        self.line = line

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class ConfigError(HeadraceError):
    """The user must edit something before anything can run."""


class ProjectError(ConfigError):
    """headrace.toml is missing, unreadable or invalid."""


class DefinitionError(ConfigError):
    """A table, source or SQL model definition is wrong."""


class SelectionError(ConfigError):
    """A ``--select`` expression or a table name matches nothing known."""


class SourceError(HeadraceError):
    """Input data cannot be read."""


class DataQualityError(HeadraceError):
    """Data broke a rule that is configured to stop the run."""


class TransformError(HeadraceError):
    """A table function or SQL model failed while computing its result."""


class EngineError(HeadraceError):
    """The engine or the lake failed for a reason that is not the user's input."""


class StateStoreError(HeadraceError):
    """The run-state store cannot be reached or used."""


class TransientError(HeadraceError):
    """A failure that may succeed on retry (I/O hiccup, commit conflict, lock timeout)."""

    retryable = True


def is_retryable(error: BaseException) -> bool:
    """True when the runner should retry after ``error``; only transient errors qualify."""
    return isinstance(error, HeadraceError) and error.retryable


def engine_message(exc: BaseException, lines: int = 2) -> str:
    """An engine's error message, its first ``lines`` lines joined, without the SQL it echoes
    (DuckDB appends ``LINE 1: ...`` and the statement): what a user-facing error shows."""
    kept: list[str] = []
    for raw in str(exc).strip().splitlines():
        line = raw.strip()
        if line.startswith("LINE "):
            break
        if line:
            kept.append(line)
    return " ".join(kept[:lines]) or type(exc).__name__
