"""SCD Type 2 publish: a snapshot becomes new versions of a dimension, in ONE Delta commit.

Everything row-sized happens in the engine's SQL (DuckDB); Python only sees file lists and
counts, so memory does not grow with the table:

1. the staged snapshot gets each row's version time (``updated_at`` or the run's time) and the
   hash of its tracked columns; NULL keys and ambiguous duplicates stop the run;
2. a narrow scan of the table's live files (key, ``valid_from``, ``row_hash``, file name, row
   number) finds the current versions; joined with the snapshot, unchanged keys drop out and
   what remains is a small change set;
3. without ``updated_at`` a change closes the current version at the run's time; with it, the
   changed keys' whole histories are merged with their new versions in time order, so a late
   row splits the version it falls into (``_HISTORY_SQL``);
4. one COPY writes the new versions plus the rows of every file holding a version whose
   ``valid_to`` changes (the files' other rows copied as they are); untouched files stay;
5. one Delta commit adds the new files and removes the rewritten ones. No change, no commit.

The table's columns are the input columns plus ``valid_from``, ``valid_to`` (NULL while
current), ``is_current`` and ``row_hash``. ``row_hash`` is md5 over the tracked columns' JSON
text with their names (NULLs left out, so a column that is NULL everywhere changes nothing);
the set of tracked columns is recorded in every commit, and when it changes the next run
recomputes every stored hash (rewriting the table once) instead of versioning every key.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import urllib.parse
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from deltalake import CommitProperties, Schema
from deltalake.transaction import AddAction, RemoveAction, create_table_with_add_actions

from headrace.delta.catalog import META_PREFIX, Lake
from headrace.delta.partitions import partition_text
from headrace.delta.writer import (
    PublishRequest,
    PublishResult,
    _commit_properties,
    _open,
    _same_type,
    _version,
)
from headrace.engines.base import StagedResult, StageTarget, delta_schema
from headrace.errors import DataQualityError, DefinitionError, EngineError
from headrace.sources.files import quote_ident, sql_string
from headrace.spec.write_modes import SCD2_COLUMNS, Scd2

VALID_FROM, VALID_TO, IS_CURRENT, ROW_HASH = SCD2_COLUMNS
_SCD2_TYPES = {VALID_FROM: "TIMESTAMP", VALID_TO: "TIMESTAMP", IS_CURRENT: "BOOLEAN", ROW_HASH: "VARCHAR"}
HASH_VERSION = 1
SIGNATURE_KEY = f"{META_PREFIX}scd2_hash"
_SIGNATURE_LOOKBACK = 50  # commits searched for the hash signature

# The history merge for keys whose versions change when updated_at is given. Per key, the
# events are: existing versions (src 0), the ends of closed versions not followed by another
# version (kind 'd', "deleted at"), and the new versions (src 1). At one time, a new version
# equal to the existing one is a replay (dropped); a different one replaces it (a correction).
# Then runs of consecutive equal versions collapse: a run holding an existing version keeps it
# and drops the new ones (a late row equal to a neighbour is a no-op); a run of new versions
# keeps its first. Each kept version ends where the next kept event starts.
_HISTORY_SQL = """
CREATE TEMP TABLE {ev} AS
WITH h AS (
    SELECT {k}, {vf} AS __hr_evf, {vt} AS __hr_evt, {rh} AS __hr_erh, __hr_f, __hr_r
    FROM {ex} SEMI JOIN (SELECT {k} FROM {d} WHERE __hr_in) AS tk USING ({k})
), e0 AS (
    SELECT {k}, __hr_evf AS __hr_t, 'v' AS __hr_kind, 0 AS __hr_src, __hr_erh AS __hr_hv, __hr_f, __hr_r,
           __hr_evt AS __hr_old_vt FROM h
    UNION ALL
    SELECT {k}, __hr_evt, 'd', 0, NULL, NULL, NULL, NULL FROM (
        SELECT {k}, __hr_evt, lead(__hr_evf) OVER (PARTITION BY {k} ORDER BY __hr_evf) AS __hr_nxt FROM h
    ) WHERE __hr_evt IS NOT NULL AND __hr_nxt IS DISTINCT FROM __hr_evt
    UNION ALL
    SELECT {k}, __hr_ts, 'v', 1, __hr_h, NULL, NULL, NULL
    FROM {inc} SEMI JOIN (SELECT {k} FROM {d} WHERE __hr_in) AS tk USING ({k})
)
SELECT *,
    max(CASE WHEN __hr_kind = 'v' AND __hr_src = 1 THEN __hr_hv END) OVER w AS __hr_n_h,
    max(CASE WHEN __hr_kind = 'v' AND __hr_src = 0 THEN __hr_hv END) OVER w AS __hr_e_h,
    bool_or(__hr_kind = 'v') OVER w AS __hr_any_v
FROM e0 WINDOW w AS (PARTITION BY {k}, __hr_t);

CREATE TEMP TABLE {fin} AS
WITH live AS (
    SELECT * FROM {ev}
    WHERE NOT coalesce(__hr_kind = 'd' AND __hr_any_v, false)
      AND NOT coalesce(__hr_kind = 'v' AND __hr_src = 0 AND __hr_n_h <> __hr_hv, false)
      AND NOT coalesce(__hr_kind = 'v' AND __hr_src = 1 AND __hr_e_h = __hr_hv, false)
), b AS (
    SELECT *, CASE WHEN lag(__hr_kind) OVER o IS DISTINCT FROM __hr_kind
                     OR (__hr_kind = 'v' AND lag(__hr_hv) OVER o IS DISTINCT FROM __hr_hv) THEN 1 ELSE 0 END
                  AS __hr_brk
    FROM live WINDOW o AS (PARTITION BY {k} ORDER BY __hr_t, __hr_src)
), g AS (
    SELECT *, sum(__hr_brk) OVER (PARTITION BY {k} ORDER BY __hr_t, __hr_src ROWS UNBOUNDED PRECEDING)
              AS __hr_run FROM b
), kept AS (
    SELECT * FROM (
        SELECT *, bool_or(__hr_src = 0) OVER (PARTITION BY {k}, __hr_run) AS __hr_run_e,
               row_number() OVER (PARTITION BY {k}, __hr_run ORDER BY __hr_t, __hr_src) AS __hr_rn
        FROM g
    ) WHERE __hr_src = 0 OR (NOT __hr_run_e AND __hr_rn = 1)
)
SELECT *, lead(__hr_t) OVER (PARTITION BY {k} ORDER BY __hr_t, __hr_src) AS __hr_new_vt FROM kept;

INSERT INTO {upd}
SELECT __hr_f, __hr_r, __hr_new_vt, false FROM {fin}
WHERE __hr_kind = 'v' AND __hr_src = 0 AND __hr_new_vt IS DISTINCT FROM __hr_old_vt
UNION ALL
SELECT __hr_f, __hr_r, NULL, true FROM {ev}
WHERE __hr_kind = 'v' AND __hr_src = 0 AND __hr_n_h IS NOT NULL AND __hr_n_h <> __hr_hv;

INSERT INTO {nv} SELECT {k}, __hr_t, __hr_new_vt FROM {fin} WHERE __hr_kind = 'v' AND __hr_src = 1;
"""


@dataclass(frozen=True)
class _LiveFile:
    """A file of the table's current version: where it is and what removing it needs."""

    abs_path: str
    log_path: str
    size: int
    partitions: dict[str, str | None]


def publish_scd2(lake: Lake, req: PublishRequest, mode: Scd2) -> PublishResult:
    """Publish ``req.staged`` (a snapshot of the dimension) as SCD2 versions in one commit."""
    return _Scd2Publish(lake, req, mode).run()


class _Scd2Publish:
    def __init__(self, lake: Lake, req: PublishRequest, mode: Scd2) -> None:
        self.lake = lake
        self.req = req
        self.mode = mode
        self.session = req.session
        self.name = req.spec.name
        self.table = _open(lake, req)
        # one time for the whole run: every version this run opens or closes carries it
        self.run_ts = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        tag = uuid.uuid4().hex[:10]
        self.t = {k: f"__hr_scd2_{tag}_{k}"
                  for k in ("stg", "inc", "incd", "d", "ev", "fin", "upd", "nv", "ex", "exr", "aff", "affr")}
        self.inc = self.t["inc"]
        self.partition_by = tuple(req.spec.partition_by)

    # ---- driver ------------------------------------------------------------------------
    def run(self) -> PublishResult:
        try:
            return self._run()
        finally:
            self._drop()

    def _run(self) -> PublishResult:
        files = self._live_files()
        # one engine for the whole publish: its temp tables live in that session
        self.session = self.req.session.for_input(sum(f.size for f in self.req.staged.files)
                                                  + sum(f.size for f in files))
        self.session.bind_staged(self.req.staged, self.t["stg"])
        self._columns()
        self._incoming()
        self.rehash = self.table is not None and bool(files) and self._stored_signature() != self.signature
        self.ex = self._scan(files, self.t["ex"])
        self._run_sql(f"CREATE TEMP TABLE {self.t['upd']} (__hr_f VARCHAR, __hr_r BIGINT, __hr_vt TIMESTAMP, __hr_gone BOOLEAN)")
        keys = ", ".join(f"{q(k)} {self.types[k]}" for k in self.mode.key)
        self._run_sql(f"CREATE TEMP TABLE {self.t['nv']} ({keys}, __hr_vf TIMESTAMP, __hr_vt TIMESTAMP)")
        self._classify()
        if self.mode.updated_at:
            self._history_changes()
        else:
            self._snapshot_changes()
        inserted, closed, replaced = self._run_sql(
            f"SELECT (SELECT count(*) FROM {self.t['nv']}), "
            f"(SELECT count(*) FROM {self.t['upd']} WHERE NOT __hr_gone), "
            f"(SELECT count(*) FROM {self.t['upd']} WHERE __hr_gone)"
        )[0]
        if self.table is not None and not (inserted or closed or replaced or self.rehash):
            return PublishResult(None, "scd2", 0, skipped="no changes: every key's tracked columns are unchanged")
        if self.rehash:
            affected = list(files)
        else:
            rewritten = {r[0] for r in self._run_sql(f"SELECT DISTINCT __hr_f FROM {self.t['upd']}")}
            affected = [f for f in files if f.abs_path in rewritten]
        out = self.session.write_query(self._output_sql(affected), self._target())
        try:
            version = self._commit(out, affected, counts={
                "inserted": inserted, "closed": closed, "replaced": replaced, "files_rewritten": len(affected)})
        except BaseException:
            out.discard()
            raise
        return PublishResult(version, "scd2", int(inserted) + int(closed) + int(replaced))

    def _run_sql(self, sql: str) -> list[tuple[Any, ...]]:
        return self.session.run_sql(sql)

    def _drop(self) -> None:
        views = ("stg", "ex", "aff")
        for kind, name in [("TABLE", n) for k, n in self.t.items() if k not in views] + [
                ("VIEW", self.t[k]) for k in views]:
            try:
                self._run_sql(f"DROP {kind} IF EXISTS {name}")
            except Exception:  # cleanup; the session is closed next anyway
                pass

    # ---- columns -----------------------------------------------------------------------
    def _columns(self) -> None:
        """The input columns (table order), their engine types, the tracked columns."""
        staged = list(self.req.staged.schema.names)
        where = f"table {self.name!r}"
        if self.table is None:
            clash = [c for c in staged if c in SCD2_COLUMNS]
            if clash:
                raise DefinitionError(
                    f"{where}: the result has column(s) {clash}, which an scd2 table writes itself",
                    hint=f"rename or drop them in the transform; scd2 adds {', '.join(SCD2_COLUMNS)}",
                    table=self.name,
                )
            inputs = staged
            self.out_columns = [*inputs, *SCD2_COLUMNS]
        else:
            schema = pa.schema(self.table.schema().to_arrow())
            absent = [c for c in SCD2_COLUMNS if c not in schema.names]
            if absent:
                raise EngineError(
                    f"{where}: the existing table is not an scd2 table (it has no {absent})",
                    hint="write the scd2 result to a new table name",
                    table=self.name,
                )
            inputs = [c for c in schema.names if c not in SCD2_COLUMNS]
            self.out_columns = list(schema.names)
            new = [c for c in staged if c not in SCD2_COLUMNS and c not in inputs]
            gone = [c for c in inputs if c not in staged]
            incoming = delta_schema(self.req.staged.schema)
            changed = [
                f"{c} {schema.field(c).type} -> {incoming.field(c).type}"
                for c in inputs if c in staged and not _same_type(schema.field(c).type, incoming.field(c).type)
            ]
            if new or gone or changed:
                parts = [f"{label} {cols}" for label, cols in
                         (("new columns", new), ("missing columns", gone), ("changed types", changed)) if cols]
                raise EngineError(
                    f"{where}: the snapshot does not match the scd2 table's columns ({'; '.join(parts)})",
                    hint="an scd2 table keeps its columns (its history is never rewritten): select the "
                         "table's columns in the transform, or use schema='discard' to drop new ones",
                    table=self.name,
                )
        self.inputs = inputs
        self.types = self.session.column_types(self.t["stg"])
        named = {"key": list(self.mode.key)}
        if isinstance(self.mode.track, tuple):
            named["track"] = list(self.mode.track)
        if self.mode.updated_at:
            named["updated_at"] = [self.mode.updated_at]
        for what, cols in named.items():
            missing = [c for c in cols if c not in inputs]
            if missing:
                raise DefinitionError(
                    f"{where}: scd2 {what} column(s) {missing} are not in the result",
                    hint=f"result columns: {', '.join(inputs)}",
                    table=self.name,
                )
        reserved = [c for c in self.partition_by if c in SCD2_COLUMNS]
        if reserved:
            raise DefinitionError(f"{where}: an scd2 table cannot be partitioned by {reserved}",
                                  hint="partition by input columns", table=self.name)
        if self.mode.track == "all":
            skip = {*self.mode.key, self.mode.updated_at}
            self.tracked = [c for c in inputs if c not in skip]
        else:
            self.tracked = list(self.mode.track)
        text = json.dumps({"v": HASH_VERSION, "track": sorted(self.tracked)})
        self.signature = hashlib.md5(text.encode()).hexdigest()[:16]  # a label, not a secret

    def _hash_sql(self) -> str:
        """md5 over ``"name":json`` of each non-NULL tracked column, sorted by name."""
        parts = [
            f"{sql_string(json.dumps(c) + ':')} || CAST(to_json({q(c)}) AS VARCHAR)" for c in sorted(self.tracked)
        ]
        return f"md5(concat_ws(chr(31), {', '.join(parts) or chr(39) * 2}))"

    def _ts_sql(self) -> str:
        column = self.mode.updated_at
        if column is None:
            return self._run_ts_sql()
        if self.types.get(column, "").upper().startswith("TIMESTAMP WITH TIME ZONE"):
            return f"timezone('UTC', {q(column)})"
        return f"CAST({q(column)} AS TIMESTAMP)"

    def _run_ts_sql(self) -> str:
        return f"TIMESTAMP '{self.run_ts.isoformat(sep=' ')}'"

    # ---- the snapshot ------------------------------------------------------------------
    def _incoming(self) -> None:
        """The snapshot with each row's version time and hash, checked for key problems."""
        cols = ", ".join(q(c) for c in self.inputs)
        self.session.bind_hashed(
            self.inc, f"SELECT {cols}, {self._ts_sql()} AS __hr_ts FROM {self.t['stg']}", self._hash_sql(), "__hr_h"
        )
        keys = list(self.mode.key)
        k = ", ".join(q(c) for c in keys)
        label = ", ".join(keys)
        where = f"table {self.name!r}"
        nulls = " OR ".join(f"{q(c)} IS NULL" for c in keys)
        null_keys, null_ts = self._run_sql(
            f"SELECT count(*) FILTER (WHERE {nulls}), count(*) FILTER (WHERE __hr_ts IS NULL) FROM {self.inc}"
        )[0]
        if null_keys:
            raise DataQualityError(
                f"{where}: {null_keys} row(s) of the snapshot have a NULL scd2 key ({label}); nothing was published",
                hint="filter them out or fill the key in the transform",
                table=self.name,
            )
        if self.mode.updated_at is None:
            (dupes,) = self._run_sql(
                f"SELECT count(*) FROM (SELECT {k} FROM {self.inc} GROUP BY {k} HAVING count(*) > 1)"
            )[0]
            if dupes:
                sample = self._run_sql(
                    f"SELECT {k}, count(*) AS __hr_n FROM {self.inc} GROUP BY {k} HAVING count(*) > 1 "
                    f"ORDER BY __hr_n DESC, {k} LIMIT 5"
                )
                raise DataQualityError(
                    f"{where}: the scd2 key ({label}) is not unique in the snapshot: {dupes} duplicated "
                    f"key(s), e.g. {_sample(sample, keys)}; nothing was published",
                    hint="without updated_at a snapshot holds one row per key: deduplicate in the transform "
                         "(QUALIFY row_number() OVER (PARTITION BY ...) = 1), or set updated_at so that "
                         "each row is a version",
                    table=self.name,
                )
            return
        if null_ts:
            raise DataQualityError(
                f"{where}: {null_ts} row(s) of the snapshot have a NULL {self.mode.updated_at!r}; "
                "nothing was published",
                hint="updated_at gives each version's time: fill it in the transform",
                table=self.name,
            )
        conflicts, extra = self._run_sql(
            f"SELECT count(*) FILTER (WHERE c), coalesce(sum(n - 1), 0) FROM ("
            f"SELECT count(*) AS n, min(__hr_h) <> max(__hr_h) AS c FROM {self.inc} "
            f"GROUP BY {k}, __hr_ts HAVING count(*) > 1)"
        )[0]
        if conflicts:
            sample = self._run_sql(
                f"SELECT {k}, __hr_ts FROM {self.inc} GROUP BY {k}, __hr_ts "
                f"HAVING min(__hr_h) <> max(__hr_h) ORDER BY {k}, __hr_ts LIMIT 5"
            )
            raise DataQualityError(
                f"{where}: {conflicts} scd2 key(s) ({label}) have two rows with the same "
                f"{self.mode.updated_at!r} but different tracked values, e.g. "
                f"{_sample(sample, [*keys, self.mode.updated_at])}; nothing was published",
                hint="a key has one version per time: deduplicate in the transform, or fix the source's "
                     "timestamps",
                table=self.name,
            )
        if extra:  # identical rows repeated: one version
            cols = ", ".join(q(c) for c in [*self.inputs, "__hr_ts", "__hr_h"])
            self._run_sql(
                f"CREATE TEMP TABLE {self.t['incd']} AS SELECT {cols} FROM (SELECT *, row_number() OVER "
                f"(PARTITION BY {k}, __hr_ts ORDER BY __hr_h) AS __hr_rn FROM {self.inc}) WHERE __hr_rn = 1"
            )
            self.inc = self.t["incd"]

    # ---- the table ---------------------------------------------------------------------
    def _live_files(self) -> list[_LiveFile]:
        if self.table is None:
            return []
        actions = pa.table(self.table.get_add_actions(flatten=False))
        paths = actions.column("path").to_pylist()
        sizes = actions.column("size_bytes").to_pylist()
        parts = actions.column("partition").to_pylist() if "partition" in actions.column_names else None
        root = self.lake.path(self.name)
        files = []
        for i, path in enumerate(paths):
            raw = (parts[i] if parts is not None else None) or {}
            files.append(_LiveFile(
                abs_path=str(root / urllib.parse.unquote(path)),
                log_path=path,
                size=int(sizes[i]),
                partitions={c: partition_text(raw.get(c)) for c in self.partition_by},
            ))
        return files

    def _stored_signature(self) -> str | None:
        """The tracked-columns signature of the newest scd2 commit (None: unknown)."""
        assert self.table is not None
        for entry in self.table.history(_SIGNATURE_LOOKBACK):
            if SIGNATURE_KEY in entry:
                return str(entry[SIGNATURE_KEY])
        return None

    def _scan(self, files: Sequence[_LiveFile], name: str) -> str:
        """Bind ``name`` to the rows of ``files`` with ``__hr_f`` (file) and ``__hr_r`` (row
        number in the file), row hashes recomputed when the tracked columns changed; return
        the name to read."""
        if not files:
            cols = [f"CAST(NULL AS {self.types[c]}) AS {q(c)}" for c in self.inputs]
            cols += [f"CAST(NULL AS {_SCD2_TYPES[c]}) AS {q(c)}" for c in SCD2_COLUMNS]
            cols += ["CAST(NULL AS VARCHAR) AS __hr_f", "CAST(NULL AS BIGINT) AS __hr_r"]
            self._run_sql(f"CREATE TEMP TABLE {name}r AS SELECT {', '.join(cols)} WHERE false")
            return f"{name}r"
        assert self.table is not None
        schema = pa.schema(self.table.schema().to_arrow())
        self.session.bind_files(name, [(f.abs_path, f.partitions) for f in files], schema, self.partition_by)
        if not self.rehash:
            return name
        listed = ", ".join(q(c) for c in [*self.inputs, *SCD2_COLUMNS, "__hr_f", "__hr_r"] if c != ROW_HASH)
        self.session.bind_hashed(f"{name}r", f"SELECT {listed} FROM {name}", self._hash_sql(), ROW_HASH)
        return f"{name}r"

    # ---- the change set ----------------------------------------------------------------
    def _classify(self) -> None:
        """Join the snapshot with the current versions; keep only keys that may change.

        ``d``: one row per such key: ``__hr_in`` (in the snapshot) and its current version's
        file, row and ``valid_from`` (NULL when it has none).
        """
        k = ", ".join(q(c) for c in self.mode.key)
        cur = (f"(SELECT {k}, {q(VALID_FROM)} AS __hr_cvf, {q(ROW_HASH)} AS __hr_crh, __hr_f, __hr_r "
               f"FROM {self.ex} WHERE {q(IS_CURRENT)})")
        keep_absent = "" if self.mode.deletes == "close" else " AND i.__hr_n IS NOT NULL"
        if self.mode.updated_at is None:
            incoming = f"(SELECT {k}, 1 AS __hr_n, __hr_ts AS __hr_mn, __hr_h AS __hr_ih FROM {self.inc})"
            changed = "i.__hr_ih IS DISTINCT FROM c.__hr_crh"
        else:
            incoming = (f"(SELECT {k}, count(*) AS __hr_n, min(__hr_ts) AS __hr_mn, min(__hr_h) AS __hr_ih "
                        f"FROM {self.inc} GROUP BY {k})")
            # one version, equal to the current one and not older: nothing to do
            changed = ("NOT coalesce(i.__hr_n = 1 AND i.__hr_ih = c.__hr_crh AND i.__hr_mn >= c.__hr_cvf, "
                       "false)")
        self._run_sql(
            f"CREATE TEMP TABLE {self.t['d']} AS SELECT {k}, i.__hr_n IS NOT NULL AS __hr_in, "
            f"c.__hr_f, c.__hr_r, c.__hr_cvf AS __hr_vf FROM {incoming} AS i FULL OUTER JOIN {cur} AS c USING ({k}) "
            f"WHERE {changed}{keep_absent}"
        )

    def _snapshot_changes(self) -> None:
        """No updated_at: a change or a delete closes the current version at the run's time."""
        k = ", ".join(q(c) for c in self.mode.key)
        ts = self._run_ts_sql()
        (late,) = self._run_sql(f"SELECT count(*) FROM {self.t['d']} WHERE __hr_vf >= {ts}")[0]
        if late:
            raise EngineError(
                f"table {self.name!r}: {late} current version(s) start at or after this run's time "
                f"({self.run_ts.isoformat(sep=' ')}); the clock went backwards",
                hint="check the machine's clock; without updated_at versions start at the run's time",
                table=self.name,
            )
        self._run_sql(f"INSERT INTO {self.t['nv']} SELECT {k}, {ts}, NULL FROM {self.t['d']} WHERE __hr_in")
        self._run_sql(
            f"INSERT INTO {self.t['upd']} SELECT __hr_f, __hr_r, {ts}, false FROM {self.t['d']} "
            "WHERE __hr_f IS NOT NULL"
        )

    def _history_changes(self) -> None:
        """updated_at: merge the changed keys' histories with their new versions."""
        k = ", ".join(q(c) for c in self.mode.key)
        self._run_sql(
            f"INSERT INTO {self.t['upd']} SELECT __hr_f, __hr_r, greatest({self._run_ts_sql()}, __hr_vf), false "
            f"FROM {self.t['d']} WHERE NOT __hr_in AND __hr_f IS NOT NULL"
        )
        sql = _HISTORY_SQL.format(
            k=k, ex=self.ex, d=self.t["d"], inc=self.inc, ev=self.t["ev"], fin=self.t["fin"],
            upd=self.t["upd"], nv=self.t["nv"], vf=q(VALID_FROM), vt=q(VALID_TO), rh=q(ROW_HASH),
        )
        for statement in sql.split(";"):
            if statement.strip():
                self._run_sql(statement)

    # ---- output ------------------------------------------------------------------------
    def _output_sql(self, affected: Sequence[_LiveFile]) -> str:
        """The rows of the rewritten files (versions closed, replaced ones left out) and the new
        versions, in the table's column order. Column lists are spelled out (no ``* EXCLUDE``,
        no ``UNION BY NAME``): the same SQL runs on Spark."""
        k = list(self.mode.key)
        on = " AND ".join(f"i.{q(c)} = nv.{q(c)}" for c in k)
        body_cols = [*self.inputs, VALID_FROM, VALID_TO, ROW_HASH]
        new_rows = (
            f"SELECT {', '.join(f'i.{q(c)}' for c in self.inputs)}, nv.__hr_vf AS {q(VALID_FROM)}, "
            f"nv.__hr_vt AS {q(VALID_TO)}, i.__hr_h AS {q(ROW_HASH)} "
            f"FROM {self.inc} AS i JOIN {self.t['nv']} AS nv ON {on} AND i.__hr_ts = nv.__hr_vf"
        )
        body = new_rows
        if affected:
            scan = self._scan(affected, self.t["aff"])
            old = [f"CASE WHEN u.__hr_r IS NULL THEN e.{q(c)} ELSE u.__hr_vt END AS {q(c)}" if c == VALID_TO
                   else f"e.{q(c)}" for c in body_cols]
            old_rows = (
                f"SELECT {', '.join(old)} FROM {scan} AS e LEFT JOIN {self.t['upd']} AS u "
                f"ON e.__hr_f = u.__hr_f AND e.__hr_r = u.__hr_r WHERE u.__hr_gone IS NOT TRUE"
            )
            body = f"{old_rows} UNION ALL {new_rows}"
        cols = [
            f"{q(VALID_TO)} IS NULL AS {q(IS_CURRENT)}" if c == IS_CURRENT else q(c) for c in self.out_columns
        ]
        return f"SELECT {', '.join(cols)} FROM ({body})"

    def _target(self) -> StageTarget:
        return self.req.settings.target(self.lake.path(self.name), self.partition_by)

    def _commit(self, out: StagedResult, affected: Sequence[_LiveFile], *, counts: dict[str, int]) -> int:
        base = _commit_properties(self.req)
        meta = dict(base.custom_metadata or {})
        meta[SIGNATURE_KEY] = self.signature
        meta.update({f"{META_PREFIX}scd2_{k}": str(int(v)) for k, v in counts.items()})
        props = CommitProperties(custom_metadata=meta, max_commit_retries=0)
        adds = [
            AddAction(path=f.rel_path, size=f.size, partition_values=f.partition_values,
                      modification_time=f.modification_time, data_change=True, stats=f.stats)
            for f in out.files
        ]
        partition_by = list(self.partition_by) or None
        if self.table is None:
            create_table_with_add_actions(
                str(self.lake.path(self.name)), Schema.from_arrow(delta_schema(out.schema)), adds, mode="error",
                partition_by=partition_by, commit_properties=props,
            )
        else:
            now = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
            removes = [
                # the log holds percent-encoded paths; deltalake encodes what it is given
                RemoveAction(path=urllib.parse.unquote(f.log_path), data_change=True, deletion_timestamp=now,
                             size=f.size, partition_values=f.partitions)
                for f in affected
            ]
            self.table.create_write_transaction(
                [*adds, *removes], mode="append", schema=delta_schema(out.schema), partition_by=partition_by,
                commit_properties=props,
            )
        return _version(self.lake, self.req)


def q(name: str) -> str:
    return quote_ident(name)


def _sample(rows: list[tuple[Any, ...]], columns: Sequence[str]) -> str:
    shown = []
    for row in rows:
        values = row[: len(columns)]
        shown.append(", ".join(f"{c}={v!s}" for c, v in zip(columns, values, strict=True)))
    return "; ".join(f"({s})" for s in shown)
