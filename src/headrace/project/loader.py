"""Load a project: import pipeline modules, parse SQL models, build the DAG.

Pipeline files register nothing globally; the loader imports each one and scans its globals
for ``FileSource`` and ``TableSpec`` objects. Every load imports the files under a fresh
package name, so two loads in one process (tests, a watch loop) never share stale modules.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import itertools
import sys
import traceback
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headrace.errors import DefinitionError, HeadraceError
from headrace.project.dag import Dag
from headrace.spec.sources import SOURCE_TYPES, SourceSpec
from headrace.spec.tables import TableInput, TableSpec

_LOADS = itertools.count()
# Package names of the previous load per project root, dropped from sys.modules on reload.
_LOADED: dict[str, list[str]] = {}


@dataclass(frozen=True)
class Project:
    """Everything a project declares, validated: sources, tables and their DAG."""

    root: Path
    config: Any
    sources: dict[str, SourceSpec]
    tables: dict[str, TableSpec]
    dag: Dag


def load_project(config: Any) -> Project:
    """Load the project described by ``config`` (needs ``root``, ``pipelines_dir``, ``models_dir``)."""
    root = Path(config.root)
    registry = _Registry()
    for path, module in _import_pipelines(root, Path(config.pipelines_dir)):
        registry.collect(module, path)
    registry.name_table_sources()
    models_dir = Path(config.models_dir)
    for path in _files(models_dir, ".sql"):
        from headrace.project.sql_models import parse_model  # sqlglot loads only with models

        registry.add_table(parse_model(path, models_dir=models_dir, sources=registry.sources))
    if not registry.tables:
        raise DefinitionError(
            f"the project at {root} defines no tables",
            hint=f"add a Python file to {config.pipelines_dir} or a .sql model to {models_dir}",
        )
    return Project(
        root=root,
        config=config,
        sources=dict(registry.sources),
        tables=dict(registry.tables),
        dag=Dag.build(registry.tables),
    )


# -- finding files ------------------------------------------------------------------------


def _files(folder: Path, suffix: str) -> list[Path]:
    """Project files under ``folder``, sorted; hidden folders (``.ipynb_checkpoints``) skipped.

    Python files or folders starting with ``_`` are helpers, not pipelines, so they are
    skipped too (they can still be imported by pipeline files).
    """
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.rglob(f"*{suffix}")):
        parts = path.relative_to(folder).parts
        if any(p.startswith(".") for p in parts):
            continue
        if suffix == ".py" and any(p.startswith("_") for p in parts):
            continue
        if path.is_file():
            found.append(path)
    return found


# -- importing ----------------------------------------------------------------------------


def _import_pipelines(root: Path, pipelines_dir: Path) -> list[tuple[Path, types.ModuleType]]:
    files = _files(pipelines_dir, ".py")
    if not files:
        return []
    key = str(root.resolve())
    for old in _LOADED.pop(key, []):
        _drop_modules(old)
    digest = hashlib.blake2b(f"{key}\0{next(_LOADS)}".encode(), digest_size=5).hexdigest()
    package = f"headrace_project_{digest}"
    _LOADED[key] = [package]
    _add_package(package, pipelines_dir)
    try:
        with _import_context(root, pipelines_dir):
            return [(path, _import_file(path, pipelines_dir, package)) for path in files]
    except BaseException:
        _drop_modules(_LOADED.pop(key)[0])
        raise


@contextmanager
def _import_context(root: Path, pipelines_dir: Path) -> Iterator[None]:
    """Put the root and pipelines folder on sys.path for plain ``import helper`` statements.

    Modules imported that way from inside the project are dropped from sys.modules
    afterwards, so the next load imports the current version of the helper, not a stale one.
    """
    before = set(sys.modules)
    saved = list(sys.path)
    dirs = [pipelines_dir.resolve(), root.resolve()]
    sys.path[:0] = [str(d) for d in dirs]
    try:
        yield
    finally:
        sys.path[:] = saved
        for name in set(sys.modules) - before:
            if _from_project(name, sys.modules[name], dirs):
                del sys.modules[name]


def _from_project(name: str, module: types.ModuleType, dirs: list[Path]) -> bool:
    """True for a module found through the project folders we put on sys.path.

    Matching on the top-level name's location (``<dir>/helpers.py`` or ``<dir>/helpers/``)
    rather than "any file under the root" keeps a virtualenv or a src/ checkout inside the
    root out of it: re-importing those would duplicate classes and C extensions.
    """
    file = getattr(module, "__file__", None)
    if name.startswith("headrace_project_") or not file:
        return False
    top = name.split(".", 1)[0]
    path = Path(file).resolve()
    return any(path == d / f"{top}.py" or path.is_relative_to(d / top) for d in dirs)


def _drop_modules(package: str) -> None:
    for name in [n for n in sys.modules if n == package or n.startswith(f"{package}.")]:
        del sys.modules[name]


def _add_package(name: str, folder: Path) -> None:
    """Register a synthetic package so pipeline files can use relative imports."""
    if name in sys.modules:
        return
    module = types.ModuleType(name, "headrace pipelines package (generated by the loader)")
    module.__path__ = [str(folder)]
    module.__package__ = name
    sys.modules[name] = module


def _import_file(path: Path, pipelines_dir: Path, package: str) -> types.ModuleType:
    """Import one pipeline file, turning any failure into a DefinitionError at its line."""
    relative = path.relative_to(pipelines_dir).with_suffix("").parts
    for depth in range(1, len(relative)):
        sub = ".".join(relative[:depth])
        _add_package(f"{package}.{sub}", pipelines_dir.joinpath(*relative[:depth]))
    name = ".".join((package, *relative))
    if name in sys.modules:  # already imported by an earlier file's relative import
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise DefinitionError(f"{path}: cannot be imported as a Python module", path=str(path))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise _import_error(path, exc) from exc
    return module


def _import_error(path: Path, exc: Exception) -> DefinitionError:
    if isinstance(exc, SyntaxError):
        where = Path(exc.filename) if exc.filename else path
        line = exc.lineno
        text = f"SyntaxError: {exc.msg}"
    else:
        where, line = path, _line_in(path, exc)
        text = _one_line(exc)
    hint = exc.hint if isinstance(exc, HeadraceError) and exc.hint else None
    prefix = f"{where}:{line}" if line else str(where)
    return DefinitionError(
        f"{prefix}: {text}",
        hint=hint or "fix this pipeline file; headrace imports every file in pipelines/",
        path=str(where),
        line=line,
    )


def _line_in(path: Path, exc: BaseException) -> int | None:
    """The deepest traceback line that is in ``path`` (where the pipeline file went wrong)."""
    target = path.resolve()
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename and Path(frame.filename).resolve() == target:
            line = frame.lineno
    return line


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, HeadraceError):
        return exc.message
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


# -- collecting ---------------------------------------------------------------------------


class _Registry:
    """Sources and tables gathered from pipeline modules, with where each came from."""

    def __init__(self) -> None:
        self.sources: dict[str, SourceSpec] = {}
        self.source_files: dict[str, str] = {}
        self.tables: dict[str, TableSpec] = {}
        self._by_identity: dict[int, SourceSpec] = {}

    def collect(self, module: types.ModuleType, path: Path) -> None:
        for var, value in list(vars(module).items()):
            if isinstance(value, SOURCE_TYPES):
                self._add_global_source(var, value, path)
            elif isinstance(value, TableSpec):
                self.add_table(value)

    def _add_global_source(self, var: str, source: SourceSpec, path: Path) -> None:
        """Name a module-level source; the first binding of one object wins."""
        if id(source) in self._by_identity:
            return
        named = source if source.name else source.named(var)
        self._by_identity[id(source)] = named
        self.add_source(named, str(path))

    def add_source(self, source: SourceSpec, where: str) -> None:
        name = source.name or ""
        existing = self.sources.get(name)
        if existing is None:
            self.sources[name] = source
            self.source_files[name] = where
        elif existing != source:
            raise DefinitionError(
                f"two different sources are named {name!r}: {self.source_files[name]} and {where}",
                hint="rename one of them (variable name or name=...)",
            )

    def add_table(self, table: TableSpec) -> None:
        existing = self.tables.get(table.name)
        if existing is None:
            self.tables[table.name] = table
        elif existing != table and existing.origin != table.origin:
            # Same name and origin is one definition reached twice (e.g. imported by another
            # pipeline file under a second module name), not a duplicate.
            raise DefinitionError(
                f"table {table.name!r} is defined twice: {existing.origin} and {table.origin}",
                hint="rename or delete one of the definitions",
                table=table.name,
            )

    def name_table_sources(self) -> None:
        """Give every source a table reads a name, and make the table hold the named one.

        A source declared at module level keeps its variable name; one written inline in
        ``@hr.table(source=hr.files(...))`` becomes ``<table>.<param>``.
        """
        for table_name, table in list(self.tables.items()):
            inputs: dict[str, TableInput] = dict(table.inputs)
            for param, source in table.sources().items():
                named = self._named(source, f"{table_name}.{param}")
                self.add_source(named, table.origin)
                inputs[param] = named
            if inputs != dict(table.inputs):
                self.tables[table_name] = dataclasses.replace(table, inputs=inputs)

    def _named(self, source: SourceSpec, fallback: str) -> SourceSpec:
        known = self._by_identity.get(id(source))
        if known is not None:
            return known
        if source.name:
            return source
        for candidate in self._by_identity.values():
            if candidate.named("") == source.named(""):
                return candidate
        return source.named(fallback)
