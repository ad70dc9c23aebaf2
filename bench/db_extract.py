"""Database extract benchmark: a PostgreSQL table -> Arrow -> a Delta table.

A table of ``--rows`` orders (default 5,000,000; bigint, int, smallint, numeric(12,2), text,
varchar, timestamptz, date, boolean, timestamp) is loaded into PostgreSQL once with
``INSERT ... SELECT generate_series`` and reused. Each repetition then times, every command in its
own process:

- headrace: ``headrace.sources.database.read_database`` (ADBC, COPY binary -> Arrow, numeric
  -> decimal128(12, 2), the ``updated_at`` watermark tracked) streamed into
  ``deltalake.write_deltalake``;
- baseline: plain psycopg ``COPY (SELECT ...) TO STDOUT (FORMAT csv)`` streamed through
  ``pyarrow.csv.open_csv`` with the same explicit Arrow types, into the same Delta write;

and the same two readers draining to Arrow only (no Delta write), to show where time goes. Both
Delta tables are read back and must hold every row with the same schema. Prints seconds, rows/s,
peak RSS and the headrace/baseline ratio.

    python bench/db_extract.py [--rows N] [--repeat K] [--pg-url URL] [--work DIR] [--json]

Everything heavy runs in child processes started with an internal mode as the first argument
(``_load``, ``_headrace``, ``_baseline``, ``_inspect``), so this process stays small.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import DEFAULT_WORK, Measured, bench_main, clean_env, fail, measure, median, reset_dir

SCRIPT = str(Path(__file__).resolve())
DEFAULT_PG_URL = os.environ.get(
    "HEADRACE_BENCH_PG_URL", os.environ.get("HEADRACE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
)
TARGET_FILE_SIZE = 128 * 1024 * 1024
CHUNK_ROWS = 100_000

CREATE_SQL = """
DROP TABLE IF EXISTS {table};
CREATE TABLE {table} (
    order_id bigint PRIMARY KEY,
    customer_id integer,
    product_id integer,
    quantity smallint,
    amount numeric(12, 2),
    currency text,
    channel varchar(16),
    order_ts timestamptz,
    order_date date,
    paid boolean,
    updated_at timestamp
);
INSERT INTO {table}
SELECT i, 1 + (i * 7919) % 50000, 1 + (i * 104729) % 2000, 1 + i % 5,
    ((i * 31337) % 100000) / 100.0,
    (ARRAY['EUR', 'USD', 'GBP', 'CHF'])[1 + i % 4],
    (ARRAY['web', 'app', 'store', 'phone'])[1 + (i / 7) % 4],
    timestamptz '2024-01-01 00:00:00+00' + make_interval(secs => i * 0.5),
    date '2024-01-01' + (i / 172800)::int,
    i % 3 = 0,
    timestamp '2024-01-01' + make_interval(secs => i)
FROM generate_series(0::bigint, {rows}::bigint - 1) AS i;
ANALYZE {table};
"""

COLUMNS = ("order_id", "customer_id", "product_id", "quantity", "amount", "currency", "channel",
           "order_ts", "order_date", "paid", "updated_at")


def arrow_types() -> dict[str, Any]:
    """The Arrow type of each column, given to the CSV baseline (headrace finds them itself)."""
    import pyarrow as pa

    return {
        "order_id": pa.int64(), "customer_id": pa.int32(), "product_id": pa.int32(), "quantity": pa.int16(),
        "amount": pa.decimal128(12, 2), "currency": pa.string(), "channel": pa.string(),
        "order_ts": pa.timestamp("us", tz="UTC"), "order_date": pa.date32(), "paid": pa.bool_(),
        "updated_at": pa.timestamp("us"),
    }


def write_delta(lake: str, reader: Any) -> None:
    """The same Delta write for both sides."""
    from deltalake import WriterProperties, write_deltalake

    write_deltalake(
        lake, reader, mode="overwrite", target_file_size=TARGET_FILE_SIZE,
        writer_properties=WriterProperties(compression="ZSTD"),
    )


# ---- child modes (run in their own processes) ----------------------------------------------

def child_load(url: str, table: str, rows: str) -> None:
    """Create and fill TABLE with ROWS orders unless it already holds exactly that many."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as con:
        exists = con.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()[0]  # type: ignore[index]
        if exists and con.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == int(rows):  # type: ignore[index]
            print(json.dumps({"loaded": False}))
            return
        con.execute(CREATE_SQL.format(table=table, rows=int(rows)))  # type: ignore[arg-type]
    print(json.dumps({"loaded": True}))


def child_headrace(url: str, table: str, lake: str) -> None:
    """headrace's reader -> Arrow batches -> (LAKE given) write_deltalake with the watermark."""
    from headrace.sources.database import dump_cursor, read_database
    from headrace.spec.database import database

    read = read_database(database(url, table=table, cursor="updated_at", chunk_rows=CHUNK_ROWS), root=Path.cwd())
    if lake == "-":
        rows = sum(batch.num_rows for batch in read)
    else:
        write_delta(lake, read.reader())
        rows = read.rows
    # a pipeline task commits this watermark with the data (after staging); printed here
    print(json.dumps({"rows": rows, "max_cursor": dump_cursor(read.max_cursor)}))


class _CopyStream:
    """A file-like view of psycopg's COPY output chunks, for ``pyarrow.csv.open_csv``."""

    def __init__(self, chunks: Any) -> None:
        self._chunks = iter(chunks)
        self._buffer = memoryview(b"")
        self.closed = False

    def read(self, size: int = -1) -> bytes:
        out = bytearray()
        while size < 0 or len(out) < size:
            if not self._buffer:
                try:
                    self._buffer = memoryview(next(self._chunks))
                except StopIteration:
                    break
            take = len(self._buffer) if size < 0 else min(size - len(out), len(self._buffer))
            out += self._buffer[:take]
            self._buffer = self._buffer[take:]
        return bytes(out)

    def close(self) -> None:
        self.closed = True


def child_baseline(url: str, table: str, lake: str) -> None:
    """Plain psycopg COPY ... (FORMAT csv) parsed by pyarrow.csv -> (LAKE given) write_deltalake."""
    import psycopg
    import pyarrow as pa
    import pyarrow.csv as pcsv

    types = arrow_types()
    with psycopg.connect(url) as con:
        con.execute("SET TIME ZONE 'UTC'")
        with con.cursor() as cur, cur.copy(f"COPY (SELECT {', '.join(COLUMNS)} FROM {table}) TO STDOUT (FORMAT csv)") as copy:
            reader = pcsv.open_csv(
                _CopyStream(copy),
                read_options=pcsv.ReadOptions(column_names=list(COLUMNS), block_size=8 << 20),
                convert_options=pcsv.ConvertOptions(
                    column_types=types, true_values=["t"], false_values=["f"],
                    strings_can_be_null=True, quoted_strings_can_be_null=False,
                ),
            )
            reader = pa.RecordBatchReader.from_batches(pa.schema(list(types.items())), reader)
            if lake == "-":
                rows = sum(batch.num_rows for batch in reader)
            else:
                write_delta(lake, reader)
                rows = -1
    print(json.dumps({"rows": rows}))


def child_inspect(path: str) -> None:
    """Print a Delta table's row count (from its log) and schema."""
    import pyarrow as pa
    from deltalake import DeltaTable

    table = DeltaTable(path)
    actions = pa.table(table.get_add_actions(flatten=True))
    schema = pa.schema(table.schema().to_arrow())
    print(json.dumps({
        "rows": sum(v or 0 for v in actions.column("num_records").to_pylist()),
        "files": actions.num_rows,
        "bytes": sum(actions.column("size_bytes").to_pylist()),
        "schema": [f"{f.name}:{f.type}" for f in schema],
    }))


CHILD_MODES: dict[str, Callable[..., None]] = {
    "_load": child_load,
    "_headrace": child_headrace,
    "_baseline": child_baseline,
    "_inspect": child_inspect,
}


# ---- orchestration -------------------------------------------------------------------------

class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.rows: int = args.rows
        self.repeat: int = args.repeat
        self.url: str = args.pg_url
        self.work: Path = args.work.resolve() / "db_extract"
        self.table = f"hr_bench_orders_{self.rows}"
        self.env = clean_env("HEADRACE_DEBUG", "HEADRACE_PROFILE")

    def log(self, message: str) -> None:
        print(f"[db_extract] {message}", file=sys.stderr, flush=True)

    def child(self, *args: str) -> Measured:
        return measure([sys.executable, SCRIPT, *args], env=self.env).check(" ".join(args[:1]))

    def load(self) -> None:
        self.log(f"ensuring {self.rows:,} rows in {self.table} at {self.url}")
        m = self.child("_load", self.url, self.table, str(self.rows))
        if json.loads(m.stdout)["loaded"]:
            self.log(f"  loaded in {m.seconds:.1f}s")

    def run_side(self, mode: str, lake: Path | None) -> Measured:
        if lake is not None:
            reset_dir(lake)
            lake.parent.mkdir(parents=True, exist_ok=True)
        m = self.child(mode, self.url, self.table, str(lake) if lake else "-")
        got = json.loads(m.stdout)["rows"]
        if got not in (self.rows, -1):
            fail(f"{mode} read {got:,} rows, expected {self.rows:,}")
        return m

    def inspect(self, lake: Path) -> dict[str, Any]:
        return json.loads(self.child("_inspect", str(lake)).stdout)

    def run(self) -> dict[str, Any]:
        self.load()
        lakes = {"headrace": self.work / "headrace" / "orders", "baseline": self.work / "baseline" / "orders"}
        runs: dict[str, dict[str, list[Measured]]] = {
            stage: {"headrace": [], "baseline": []} for stage in ("arrow", "delta")
        }
        for i in range(self.repeat):
            for who, mode in (("headrace", "_headrace"), ("baseline", "_baseline")):
                runs["arrow"][who].append(self.run_side(mode, None))
                runs["delta"][who].append(self.run_side(mode, lakes[who]))
            self.log(
                f"run {i + 1}/{self.repeat}: to Delta headrace {runs['delta']['headrace'][-1].seconds:.2f}s, "
                f"baseline {runs['delta']['baseline'][-1].seconds:.2f}s; to Arrow headrace "
                f"{runs['arrow']['headrace'][-1].seconds:.2f}s, baseline {runs['arrow']['baseline'][-1].seconds:.2f}s"
            )
        tables = {who: self.inspect(lake) for who, lake in lakes.items()}
        for who, got in tables.items():
            if got["rows"] != self.rows:
                fail(f"{who} Delta table holds {got['rows']:,} rows, expected {self.rows:,}")
        if tables["headrace"]["schema"] != tables["baseline"]["schema"]:
            fail(f"schemas differ: headrace {tables['headrace']['schema']} vs baseline {tables['baseline']['schema']}")
        stages = {}
        for stage, sides in runs.items():
            out: dict[str, Any] = {}
            for who, ms in sides.items():
                seconds = median([m.seconds for m in ms])
                out[who] = {"seconds": seconds, "runs": [round(m.seconds, 3) for m in ms],
                            "rows_per_s": self.rows / seconds, "peak_rss_mb": max(m.peak_rss_mb for m in ms)}
            out["ratio"] = out["headrace"]["seconds"] / out["baseline"]["seconds"]
            stages[stage] = out
        return {"benchmark": "db_extract", "rows": self.rows, "repeat": self.repeat, "cpus": os.cpu_count(),
                "stages": stages, "tables": tables}


# ---- output --------------------------------------------------------------------------------

def render(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 150)
    main = Table(
        title=f"db_extract: {report['rows']:,} PostgreSQL rows (median of {report['repeat']}, {report['cpus']} CPUs); "
              "headrace = ADBC COPY binary, baseline = psycopg COPY csv + pyarrow.csv",
        title_justify="left",
    )
    for name in ("into", "headrace s", "baseline s", "headrace rows/s", "baseline rows/s",
                 "headrace peak MB", "baseline peak MB", "ratio hr/base"):
        main.add_column(name, justify="left" if name == "into" else "right")
    for stage, label in (("delta", "Delta table"), ("arrow", "Arrow only")):
        s = report["stages"][stage]
        hr, base = s["headrace"], s["baseline"]
        main.add_row(label, f"{hr['seconds']:.2f}", f"{base['seconds']:.2f}", f"{hr['rows_per_s']:,.0f}",
                     f"{base['rows_per_s']:,.0f}", f"{hr['peak_rss_mb']:,.0f}", f"{base['peak_rss_mb']:,.0f}",
                     f"{s['ratio']:.2f}x")
    console.print(main)
    for stage in ("delta", "arrow"):
        s = report["stages"][stage]
        console.print(f"  {stage}: headrace runs {s['headrace']['runs']} s, baseline runs {s['baseline']['runs']} s")
    t = report["tables"]["headrace"]
    console.print(f"  both Delta tables: {t['rows']:,} rows, same schema ({', '.join(t['schema'])})")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/db_extract.py", description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=5_000_000, help="rows in the PostgreSQL table (default 5,000,000)")
    parser.add_argument("--repeat", type=int, default=3, help="timed repetitions; the median is reported (default 3)")
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL, help=f"PostgreSQL URL (default {DEFAULT_PG_URL})")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help=f"working folder (default {DEFAULT_WORK})")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of tables")
    args = parser.parse_args(argv)
    if args.rows < 1 or args.repeat < 1:
        parser.error("--rows and --repeat must be >= 1")
    return args


def main(argv: list[str]) -> int:
    return bench_main(argv, child_modes=CHILD_MODES, parse_args=parse_args,
                      run=lambda args: Bench(args).run(), render=render)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
