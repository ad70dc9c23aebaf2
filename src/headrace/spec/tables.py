"""Table specifications: what a table is computed from, how, and how it is written."""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from headrace.spec.sources import SourceSpec
from headrace.spec.write_modes import Overwrite, WriteMode


@dataclass(frozen=True)
class TableRef:
    """A reference to another table of the project, by its full name (``"bronze.orders"``)."""

    name: str


def ref(name: str) -> TableRef:
    """Name an upstream table as a table function's input: ``inputs={"o": hr.ref("bronze.orders")}``."""
    return TableRef(name)


TableInput = SourceSpec | TableRef


@dataclass(frozen=True, kw_only=True)
class PythonTransform:
    """A Python function computing the table from engine relations, one per declared input.

    It may return an engine relation, a SQL string, an Arrow table or reader, or a
    Polars/pandas frame. A parameter named ``ctx`` receives the run context.
    """

    fn: Callable[..., Any]

    def code_hash(self) -> str:
        try:
            text = inspect.getsource(self.fn)
        except (OSError, TypeError):
            text = getattr(self.fn, "__qualname__", repr(self.fn))
        return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()

    @property
    def wants_context(self) -> bool:
        return "ctx" in inspect.signature(self.fn).parameters


@dataclass(frozen=True, kw_only=True)
class SqlTransform:
    """A SQL model's query, written in DuckDB dialect.

    ``sql`` is the original text (for errors and hashing). ``query`` is the same query with
    every ``ref('x')``/``source('x')`` call replaced by a plain identifier; each identifier is a
    key of the TableSpec's ``inputs``, so the engine binds an input relation under that name.
    ``path`` is the model file.
    """

    sql: str
    query: str
    path: str

    def code_hash(self) -> str:
        return hashlib.blake2b(self.sql.encode(), digest_size=16).hexdigest()


Transform = PythonTransform | SqlTransform


@dataclass(frozen=True, kw_only=True)
class TableSpec:
    """One table of the project: inputs, transform, write mode and layout.

    ``inputs`` maps the name the transform sees (a function parameter, or a SQL placeholder)
    to a source or an upstream table. ``origin`` is ``file:line`` for error messages.
    """

    name: str
    inputs: Mapping[str, TableInput]
    transform: Transform | None
    write: WriteMode = field(default_factory=Overwrite)
    partition_by: tuple[str, ...] = ()
    retries: int | None = None
    description: str | None = None
    tags: tuple[str, ...] = ()
    origin: str = "<unknown>"
    contract: Any = None  # headrace.spec.contracts.Contract
    checks: tuple[Any, ...] = ()  # headrace.spec.checks.Check
    schema_policy: str = "evolve"  # evolve | freeze | discard (a contract's own policy wins)

    @property
    def effective_schema_policy(self) -> str:
        return getattr(self.contract, "schema", None) or self.schema_policy

    @property
    def schema_name(self) -> str:
        return self.name.split(".", 1)[0] if "." in self.name else "main"

    @property
    def short_name(self) -> str:
        return self.name.split(".", 1)[1] if "." in self.name else self.name

    def upstream_tables(self) -> list[str]:
        """Tables this one needs first: its table inputs and the targets of its
        relationships checks (a foreign key is audited against the target's current rows)."""
        names = {i.name for i in self.inputs.values() if isinstance(i, TableRef)}
        names |= {c.to for c in self.checks if getattr(c, "kind", None) == "relationships"}
        return sorted(names)

    def input_tables(self) -> list[str]:
        return sorted({i.name for i in self.inputs.values() if isinstance(i, TableRef)})

    @property
    def validates_source(self) -> bool:
        """A contract describes the records as they arrive when the table reads exactly one
        source; otherwise it describes the transform's result before it is published."""
        return self.contract is not None and len(self.inputs) == 1 and not self.input_tables()

    def sources(self) -> dict[str, SourceSpec]:
        return {k: v for k, v in self.inputs.items() if not isinstance(v, TableRef)}

    def config_fingerprint(self) -> str:
        """Hash of everything about the definition that changes the result."""
        parts = [
            self.name,
            repr(self.write),
            repr(self.partition_by),
            self.transform.code_hash() if self.transform else "-",
            repr(sorted((k, repr(v)) for k, v in self.inputs.items())),
            repr(self.contract),
            repr(self.checks),
            self.schema_policy,
        ]
        return hashlib.blake2b("\x1f".join(parts).encode(), digest_size=16).hexdigest()
