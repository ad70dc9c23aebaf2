"""The public face: an exact, sorted __all__, and importing does not load heavy modules."""

from __future__ import annotations

import subprocess
import sys

import headrace


def _natural(name: str) -> list:
    """The isort-style order ruff's RUF022 keeps __all__ in (Int8 before Int16)."""
    import re

    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def test_all_is_exact_and_sorted():
    assert headrace.__all__ == sorted(headrace.__all__, key=_natural)
    assert len(set(headrace.__all__)) == len(headrace.__all__)
    # in a fresh interpreter: other tests import submodules, which become package attributes
    code = "import headrace; print(sorted(n for n in dir(headrace) if not n.startswith('_')))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    public = set(eval(proc.stdout))
    modules = {"errors", "spec"}  # subpackages the facade imports from
    assert public - modules == set(headrace.__all__) - {"__version__"}


def test_import_loads_nothing_heavy():
    code = ("import sys, headrace; print(sorted(m for m in ('duckdb','deltalake','pyarrow','pyspark',"
            "'confluent_kafka','sqlalchemy','sqlglot','polars','pandas') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"


def test_unknown_write_mode_suggests():
    import pytest

    with pytest.raises(headrace.DefinitionError, match="Did you mean 'overwrite'"):
        headrace.table("a.b", write="overwrit")(lambda: None)


def test_unknown_engine_suggests():
    import pytest

    from headrace.engines.registry import create_engine
    from headrace.errors import ConfigError

    with pytest.raises(ConfigError, match=r"Unknown engine 'duckbd'\. Did you mean 'duckdb'"):
        create_engine("duckbd")
