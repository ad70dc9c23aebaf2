"""File sources: each format and option read through a real run into a real Delta table."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from conftest import read_table, run_project


def _pipe(source_args: str, table: str = "bronze.t") -> str:
    return f'''
import headrace as hr
src = hr.files({source_args})

@hr.table("{table}", source=src)
def t(raw):
    return raw
'''


def test_csv_options_delimiter_header_nulls(make_project):
    root = make_project({
        "pipelines/p.py": _pipe('"data/*.tsv", format="csv", delimiter="\\t", header=False, null_string="NA"'),
        "data/a.tsv": "1\tann\tNA\n2\tbob\t3.5\n",
    })
    assert run_project(root).status == "success"
    rows = read_table(root, "bronze.t", order_by="column0")
    assert [(r["column0"], r["column1"], r["column2"]) for r in rows] == [(1, "ann", None), (2, "bob", 3.5)]


def test_csv_declared_column_types(make_project):
    root = make_project({
        "pipelines/p.py": _pipe('"data/a.csv", format="csv", columns={"id": "VARCHAR", "amount": "DECIMAL(12,2)"}'),
        "data/a.csv": "id,amount\n007,1.10\n",
    })
    assert run_project(root).status == "success"
    rows = read_table(root, "bronze.t")
    assert rows[0]["id"] == "007" and str(rows[0]["amount"]) == "1.10"


def test_gzip_ndjson_and_filename_column(make_project):
    lines = "".join(json.dumps({"id": i, "tags": ["a", "b"], "meta": {"k": i}}) + "\n" for i in range(3))
    root = make_project({
        "pipelines/p.py": _pipe('"data/*.ndjson.gz", format="ndjson", filename_column="src_file"'),
        "data/a.ndjson.gz": gzip.compress(lines.encode()),
    })
    assert run_project(root).status == "success"
    rows = read_table(root, "bronze.t", order_by="id")
    assert [r["id"] for r in rows] == [0, 1, 2]
    assert rows[1]["tags"] == ["a", "b"] and rows[1]["meta"] == {"k": 1}
    assert rows[0]["src_file"].endswith("a.ndjson.gz")


def test_json_array_file(make_project):
    root = make_project({
        "pipelines/p.py": _pipe('"data/a.json", format="json"'),
        "data/a.json": json.dumps([{"id": 1, "v": "x"}, {"id": 2, "v": "y"}]),
    })
    assert run_project(root).status == "success"
    assert [r["v"] for r in read_table(root, "bronze.t", order_by="id")] == ["x", "y"]


def test_parquet_union_by_name(make_project, tmp_path):
    root = make_project({"pipelines/p.py": _pipe('"data/*.parquet", format="parquet"')})
    (root / "data").mkdir()
    pq.write_table(pa.table({"id": [1], "a": ["x"]}), root / "data/1.parquet")
    pq.write_table(pa.table({"id": [2], "b": [True]}), root / "data/2.parquet")
    result = run_project(root)
    assert result.status == "success"
    assert result.tasks[0].rows_in == 2  # Parquet row counts come free from the footers
    rows = read_table(root, "bronze.t", order_by="id")
    assert rows == [{"id": 1, "a": "x", "b": None}, {"id": 2, "a": None, "b": True}]


def test_unsupported_delta_types_are_cast(make_project):
    pipe = '''
import headrace as hr
src = hr.files("data/a.csv", format="csv")

@hr.table("bronze.t", source=src)
def t(raw):
    return "select 1::UTINYINT as u8, 2::UBIGINT as u64, TIME '10:11:12' as tm, NULL as nothing, x from raw"
'''
    root = make_project({"pipelines/p.py": pipe, "data/a.csv": "x\n1\n"})
    result = run_project(root)
    assert result.status == "success", result.tasks[0].error
    row = read_table(root, "bronze.t")[0]
    assert row["u8"] == 1 and int(row["u64"]) == 2 and row["tm"] == "10:11:12" and row["nothing"] is None


def test_zstd_compression_and_file_format(make_project):
    root = make_project({"pipelines/p.py": _pipe('"data/a.csv", format="csv"'), "data/a.csv": "x\n1\n2\n"})
    assert run_project(root).status == "success"
    files = DeltaTable(str(root / "lake/bronze/t")).file_uris()
    meta = pq.ParquetFile(files[0]).metadata
    assert meta.row_group(0).column(0).compression == "ZSTD"


@pytest.mark.parametrize("codec,expected", [("snappy", "SNAPPY"), ("gzip", "GZIP"), ("none", "UNCOMPRESSED")])
def test_compression_setting(make_project, codec, expected):
    from conftest import BASE_TOML

    toml = BASE_TOML + f'\n[write]\ncompression = "{codec}"\n'
    root = make_project({"pipelines/p.py": _pipe('"data/a.csv", format="csv"'), "data/a.csv": "x\n1\n"}, toml=toml)
    assert run_project(root).status == "success"
    files = DeltaTable(str(root / "lake/bronze/t")).file_uris()
    assert pq.ParquetFile(files[0]).metadata.row_group(0).column(0).compression == expected


def test_target_file_size_splits_files(make_project):
    from conftest import BASE_TOML

    toml = BASE_TOML + '\n[write]\ntarget_file_size = "64KB"\n'
    pipe = '''
import headrace as hr
src = hr.files("data/a.csv", format="csv")

@hr.table("bronze.t", source=src)
def t(raw):
    return "select range as id, md5(range::varchar) as h from range(200000)"
'''
    root = make_project({"pipelines/p.py": pipe, "data/a.csv": "x\n1\n"}, toml=toml)
    assert run_project(root).status == "success"
    dt = DeltaTable(str(root / "lake/bronze/t"))
    assert len(dt.file_uris()) > 3
    assert dt.count() == 200000
