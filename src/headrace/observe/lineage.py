"""OpenLineage events for every run and every table it computes.

A headrace run is a parent job ``<project>`` in the lineage namespace; each table is a job
``<project>.<table>`` whose runs carry the ``parent`` facet, as orchestrators report DAGs, so a
lineage server (Marquez, DataHub, OpenMetadata, Dataplex, ...) shows the graph with every
dataset edge. Datasets are named as OpenLineage's naming conventions ask, so they join with
what other tools report: lake tables and file sources are namespace ``file`` with an absolute
path, database tables ``postgres://host:port`` + ``db.schema.table`` (``mysql://`` +
``db.table``). Outputs carry the Delta version, schema, row count and the table's check
results (``dataQualityAssertions``); SQL models carry their query.

Delivery is best effort: a lineage server that is down must not stop pipelines. The first
failed HTTP delivery is logged and HTTP is off for the rest of the run; the JSON-lines file
transport keeps every event.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from headrace import __version__

log = logging.getLogger("headrace.lineage")

PRODUCER = f"https://github.com/headrace/headrace/tree/v{__version__}"
_SPEC = "https://openlineage.io/spec"
RUN_EVENT_SCHEMA = f"{_SPEC}/2-0-2/OpenLineage.json#/$defs/RunEvent"
_FACETS = {  # facet key -> (schema file version, facet type)
    "schema": ("1-1-1", "SchemaDatasetFacet"),
    "dataSource": ("1-0-1", "DatasourceDatasetFacet"),
    "version": ("1-0-1", "DatasetVersionDatasetFacet"),
    "dataQualityAssertions": ("1-0-1", "DataQualityAssertionsDatasetFacet"),
    "outputStatistics": ("1-0-2", "OutputStatisticsOutputDatasetFacet"),
    "parent": ("1-1-0", "ParentRunFacet"),
    "errorMessage": ("1-0-1", "ErrorMessageRunFacet"),
    "nominalTime": ("1-0-1", "NominalTimeRunFacet"),
    "processing_engine": ("1-1-1", "ProcessingEngineRunFacet"),
    "jobType": ("2-0-3", "JobTypeJobFacet"),
    "sql": ("1-1-0", "SQLJobFacet"),
    "columnLineage": ("1-2-0", "ColumnLineageDatasetFacet"),
}
_HEADER = re.compile(r"^\s*/\*\s*headrace\b.*?\*/", re.DOTALL)


def facet(key: str, **fields: Any) -> dict[str, Any]:
    """A facet with the ``_producer`` and ``_schemaURL`` every OpenLineage facet carries."""
    version, kind = _FACETS[key]
    return {"_producer": PRODUCER, "_schemaURL": f"{_SPEC}/facets/{version}/{kind}.json#/$defs/{kind}", **fields}


def run_uuid(*parts: str) -> str:
    """A stable run id: the same headrace run (and table) always maps to the same UUID."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "headrace:" + ":".join(parts)))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class LineageEmitter:
    """Builds and sends the events of one run (see the module docstring)."""

    def __init__(self, config: Any, *, project: str, root: Path, lake_root: Path) -> None:
        self.config = config
        self.project = project
        self.namespace = config.namespace or project
        self.root = root
        self.lake_root = lake_root
        self._http = config.url is not None
        self._lock = threading.Lock()

    # ---- the run ----------------------------------------------------------------------
    def run_event(self, event_type: str, run_id: str, *, command: str, error: str | None = None) -> None:
        """The run as a whole: START, then COMPLETE or FAIL."""
        facets: dict[str, Any] = {
            "processing_engine": facet("processing_engine", version=__version__, name="headrace",
                                       openlineageAdapterVersion=__version__),
            "headrace_run": {"_producer": PRODUCER, "_schemaURL": f"{PRODUCER}#HeadraceRunFacet",
                             "runId": run_id, "command": command},
        }
        if error:
            facets["errorMessage"] = facet("errorMessage", message=error, programmingLanguage="python")
        self._send({
            "eventType": event_type,
            "eventTime": _now(),
            "run": {"runId": run_uuid(self.project, run_id), "facets": facets},
            "job": {"namespace": self.namespace, "name": self.project,
                    "facets": {"jobType": facet("jobType", processingType="BATCH", integration="HEADRACE",
                                                jobType="DAG")}},
            "inputs": [], "outputs": [],
            "producer": PRODUCER, "schemaURL": RUN_EVENT_SCHEMA,
        })

    # ---- one table ----------------------------------------------------------------------
    def task_event(self, event_type: str, run_id: str, spec: Any, *, logical_date: date | None = None,
                   outcome: Any = None, table: Any = None, checks: Sequence[Any] = ()) -> None:
        """START (``outcome`` None) or the end of a table's task. ``table`` is the table's
        Delta table after the run (for its schema), ``checks`` the run's check results."""
        facets: dict[str, Any] = {"parent": facet(
            "parent", run={"runId": run_uuid(self.project, run_id)},
            job={"namespace": self.namespace, "name": self.project})}
        if logical_date is not None:
            day = logical_date.isoformat()
            facets["nominalTime"] = facet("nominalTime", nominalStartTime=f"{day}T00:00:00Z")
        if outcome is not None and outcome.status == "failed":
            facets["errorMessage"] = facet("errorMessage", message=outcome.error or "failed",
                                           programmingLanguage="python")
        job_facets: dict[str, Any] = {"jobType": facet("jobType", processingType="BATCH", integration="HEADRACE",
                                                       jobType="TABLE")}
        query = getattr(spec.transform, "sql", None)
        if isinstance(query, str):  # the model as written, without its config header
            job_facets["sql"] = facet("sql", query=_HEADER.sub("", query, count=1).strip(), dialect="duckdb")
        self._send({
            "eventType": event_type,
            "eventTime": _now(),
            "run": {"runId": run_uuid(self.project, run_id, spec.name), "facets": facets},
            "job": {"namespace": self.namespace, "name": f"{self.project}.{spec.name}", "facets": job_facets},
            "inputs": [self._input(item) for item in spec.inputs.values()],
            "outputs": self._outputs(spec, outcome, table, checks),
            "producer": PRODUCER, "schemaURL": RUN_EVENT_SCHEMA,
        })

    def _input(self, item: Any) -> dict[str, Any]:
        from headrace.spec.database import DatabaseSource
        from headrace.spec.kafka import KafkaSource
        from headrace.spec.sources import FileSource
        from headrace.spec.tables import TableRef

        if isinstance(item, TableRef):
            return self._lake_dataset(item.name)
        if isinstance(item, FileSource):
            return _dataset("file", str(_folder(self.root, item.path)))
        if isinstance(item, DatabaseSource):
            return _dataset(*database_dataset(item.url, item.table, item.query, root=self.root))
        if isinstance(item, KafkaSource):  # OpenLineage naming: kafka://{first broker}, the topic
            return _dataset(f"kafka://{item.bootstrap.split(',')[0].strip()}", item.topic)
        return _dataset(self.namespace, repr(item))

    def _lake_dataset(self, name: str) -> dict[str, Any]:
        schema, _, table = name.partition(".")
        path = self.lake_root / schema / table if table else self.lake_root / "main" / schema
        return _dataset("file", str(path))

    def _outputs(self, spec: Any, outcome: Any, table: Any, checks: Sequence[Any]) -> list[dict[str, Any]]:
        output = self._lake_dataset(spec.name)
        if outcome is None or table is None:
            return [output]
        import pyarrow as pa

        schema = pa.schema(table.schema().to_arrow())
        output["facets"]["schema"] = facet("schema", fields=[{"name": f.name, "type": str(f.type)} for f in schema])
        output["facets"]["version"] = facet("version", datasetVersion=str(table.version()))
        traced = self._column_lineage(spec, schema.names)
        if traced:
            output["facets"]["columnLineage"] = facet("columnLineage", fields=traced)
        if checks:
            output["facets"]["dataQualityAssertions"] = facet("dataQualityAssertions", assertions=[
                {"assertion": c.name, "success": bool(c.passed)} for c in checks])
        if outcome.status == "success" and outcome.rows_out is not None:
            output["outputFacets"] = {"outputStatistics": facet("outputStatistics", rowCount=int(outcome.rows_out))}
        outputs = [output]
        if outcome.rows_quarantined:
            quarantine = self._lake_dataset(f"{spec.name}__quarantine")
            quarantine["outputFacets"] = {"outputStatistics": facet("outputStatistics",
                                                                    rowCount=int(outcome.rows_quarantined))}
            outputs.append(quarantine)
        return outputs

    def _column_lineage(self, spec: Any, columns: Sequence[str]) -> dict[str, Any]:
        """Which input columns each output column of a SQL model is computed from, traced by
        sqlglot over the model's query and its upstream tables' schemas (a column sqlglot cannot
        trace, or computed from no column such as ``count(*)``, is left out)."""
        query = getattr(spec.transform, "query", None)
        if not isinstance(query, str):
            return {}
        import pyarrow as pa
        from deltalake import DeltaTable
        from sqlglot import exp, parse_one
        from sqlglot.lineage import lineage

        from headrace.spec.tables import TableRef

        schemas: dict[str, dict[str, str]] = {}
        datasets: dict[str, dict[str, Any]] = {}
        for key, item in spec.inputs.items():
            if not isinstance(item, TableRef):
                continue
            dataset = self._lake_dataset(item.name)
            try:
                fields = pa.schema(DeltaTable(dataset["name"]).schema().to_arrow())
            except Exception:  # not built yet, or unreadable: nothing to trace against
                continue
            schemas[key] = {f.name: "VARCHAR" for f in fields}  # names are what lineage needs
            datasets[key] = dataset
        if not schemas:
            return {}
        parsed = parse_one(query, dialect="duckdb")
        traced: dict[str, Any] = {}
        for column in columns:
            try:
                node = lineage(column, parsed, schema=schemas, dialect="duckdb")
            except Exception:  # sqlglot cannot trace this column; the others still are
                continue
            found = []
            for leaf in node.walk():
                if leaf.downstream or not isinstance(leaf.source, exp.Table) or leaf.source.name not in datasets:
                    continue
                source = datasets[leaf.source.name]
                item = {"namespace": source["namespace"], "name": source["name"], "field": leaf.name.split(".")[-1]}
                if item not in found:
                    found.append(item)
            if found:
                traced[column] = {"inputFields": found}
        return traced

    # ---- delivery -----------------------------------------------------------------------
    def _send(self, event: Mapping[str, Any]) -> None:
        text = json.dumps(event, default=str)
        with self._lock:  # tables finish on several threads; file lines must not interleave
            if self.config.file:
                path = Path(self.config.file)
                path = path if path.is_absolute() else self.root / path
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    with path.open("a", encoding="utf-8") as handle:
                        handle.write(text + "\n")
                except OSError as exc:
                    log.warning("lineage: cannot append to %s: %s", path, exc)
            if self._http:
                self._post(text)

    def _post(self, text: str) -> None:
        url = f"{self.config.url}/{self.config.endpoint.lstrip('/')}"
        headers = {"Content-Type": "application/json", "User-Agent": f"headrace/{__version__}"}
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        request = urllib.request.Request(url, data=text.encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.config.timeout_seconds) as response:
                response.read()
        except (urllib.error.URLError, OSError, ValueError) as exc:
            self._http = False  # one warning, not one per event; the run goes on
            reason = getattr(exc, "reason", None) or exc
            log.warning("lineage: cannot send events to %s (%s); no more are sent to it in this run", url, reason)


def _dataset(namespace: str, name: str) -> dict[str, Any]:
    return {"namespace": namespace, "name": name,
            "facets": {"dataSource": facet("dataSource", name=namespace, uri=namespace)}}


def _folder(root: Path, pattern: str) -> Path:
    """A glob's folder (the part before the first wildcard), absolute."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts:
        if any(mark in part for mark in "*?["):
            break
        fixed.append(part)
    folder = Path(*fixed) if fixed else Path()
    if fixed and len(fixed) == len(parts):  # one file, no wildcard
        folder = folder.parent
    return (folder if folder.is_absolute() else root / folder).resolve()


def database_dataset(url: str, table: str | None, query: str | None, *, root: Path) -> tuple[str, str]:
    """OpenLineage's namespace and name of a database source's table (a query is named by
    its database and a digest of its text: it has no table name of its own)."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+")[0].lower()
    if scheme == "sqlite":  # sqlite:///relative.db (to the project) or sqlite:////absolute.db
        path = Path(url.split(":///", 1)[1].split("?", 1)[0])
        name = str((path if path.is_absolute() else root / path).resolve())
        return "file", f"{name}/{table}" if table else name
    scheme = {"postgresql": "postgres", "mariadb": "mysql"}.get(scheme, scheme)
    default_port = {"postgres": 5432, "mysql": 3306}.get(scheme)
    port = parts.port or default_port
    namespace = f"{scheme}://{parts.hostname or 'localhost'}" + (f":{port}" if port else "")
    database = parts.path.lstrip("/") or "default"
    if table:
        qualified = table if scheme == "mysql" or "." in table else f"public.{table}"
        return namespace, f"{database}.{qualified}"
    import hashlib

    return namespace, f"{database}.query_{hashlib.sha256((query or '').encode()).hexdigest()[:12]}"
