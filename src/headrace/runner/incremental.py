"""File-level incremental processing of merge and overwrite_partitions tables.

A merge or overwrite_partitions table that reads one file source works on its files
incrementally: each commit records the files it holds (path -> digest, and which partitions
they fed, :class:`~headrace.sources.batches.FileState`); the next run reads only new and
changed files, and for overwrite_partitions recomputes exactly the partitions they touch
(their new partitions plus the old ones of changed and removed files) from every file feeding
those partitions, so the table ends as a recompute from all current files would leave it.
This module decides what can be incremental and what the table holds; the task runs it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path

from headrace.delta.catalog import Lake
from headrace.engines.base import StagedResult
from headrace.runner.inputs import ResolvedInputs
from headrace.sources.batches import (
    FileEntry,
    FilePlan,
    FileState,
    InputBatch,
    Partition,
    combine,
    record_files,
)
from headrace.spec.sources import FileSource
from headrace.spec.tables import TableSpec
from headrace.spec.write_modes import Merge, OverwritePartitions


@dataclass(frozen=True)
class IncrementalFiles:
    """One table's view of its files across runs."""

    spec: TableSpec
    lake: Lake
    rel: Callable[[Path], str]  # a file's path as the log records it (relative to the project)
    logical_date: date | None
    force: bool

    @property
    def merge(self) -> bool:
        return isinstance(self.spec.write, Merge)

    def key(self) -> str | None:
        """The input whose files this table can process incrementally, or None: a merge or
        overwrite_partitions table reading exactly one file source, outside backfills (a
        logical date changes what the transform does with the same files)."""
        if self.logical_date is not None or not isinstance(self.spec.write, Merge | OverwritePartitions):
            return None
        if len(self.spec.inputs) != 1:
            return None
        key, item = next(iter(self.spec.inputs.items()))
        return key if isinstance(item, FileSource) else None

    def recorded(self, key: str) -> FileState | None:
        """The file state in the table's newest run commit (maintenance commits such as
        OPTIMIZE carry no fingerprint and are passed over); None when that commit has none."""
        if not self.lake.exists(self.spec.name):
            return None
        for commit in self.lake.history(self.spec.name, 50):
            if "fingerprint" not in commit.metadata:
                continue
            text = commit.metadata.get("inputs")
            state = FileState.loads(text) if text else None
            return state if state is not None and state.key == key else None
        return None

    def full_recompute_note(self, key: str | None, state: FileState | None) -> str | None:
        """Why this run reads every file of a table that could read only new ones (None: it
        can work incrementally; also None for tables where all files is the only way)."""
        if key is None:
            files = any(isinstance(i, FileSource) for i in self.spec.inputs.values())
            if files and self.logical_date is None and isinstance(self.spec.write, Merge | OverwritePartitions):
                return "recomputed from all files: only a table reading one file source is processed incrementally"
            return None
        if self.force or not self.lake.exists(self.spec.name):
            return None  # asked for, or the first load: nothing to say
        if state is None:
            return "recomputed from all files: the table has no record of the files it holds"
        if state.config != self.spec.config_fingerprint():
            return "recomputed from all files: the table's definition changed"
        return None

    def subset(self, inputs: ResolvedInputs, key: str, entries: list[FileEntry]) -> ResolvedInputs:
        """The inputs narrowed to some files of the file source ``key``."""
        batch = inputs.batches[key]
        sub = InputBatch(
            kind="files",
            description=f"{len(entries)} of {len(batch.files)} file(s)",
            batch_id=combine(f"{self.rel(e.path)}:{e.digest}" for e in entries),
            files=tuple(sorted(entries, key=lambda e: str(e.path))),
        )
        return ResolvedInputs({key: sub}, inputs.snapshots, combine([self.spec.name, f"{key}={sub.batch_id}"]))

    def note(self, plan: FilePlan, *, written: set[Partition], kept: set[Partition], feeding: int) -> str:
        """What an incremental run did, for the run summary."""
        parts = [f"incremental: {plan.describe()}"]
        if self.merge:
            if plan.removed:
                parts.append(f"rows merged from removed file(s) are kept ({names(plan.removed)}); "
                             "--full-refresh rebuilds from the current files")
            return "; ".join(parts)
        if written:
            parts.append(f"rewrote {len(written)} partition(s) from {len(plan.todo) + feeding} file(s)")
        if kept:
            parts.append(f"kept {len(kept)} partition(s) as they were: no current file produces rows for them "
                         f"({names(self._show(p) for p in kept)}); --full-refresh drops them")
        return "; ".join(parts)

    def _show(self, partition: Partition) -> str:
        return "/".join(f"{c}={v}" for c, v in zip(self.spec.partition_by, partition, strict=True))

    def full_state(self, inputs: ResolvedInputs, staged: StagedResult, *, listed_at_ns: int) -> FileState | None:
        """After reading every file: all of them, as one group feeding what was written."""
        key = self.key()
        if key is None:
            return None
        files = record_files(inputs.batches[key].files, self.rel, listed_at_ns=listed_at_ns,
                             group=None if self.merge else 0)
        groups = () if self.merge else (frozenset(staged.partitions),)
        return FileState(key=key, config=self.spec.config_fingerprint(), files=files, groups=groups)


def only_partitions(staged: StagedResult, partitions: set[Partition]) -> StagedResult:
    """Keep the staged files of these partitions; delete the rest (never committed)."""
    keep = tuple(f for f in staged.files if tuple(f.partition_values.get(c) for c in staged.partition_by)
                 in partitions)
    for f in staged.files:
        if f not in keep:
            f.path.unlink(missing_ok=True)
    return replace(staged, files=keep, rows=sum(f.rows for f in keep))


def names(items: Iterable[str], limit: int = 3) -> str:
    shown = sorted(items)
    return ", ".join(shown[:limit]) + (f" and {len(shown) - limit} more" if len(shown) > limit else "")
