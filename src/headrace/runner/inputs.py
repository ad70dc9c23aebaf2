"""What one attempt of a table reads, pinned, and which of it an append table still lacks.

Inputs are pinned before the transform runs (file sets with content digests, upstream tables at
a Delta version), so the commit can record exactly what it consumed. An append table reading
one file source appends each file once: every file gets its own Delta app-transaction id, and
the files whose id the table already holds are left out of the batch.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from headrace.delta.catalog import Lake, Snapshot
from headrace.delta.writer import append_app_id
from headrace.errors import DataQualityError
from headrace.sources.batches import InputBatch, combine
from headrace.spec.tables import TableSpec


@dataclass(frozen=True)
class ResolvedInputs:
    batches: dict[str, InputBatch]
    snapshots: dict[str, Snapshot]
    batch_id: str


@dataclass(frozen=True)
class AppendLedger:
    """An append table's record of what it appended, read from its Delta log."""

    spec: TableSpec
    lake: Lake
    rel: Callable[[Path], str]  # a file's path as the log records it (relative to the project)

    def ids(self, inputs: ResolvedInputs) -> dict[str, str]:
        """Delta app-transaction ids for an append: one per file when the table reads a single
        file source (so new files are appended and old ones never again), else one per batch."""
        files = [(k, b) for k, b in inputs.batches.items() if b.kind == "files"]
        if len(inputs.batches) == 1 and len(files) == 1:
            return {
                str(e.path): append_app_id(self.spec.name, f"file:{self.rel(e.path)}:{e.digest}")
                for e in files[0][1].files
            }
        return {"*": append_app_id(self.spec.name, inputs.batch_id)}

    def pending(self, inputs: ResolvedInputs) -> tuple[ResolvedInputs, list[str]]:
        """Drop already-appended files from the batch; return the batch and its app ids."""
        ids = self.ids(inputs)
        if not self.lake.exists(self.spec.name):
            return inputs, list(ids.values())
        table = self.lake.open(self.spec.name)
        todo = {k: v for k, v in ids.items() if table.transaction_version(v) is None}
        if "*" not in ids and todo:
            self._refuse_changed_files(inputs, todo)
        if "*" in ids or len(todo) == len(ids):
            return inputs, list(todo.values())
        key, batch = next(iter(inputs.batches.items()))
        kept = tuple(e for e in batch.files if str(e.path) in todo)
        new_batch = InputBatch(
            kind="files",
            description=f"{len(kept)} new of {len(batch.files)} file(s)",
            batch_id=combine(f"{self.rel(e.path)}:{e.digest}" for e in kept),
            files=kept,
        )
        batch_id = combine([self.spec.name, f"{key}={new_batch.batch_id}"])
        return ResolvedInputs({key: new_batch}, inputs.snapshots, batch_id), list(todo.values())

    def appended_files(self) -> dict[str, str]:
        """Files (relative path -> content digest) whose rows the table holds, from the Delta
        log: every append commit lists its files; a full refresh starts the list anew."""
        seen: dict[str, str] = {}
        for commit in self.lake.history(self.spec.name):
            listed = commit.metadata.get("files")
            if listed:
                for path, digest in json.loads(listed).items():
                    seen.setdefault(path, digest)
            if commit.metadata.get("full_refresh") == "true":  # it rebuilt the table from these files
                break
        return seen

    def _refuse_changed_files(self, inputs: ResolvedInputs, todo: dict[str, str]) -> None:
        """Appending a file again after it changed would duplicate the rows it already added;
        the table must be rebuilt instead, so say so rather than guess."""
        batch = next(iter(inputs.batches.values()))
        known = self.appended_files()
        changed = [self.rel(e.path) for e in batch.files
                   if str(e.path) in todo and known.get(self.rel(e.path)) not in (None, e.digest)]
        if changed:
            raise DataQualityError(
                f"table {self.spec.name!r}: {len(changed)} already-appended file(s) changed since: "
                f"{', '.join(changed[:3])}{' ...' if len(changed) > 3 else ''}; appending them again "
                "would duplicate the rows they added",
                hint=f"rebuild from the current files: headrace run --select {self.spec.name} --full-refresh",
                table=self.spec.name,
            )
