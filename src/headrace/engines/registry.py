"""One registry of engines; built-ins go through it like any other."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from headrace.engines.base import Engine
from headrace.errors import ConfigError
from headrace.spec._names import did_you_mean

# name -> "module:factory"; the module is imported only when the engine is used
_ENGINES: dict[str, str] = {
    "duckdb": "headrace.engines.duckdb_engine:DuckDBEngine",
    "spark": "headrace.engines.spark_engine:SparkEngine",
}


def engine_names() -> list[str]:
    return sorted(_ENGINES)


def create_engine(name: str, **settings: object) -> Engine:
    target = _ENGINES.get(name)
    if target is None:
        raise ConfigError(
            f"Unknown engine {name!r}.{did_you_mean(name, _ENGINES)}",
            hint=f"available engines: {', '.join(engine_names())}",
        )
    module, attr = target.split(":")
    factory: Callable[..., Engine] = getattr(importlib.import_module(module), attr)
    return factory(**settings)
