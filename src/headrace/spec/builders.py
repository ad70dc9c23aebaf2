"""The user-facing constructors: ``hr.files(...)`` and the ``@hr.table(...)`` decorator.

They only build spec objects; the project loader finds them by scanning pipeline modules, so
importing a pipeline file registers nothing globally.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from headrace.errors import DefinitionError
from headrace.spec.database import DatabaseSource
from headrace.spec.kafka import KafkaSource
from headrace.spec.sources import FILE_FORMATS, Compression, FileFormat, FileSource
from headrace.spec.tables import PythonTransform, TableInput, TableRef, TableSpec
from headrace.spec.write_modes import WriteMode, write_mode_from_config

TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")


def check_table_name(name: str, *, where: str = "") -> str:
    if not isinstance(name, str) or not TABLE_NAME.match(name):
        raise DefinitionError(
            f"{where}invalid table name {name!r}",
            hint="use 'layer.table' made of letters, digits and underscores, e.g. 'bronze.orders'",
        )
    name = name.lower()
    return name if "." in name else f"main.{name}"


def files(
    path: str,
    *,
    format: FileFormat,
    name: str | None = None,
    delimiter: str | None = None,
    header: bool = True,
    quote: str | None = None,
    escape: str | None = None,
    null_string: str | None = None,
    compression: Compression = "auto",
    columns: Mapping[str, str] | None = None,
    filename_column: str | None = None,
) -> FileSource:
    """Declare files matched by a glob as a source.

    >>> files("data/orders/*.ndjson", format="ndjson").format
    'ndjson'
    """
    if format not in FILE_FORMATS:
        from headrace.spec._names import did_you_mean

        raise DefinitionError(
            f"unknown file format {format!r}.{did_you_mean(format, FILE_FORMATS)}",
            hint=f"valid formats: {', '.join(FILE_FORMATS)}",
        )
    return FileSource(
        path=path,
        format=format,
        name=name,
        delimiter=delimiter,
        header=header,
        quote=quote,
        escape=escape,
        null_string=null_string,
        compression=compression,
        columns=tuple((columns or {}).items()),
        filename_column=filename_column,
    )


def _origin(fn: Callable[..., Any]) -> str:
    try:
        return f"{inspect.getsourcefile(fn)}:{inspect.getsourcelines(fn)[1]}"
    except (OSError, TypeError):
        return getattr(fn, "__qualname__", "<function>")


def _normalise_input(value: Any, *, where: str) -> TableInput:
    if isinstance(value, str):
        return TableRef(check_table_name(value, where=where))
    if isinstance(value, TableRef | FileSource | DatabaseSource | KafkaSource):
        return value
    raise DefinitionError(
        f"{where}input {value!r} is neither a source nor a table name",
        hint="pass hr.files(...), a source variable, or a table name such as 'bronze.orders'",
    )


def table(
    name: str,
    *,
    source: Any = None,
    inputs: Mapping[str, Any] | None = None,
    write: str | WriteMode | None = None,
    keys: Sequence[str] | None = None,
    partition_by: str | Sequence[str] | None = None,
    retries: int | None = None,
    description: str | None = None,
    tags: Sequence[str] = (),
    contract: Any = None,
    checks: Sequence[Any] = (),
    schema: str = "evolve",
) -> Callable[[Callable[..., Any]], TableSpec]:
    """Declare a table computed by the decorated function.

    ``source=`` is the single input, passed as the function's first parameter; ``inputs=``
    maps parameter names to sources or upstream table names. ``write`` is a mode name or
    object; ``keys`` is shorthand for ``write="merge"`` keys. ``contract`` (``hr.Contract``)
    validates the records entering the table when it reads one source, else its result;
    ``checks`` (``hr.check.*``) audit the result before it is published. ``schema`` is the
    policy when the result's columns differ from the table's: ``evolve`` (add new columns,
    fill missing ones with NULL), ``freeze`` (refuse), ``discard`` (drop new columns).
    """

    def decorate(fn: Callable[..., Any]) -> TableSpec:
        where = f"table {name!r} ({_origin(fn)}): "
        full = check_table_name(name, where=where)
        params = [p for p in inspect.signature(fn).parameters if p != "ctx"]
        resolved: dict[str, TableInput] = {}
        if source is not None and inputs:
            raise DefinitionError(f"{where}give either source= or inputs=, not both")
        if source is not None:
            if len(params) != 1:
                raise DefinitionError(
                    f"{where}with source= the function takes exactly one data parameter, "
                    f"found {params}",
                    hint="use inputs={'param': ...} for several inputs",
                )
            resolved[params[0]] = _normalise_input(source, where=where)
        elif inputs:
            for key, value in inputs.items():
                resolved[key] = _normalise_input(value, where=where)
            missing = set(params) - set(resolved)
            extra = set(resolved) - set(params)
            if missing or extra:
                raise DefinitionError(
                    f"{where}function parameters {params} do not match inputs {sorted(resolved)}",
                    hint="every data parameter needs one entry in inputs= and vice versa",
                )
        elif params:
            raise DefinitionError(
                f"{where}the function takes {params} but no source= or inputs= is declared"
            )
        options = {"keys": tuple(keys)} if keys else None
        mode = write_mode_from_config(write or ("merge" if keys else "overwrite"), options, where=where)
        parts = (partition_by,) if isinstance(partition_by, str) else tuple(partition_by or ())
        return TableSpec(
            name=full,
            inputs=resolved,
            transform=PythonTransform(fn=fn),
            write=mode,
            partition_by=parts,
            retries=retries,
            description=description or inspect.getdoc(fn),
            tags=tuple(tags),
            origin=_origin(fn),
            contract=contract,
            checks=tuple(checks),
            schema_policy=check_schema_policy(schema, where=where),
        )

    return decorate


SCHEMA_POLICIES = ("evolve", "freeze", "discard")


def check_schema_policy(value: str, *, where: str = "") -> str:
    if value not in SCHEMA_POLICIES:
        from headrace.spec._names import did_you_mean

        raise DefinitionError(
            f"{where}unknown schema policy {value!r}.{did_you_mean(str(value), SCHEMA_POLICIES)}",
            hint="schema = 'evolve' (add columns), 'freeze' (refuse changes) or 'discard' (drop new columns)",
        )
    return value
