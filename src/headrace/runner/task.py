"""One table, one attempt: read inputs, transform, stage, publish.

The whole attempt holds the table's lock in the state store, so two runs writing one table
serialise; the second sees the first's commit fingerprint and does nothing. What the run
consumed (batch id, fingerprint) is written in the same Delta commit as the data. Append
tables skip what they already hold (:mod:`headrace.runner.inputs`); merge and
overwrite_partitions tables over one file source read only new and changed files
(:mod:`headrace.runner.incremental`).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Collection
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path
from typing import Any

from headrace.delta.catalog import Lake, Snapshot
from headrace.delta.quarantine import append_quarantine
from headrace.delta.writer import (
    PublishRequest,
    PublishResult,
    WriteSettings,
    publish,
)
from headrace.engines.base import Engine, StagedResult, StageTarget
from headrace.errors import DataQualityError, DefinitionError, SourceError
from headrace.quality.pii import key_digest, masked_columns, pii_key
from headrace.runner import audit
from headrace.runner.incremental import IncrementalFiles, only_partitions
from headrace.runner.inputs import AppendLedger, ResolvedInputs
from headrace.sources.batches import (
    FileEntry,
    FileState,
    InputBatch,
    advance_state,
    combine,
    file_digest,
    plan_files,
)
from headrace.sources.files import list_files
from headrace.spec.context import RunContext
from headrace.spec.database import DatabaseSource
from headrace.spec.kafka import KafkaSource
from headrace.spec.sources import FileSource
from headrace.spec.tables import TableRef, TableSpec
from headrace.spec.write_modes import (
    SCD2_COLUMNS,
    Append,
    Overwrite,
    Scd2,
)


@dataclass(frozen=True)
class TaskResult:
    status: str  # success | unchanged
    rows_in: int | None
    rows_out: int | None
    version: int | None
    operation: str | None
    message: str | None
    rows_quarantined: int | None = None
    rows_dropped: int | None = None


@dataclass(frozen=True)
class _Computed:
    """A transform's result staged for publishing, with the counts of what it read."""

    staged: StagedResult
    rows_in: int | None
    quarantined: int | None
    dropped: int | None


class TableTask:
    """Computes and publishes one table; stateless between attempts."""

    def __init__(
        self,
        *,
        spec: TableSpec,
        root: Path,
        lake: Lake,
        engine: Engine,
        run_id: str,
        settings: WriteSettings,
        source_names: dict[int, str],
        store: Any = None,
        known_tables: Collection[str] = (),
        force: bool = False,
        full_refresh: bool = False,
        logical_date: date | None = None,
    ) -> None:
        self.spec = spec
        self.root = root
        self.lake = lake
        self.engine = engine
        self.run_id = run_id
        self.settings = settings
        self.source_names = source_names
        self.store = store
        self.known_tables = known_tables
        self.force = force
        self.full_refresh = full_refresh
        self.logical_date = logical_date
        self._workdirs: list[Path] = []
        # how far this attempt read each database/Kafka input, keyed as the commit records it
        self._positions: dict[str, str | None] = {}
        self._file_state: FileState | None = None  # what the table holds, per input file
        self._listed_at_ns = 0
        self.appends = AppendLedger(spec, lake, self._rel)
        self.files = IncrementalFiles(spec, lake, self._rel, logical_date, force)

    def resolve_inputs(self) -> ResolvedInputs:
        """Pin every input: file sets with content digests, upstream tables at a version."""
        batches: dict[str, InputBatch] = {}
        snapshots: dict[str, Snapshot] = {}
        self._listed_at_ns = time.time_ns()
        known = self._file_state.known() if self._file_state else None
        for key, item in sorted(self.spec.inputs.items()):
            if isinstance(item, TableRef):
                if not self.lake.exists(item.name):
                    raise SourceError(
                        f"table {self.spec.name!r}: upstream table {item.name!r} has not been built yet",
                        hint=f"run `headrace run --select +{self.spec.name}` to build it first",
                        table=self.spec.name,
                    )
                snap = self.lake.snapshot(item.name)
                snapshots[key] = snap
                batches[key] = InputBatch(
                    kind="table",
                    description=f"{item.name}@v{snap.version}",
                    batch_id=f"{item.name}@{self.lake.data_version(snap)}",  # a compaction is no new input
                    table_version=snap.version,
                )
            elif isinstance(item, FileSource):
                batches[key] = list_files(item, self.root, source_name=self._source_name(key, item),
                                          known=known if self._file_state and key == self._file_state.key else None)
            elif isinstance(item, DatabaseSource):
                batches[key] = self._read_database(key, item)
            elif isinstance(item, KafkaSource):
                batches[key] = self._read_kafka(key, item)
        batch_id = combine([self.spec.name, *(f"{k}={b.batch_id}" for k, b in sorted(batches.items()))])
        return ResolvedInputs(batches=batches, snapshots=snapshots, batch_id=batch_id)

    def _read_database(self, key: str, item: DatabaseSource) -> InputBatch:
        """Read a database source into Parquet in a work folder, from the watermark stored in
        the table's own Delta log; the new watermark is committed with the data it covers."""
        from headrace.sources.database import (
            batch_id,
            check_cursor,
            dump_cursor,
            read_database,
            write_parquet,
        )

        name = self._source_name(key, item)
        previous = self._watermark(key) if item.cursor else None
        read = read_database(item, root=self.root, since=previous, source_name=name)
        workdir = Path(tempfile.mkdtemp(prefix=f"{self.spec.name}-db-", dir=self._tmp_root()))
        self._workdirs.append(workdir)
        paths = write_parquet(read, workdir / key)
        newest = read.max_cursor if item.cursor else None
        check_cursor(previous, newest, source_name=name)
        if item.cursor:
            mark = newest if previous is None or (newest is not None and newest > previous) else previous
            self._positions[f"cursor.{key}"] = dump_cursor(mark)
        entries = tuple(
            FileEntry(path=p, size=p.stat().st_size, mtime_ns=p.stat().st_mtime_ns, digest=file_digest(p))
            for p in paths
        )
        # without a cursor only the content says whether anything changed
        ident = (batch_id(item, previous, newest, read.rows) if item.cursor
                 else combine([item.describe(), *(e.digest for e in entries)]))
        return InputBatch(kind="database", description=f"{read.rows:,} row(s) from {item.describe()}",
                          batch_id=ident, files=entries, rows=read.rows)

    def _read_kafka(self, key: str, item: KafkaSource) -> InputBatch:
        """Read a topic's messages after the offsets in the table's own Delta log; the new
        offsets are committed with the rows they cover (exactly once, see spec.kafka)."""
        from headrace.sources.kafka import dump_offsets, load_offsets, read_kafka

        name = self._source_name(key, item)
        since = load_offsets(self._recorded(f"offsets.{key}"))
        workdir = Path(tempfile.mkdtemp(prefix=f"{self.spec.name}-kafka-", dir=self._tmp_root()))
        self._workdirs.append(workdir)
        read = read_kafka(item, since=since, target=workdir / key, source_name=name)
        self._positions[f"offsets.{key}"] = dump_offsets(read.offsets)
        entries = tuple(
            FileEntry(path=p, size=p.stat().st_size, mtime_ns=p.stat().st_mtime_ns, digest=file_digest(p))
            for p in read.files
        )
        spans = ",".join(f"{p}:{a}-{b}" for p, (a, b) in sorted(read.ranges.items()))
        return InputBatch(kind="kafka", description=f"{read.messages:,} message(s) from {item.describe()}",
                          batch_id=combine([item.topic, spans or f"none@{dump_offsets(since)}"]), files=entries,
                          rows=read.messages)

    def _recorded(self, meta_key: str) -> str | None:
        """The newest value of ``meta_key`` this table committed (or None)."""
        if not self.lake.exists(self.spec.name):
            return None
        for commit in self.lake.history(self.spec.name, 1000):
            text = commit.metadata.get(meta_key)
            if text:
                return str(text)
        return None

    def _watermark(self, key: str) -> Any:
        """The newest watermark this table committed for the input ``key`` (or None)."""
        from headrace.sources.database import load_cursor

        text = self._recorded(f"cursor.{key}")
        return load_cursor(text) if text else None

    def _source_name(self, key: str, item: Any) -> str:
        return item.name or self.source_names.get(id(item)) or f"{self.spec.name}.{key}"

    def _conform(self, session: Any, relation: Any) -> Any:
        """Fit the result to the existing table unless this run replaces the table whole."""
        policy = self.spec.effective_schema_policy
        scd2 = isinstance(self.spec.write, Scd2)
        if (isinstance(self.spec.write, Overwrite) or policy == "freeze" or (scd2 and policy != "discard")
                or not self.lake.exists(self.spec.name)):
            return relation  # scd2 checks its columns itself; only 'discard' is applied here
        import pyarrow as pa

        schema = pa.schema(self.lake.open(self.spec.name).schema().to_arrow())
        if scd2:  # the history columns are the table's own, never the input's
            schema = pa.schema([f for f in schema if f.name not in SCD2_COLUMNS])
        return session.conform(relation, schema, drop_extra=policy == "discard")

    def _target(self) -> StageTarget:
        return self.settings.target(self.lake.path(self.spec.name), self.spec.partition_by)

    def fingerprint(self, inputs: ResolvedInputs) -> str:
        ds = self.logical_date.isoformat() if self.logical_date else "-"
        parts = [inputs.batch_id, self.spec.config_fingerprint(), ds]
        masks = masked_columns(self.spec.contract)
        if "hash" in masks.values():  # another key, other hashes: the table is recomputed
            parts.append(key_digest(pii_key(masks, table=self.spec.name)))
        return combine(parts)

    def _protect(self, session: Any, relation: Any = None, *, view: str | None = None) -> Any:
        """Protect the contract's ``mask=`` columns in a validated relation or input view."""
        masks = masked_columns(self.spec.contract)
        if not masks:
            return relation
        key = pii_key(masks, table=self.spec.name)
        if view is not None:
            session.protect_view(view, masks, key)
            return None
        return session.protect(relation, masks, key)

    def _rel(self, path: Path) -> str:
        return str(path.relative_to(self.root)) if path.is_relative_to(self.root) else str(path)

    def up_to_date(self, inputs: ResolvedInputs, fingerprint: str) -> str | None:
        """Why there is nothing to do, or None. The Delta log is the source of truth."""
        if self.force or not self.lake.exists(self.spec.name):
            return None
        if self.lake.last_commit_metadata(self.spec.name).get("fingerprint") == fingerprint:
            return "inputs and definition unchanged since the last commit"
        if self.logical_date is not None:
            # a backfill resumes: an interval already computed from these inputs is not redone
            for commit in self.lake.history(self.spec.name, 500):
                if commit.metadata.get("fingerprint") == fingerprint:
                    return f"interval {self.logical_date} already computed (version {commit.version})"
        return None

    def run(self, attempt: int) -> TaskResult:
        self._positions = {}
        try:
            return self._attempt(attempt)
        finally:
            for workdir in self._workdirs:
                shutil.rmtree(workdir, ignore_errors=True)
            self._workdirs.clear()

    def _attempt(self, attempt: int) -> TaskResult:
        key = self.files.key()
        self._file_state = self.files.recorded(key) if key else None
        inputs = self.resolve_inputs()
        if self._positions and all(b.kind == "database" and not b.rows for b in inputs.batches.values()):
            return TaskResult("unchanged", 0, None, None, None, "no new rows since the stored watermark")
        if any(b.kind == "kafka" and not b.rows for b in inputs.batches.values()):
            # a table over a topic is driven by its messages: no new ones, nothing to add
            return TaskResult("unchanged", 0, None, None, None, "no new messages since the recorded offsets")
        app_ids: list[str] = []
        if self.full_refresh:
            return self._run(attempt, inputs, list(self.appends.ids(inputs).values())
                             if isinstance(self.spec.write, Append) else [])
        if isinstance(self.spec.write, Append):
            inputs, app_ids = self.appends.pending(inputs)
            if not app_ids:
                return TaskResult("unchanged", None, None, None, "append", "every input batch is already appended")
        reason = None if app_ids else self.up_to_date(inputs, self.fingerprint(inputs))
        if reason:
            return TaskResult("unchanged", None, None, None, None, reason)
        note = self.files.full_recompute_note(key, self._file_state)
        if key and note is None and self._file_state is not None and not self.force:
            return self._run_incremental(attempt, inputs, key, self._file_state)
        return self._run(attempt, inputs, app_ids, note=note)

    def _publish_spec(self) -> TableSpec:
        """A full refresh rebuilds the table from all its inputs in one overwrite commit."""
        if not self.full_refresh:
            return self.spec
        if isinstance(self.spec.write, Scd2):
            raise DefinitionError(
                f"table {self.spec.name!r}: --full-refresh would erase its SCD2 history",
                hint="leave scd2 tables out of the selection, or drop the table deliberately first",
                table=self.spec.name,
            )
        return replace(self.spec, write=Overwrite())

    # ---- incremental file processing ----------------------------------------------------

    def _run_incremental(self, attempt: int, inputs: ResolvedInputs, key: str, state: FileState) -> TaskResult:
        """Process only new and changed files; for overwrite_partitions, recompute the touched
        partitions from every file feeding them (a partition overwrite from the new files
        alone would drop the other files' rows)."""
        plan = plan_files(state, inputs.batches[key].files, self._rel)
        if not plan.todo and not plan.removed:
            return TaskResult("unchanged", None, None, None, None, "no new, changed or removed files")
        merge = self.files.merge
        was_changed = set() if merge else state.partitions_of(self._rel(e.path) for e in plan.changed)
        was_removed = set() if merge else state.partitions_of(plan.removed)
        session = self.engine.session()
        try:
            first = self._compute(session, self.files.subset(inputs, key, list(plan.todo)), attempt) if plan.todo else None
            produced = first.staged.partitions if first else set()
            targets = produced | was_changed | was_removed
            unchanged = {self._rel(e.path): e for e in plan.unchanged}
            feeding = [] if merge else state.feeding(unchanged, targets)
            final = first
            if feeding:  # recompute the touched partitions from all their files
                if first is not None:
                    first.staged.discard()
                session.close()
                session = self.engine.session()
                files = [*plan.todo, *(unchanged[p] for p in feeding)]
                second = self._compute(session, self.files.subset(inputs, key, files), attempt, quarantine=False)
                final = replace(second, staged=only_partitions(second.staged, targets))
            written = final.staged.partitions if final else set()
            unfed = targets - written  # as a recompute from all files would, these are left as they are
            note = self.files.note(plan, written=written, kept=unfed, feeding=len(feeding))
            if final is None:  # only removals, and no other file feeds their partitions
                return TaskResult("unchanged", None, None, None, None, note)
            self._file_state = advance_state(state, plan, self._rel, config=self.spec.config_fingerprint(),
                                             listed_at_ns=self._listed_at_ns, produced=None if merge else produced,
                                             unfed=unfed)
            return self._finish(session, final, inputs, [], note=note)
        finally:
            session.close()

    # ---- compute and publish ------------------------------------------------------------

    def _run(self, attempt: int, inputs: ResolvedInputs, app_ids: list[str], *, note: str | None = None) -> TaskResult:
        session = self.engine.session()
        try:
            computed = self._compute(session, inputs, attempt)
            self._file_state = self.files.full_state(inputs, computed.staged, listed_at_ns=self._listed_at_ns)
            return self._finish(session, computed, inputs, app_ids, note=note)
        finally:
            session.close()

    def _compute(self, session: Any, inputs: ResolvedInputs, attempt: int, *, quarantine: bool = True) -> _Computed:
        """Read, validate and transform the inputs; stage the result as uncommitted files.
        ``quarantine=False``: the rejects were kept when their files were first processed."""
        counts: list[int | None] = []
        quarantined = dropped = None
        for key, batch in inputs.batches.items():
            item = self.spec.inputs[key]
            if isinstance(item, DatabaseSource):
                item = FileSource(path=str(batch.files[0].path.parent / "*.parquet"), format="parquet",
                                  name=self._source_name(key, self.spec.inputs[key]))
            elif isinstance(item, KafkaSource):  # the messages of this run, one NDJSON file per partition
                item = FileSource(path=str(batch.files[0].path.parent / "*.ndjson"), format="ndjson",
                                  name=self._source_name(key, self.spec.inputs[key]))
            if isinstance(item, FileSource) and self.spec.validates_source:
                rows, quarantined, dropped = self._validate_source(session, key, item, batch, inputs.batch_id,
                                                                   quarantine=quarantine)
                counts.append(rows)
            elif isinstance(item, FileSource):
                counts.append(session.read_source(key, item, batch, source_name=self._source_name(key, item)))
            else:
                snap = inputs.snapshots[key]
                session.read_table(key, snap.dataset())
                counts.append(snap.row_count())
        rows_in = None if None in counts else sum(c or 0 for c in counts)
        ctx = RunContext(run_id=self.run_id, table=self.spec.name, attempt=attempt, project_root=self.root,
                         ds=self.logical_date)
        relation: Any = session.transform(self.spec, list(inputs.batches), ctx)
        if self.spec.contract is not None and not self.spec.validates_source:
            relation, rows_in, quarantined, dropped = self._validate_result(
                session, relation, inputs.batch_id)
        relation = self._conform(session, relation)
        audit.validate(self.spec, session.describe(self.spec, relation), self.known_tables)
        staged = session.stage(self.spec, relation, self._target())
        if rows_in is None and staged.rows_read is not None:
            rows_in = sum(c or 0 for c in counts) + staged.rows_read
        return _Computed(staged, rows_in, quarantined, dropped)

    def _finish(self, session: Any, computed: _Computed, inputs: ResolvedInputs, app_ids: list[str], *,
                note: str | None) -> TaskResult:
        """Audit the staged result, then publish it as one commit recording what it consumed."""
        staged = computed.staged
        try:
            checks = audit.run_checks(self.spec, session, staged, lake=self.lake, store=self.store)
            if checks:
                audit.record(self.store, self.run_id, self.spec.name, checks)
            audit.enforce(self.spec, checks)
        except BaseException:
            staged.discard()
            raise
        result: PublishResult = publish(
            self.lake,
            PublishRequest(
                spec=self._publish_spec(),
                staged=staged,
                session=session,
                run_id=self.run_id,
                fingerprint=self.fingerprint(inputs),
                batch_id=inputs.batch_id,
                settings=self.settings,
                app_ids=tuple(app_ids),
                schema_policy=self.spec.effective_schema_policy,
                interval=self.logical_date.isoformat() if self.logical_date else None,
                extra_metadata=self._commit_metadata(inputs),
            ),
        )
        if result.skipped:
            return TaskResult("unchanged", computed.rows_in, staged.rows, None, result.operation,
                              _join(note, result.skipped), computed.quarantined, computed.dropped)
        return TaskResult("success", computed.rows_in, staged.rows, result.version, result.operation,
                          _join(note, audit.summary(checks)), computed.quarantined, computed.dropped)

    def _commit_metadata(self, inputs: ResolvedInputs) -> dict[str, str]:
        """What this commit consumed, written with its data: database watermarks; for an
        append table its files (so a file that later changes can be recognised); for a table
        processing its files incrementally, every file it now holds and their partitions."""
        meta = {k: v for k, v in self._positions.items() if v is not None}
        if isinstance(self.spec.write, Append):
            files = {self._rel(e.path): e.digest for b in inputs.batches.values() if b.kind == "files"
                     for e in b.files}
            if files:
                meta["files"] = json.dumps(files, sort_keys=True)
            if self.full_refresh:
                meta["full_refresh"] = "true"
        elif self._file_state is not None:
            meta["inputs"] = self._file_state.dumps()
        return meta

    def _validate_source(self, session: Any, key: str, item: FileSource, batch: InputBatch,
                         batch_id: str, *, quarantine: bool = True) -> tuple[int, int | None, int | None]:
        """Validate a source against the table's contract; keep the rejects in quarantine.

        The quarantine is written even when the ratio breaker stops the table: rejected
        records are evidence about the input, and losing them would lose data.
        """
        contract = self.spec.contract
        name = self._source_name(key, item)
        workdir = Path(tempfile.mkdtemp(prefix=f"{self.spec.name}-", dir=self._tmp_root()))
        self._workdirs.append(workdir)
        rows, bad = session.read_validated_source(key, item, batch, contract, source_name=name, workdir=workdir)
        self._protect(session, view=key)
        from headrace.quality.contracts import (
            check_outcome,  # only tables with contracts pay for it
        )

        try:
            outcome = check_outcome(contract, rows, bad, source=name)
        except DataQualityError as exc:
            if contract.on_violation == "quarantine" and quarantine:
                self._quarantine(session, key, batch_id, bad)
            raise DataQualityError(f"table {self.spec.name!r}: {exc.message}; nothing was published",
                                   hint=exc.hint, table=self.spec.name) from None
        if outcome.action == "quarantine":
            if quarantine:
                self._quarantine(session, key, batch_id, bad)
            return rows, bad, 0
        if outcome.action == "drop":
            return rows, 0, bad
        return rows, 0, 0

    def _validate_result(self, session: Any, relation: Any, batch_id: str) -> tuple[Any, int, int, int]:
        """A contract on a table fed by other tables checks the result before publishing."""
        contract = self.spec.contract
        workdir = Path(tempfile.mkdtemp(prefix=f"{self.spec.name}-", dir=self._tmp_root()))
        self._workdirs.append(workdir)
        good, rows, bad = session.validate_result(self.spec, relation, contract, workdir=workdir)
        good = self._protect(session, good)
        from headrace.quality.contracts import check_outcome

        try:
            outcome = check_outcome(contract, rows, bad, source=f"{self.spec.name} result")
        except DataQualityError as exc:
            if contract.on_violation == "quarantine":
                self._quarantine(session, "__result__", batch_id, bad)
            raise DataQualityError(f"table {self.spec.name!r}: {exc.message}; nothing was published",
                                   hint=exc.hint, table=self.spec.name) from None
        if outcome.action == "quarantine":
            self._quarantine(session, "__result__", batch_id, bad)
            return good, rows, bad, 0
        if outcome.action == "drop":
            return good, rows, 0, bad
        return good, rows, 0, 0

    def _quarantine(self, session: Any, key: str, batch_id: str, count: int) -> None:
        if not count:
            return
        item = self.spec.inputs.get(key)
        publish_first = None
        if isinstance(item, KafkaSource) and item.dead_letter_topic:
            from headrace.sources.kafka import send_dead_letters

            def publish_first(rejects: Any, source: KafkaSource = item) -> None:
                send_dead_letters(source, rejects, table=self.spec.name)

        append_quarantine(
            self.lake, table=self.spec.name, run_id=self.run_id, batch_id=batch_id,
            rows=session.quarantine_reader(key, table=self.spec.name, run_id=self.run_id), count=count,
            publish_first=publish_first,
        )

    def _tmp_root(self) -> Path:
        root = self.root / ".headrace" / "tmp"
        root.mkdir(parents=True, exist_ok=True)
        return root


def _join(*notes: str | None) -> str | None:
    return "; ".join(n for n in notes if n) or None
