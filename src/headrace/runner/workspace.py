"""A workspace ties one project's config to its definitions, lake, engine and state store.

The CLI and tests go through it, so "run this selection" means the same thing everywhere.
Everything heavy (definitions, the store connection, the engine) opens on first use.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date
from functools import cached_property
from pathlib import Path
from typing import Any

from headrace.delta.catalog import Lake
from headrace.delta.writer import WriteSettings
from headrace.engines.base import Engine
from headrace.engines.registry import create_engine
from headrace.errors import SelectionError
from headrace.project.config import ResolvedConfig, find_project_root, load_config
from headrace.project.loader import Project, load_project
from headrace.runner.events import Listener, RunResult
from headrace.runner.executor import Runner, RunOptions
from headrace.runner.retry import RetryPolicy
from headrace.runner.state import StateStore

RETRYABLE_STATUSES = ("failed", "skipped", "pending", "running")


class Workspace:
    def __init__(self, config: ResolvedConfig) -> None:
        self.config = config

    @classmethod
    def open(
        cls,
        project_dir: Path | None = None,
        *,
        profile: str | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> Workspace:
        root = find_project_root(project_dir or Path.cwd())
        return cls(load_config(root, profile=profile, overrides=overrides))

    @cached_property
    def project(self) -> Project:
        return load_project(self.config)

    @cached_property
    def store(self) -> StateStore:
        return StateStore.open(self.config.state_url, root=self.config.root)

    @cached_property
    def lake(self) -> Lake:
        return Lake(self.config.lake_root)

    def engine(self) -> Engine:
        duck = self.config.duckdb
        settings: dict[str, Any] = {
            "memory_limit": duck.memory_limit,
            "threads": duck.threads,
            "temp_directory": duck.temp_directory,
        }
        if self.config.engine == "spark":  # DuckDB settings size its driver-side helper
            spark = self.config.spark
            settings.update(master=spark.master, remote=spark.remote, app_name=spark.app_name,
                            conf=dict(spark.conf), start_timeout=spark.start_timeout_seconds,
                            optimize_write=spark.optimize_write, local_threshold=spark.local_threshold)
        return create_engine(self.config.engine, **settings)

    def lineage(self) -> Any:
        """The OpenLineage emitter of a run, when ``[lineage]`` is configured."""
        if self.config.lineage is None:
            return None
        from headrace.observe.lineage import LineageEmitter

        return LineageEmitter(self.config.lineage, project=self.config.name, root=self.config.root,
                              lake_root=self.config.lake_root)

    def write_settings(self) -> WriteSettings:
        w = self.config.write
        return WriteSettings(
            compression=w.compression,
            compression_level=w.compression_level,
            target_file_size=w.target_file_size,
        )

    def source_names(self) -> dict[int, str]:
        return {id(spec): name for name, spec in self.project.sources.items()}

    def select(self, exprs: Sequence[str]) -> list[str]:
        return self.project.dag.select(list(exprs))

    def run(
        self,
        select: Sequence[str] = (),
        *,
        tables: Sequence[str] | None = None,
        workers: int | None = None,
        force: bool = False,
        full_refresh: bool = False,
        logical_date: date | None = None,
        command: str = "run",
        parent_run_id: str | None = None,
        listener: Listener | None = None,
    ) -> RunResult:
        names = list(tables) if tables is not None else self.select(select)
        run = self.config.run
        options = RunOptions(
            command=command,
            selection=tuple(select) if tables is None else tuple(names),
            workers=workers or run.workers,
            policy=RetryPolicy(run.retries, run.backoff_seconds, run.max_backoff_seconds),
            lock_timeout=run.lock_timeout_seconds,
            parent_run_id=parent_run_id,
            force=force,
            full_refresh=full_refresh,
            logical_date=logical_date,
            project_name=self.config.name,
            profile=self.config.profile or "",
        )
        engine = self.engine()
        try:
            runner = Runner(
                root=self.config.root,
                tables=self.project.tables,
                dag=self.project.dag,
                lake=self.lake,
                engine=engine,
                store=self.store,
                settings=self.write_settings(),
                source_names=self.source_names(),
                listener=listener,
                lineage=self.lineage(),
            )
            return runner.run(names, options)
        finally:
            engine.close()

    def retry(self, run_id: str, *, workers: int | None = None, listener: Listener | None = None) -> RunResult:
        """Re-run only the tables of RUN_ID that did not finish well."""
        record = self.store.get_run(run_id)
        todo = [t.table for t in self.store.tasks(record.run_id) if t.status in RETRYABLE_STATUSES]
        if not todo:
            raise SelectionError(
                f"run {record.run_id} has no failed or skipped tables to retry",
                hint="`headrace runs` lists recent runs and their status",
            )
        missing = [t for t in todo if t not in self.project.tables]
        if missing:
            raise SelectionError(
                f"run {record.run_id} included tables that no longer exist: {', '.join(missing)}",
                hint="run `headrace run --select ...` with the current table names",
            )
        return self.run(tables=todo, workers=workers, command="retry",
                        parent_run_id=record.run_id, listener=listener)

    def close(self) -> None:
        if "store" in self.__dict__:
            self.store.close()
