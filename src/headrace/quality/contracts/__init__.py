"""Data contracts on the engine side: read every record, type it, list every broken rule.

All of it is SQL that DuckDB runs vectorised (no per-row Python). The modules, in the order
a batch of files goes through them (each imports only modules above it):

- ``probing``: one byte-level pass per file decides how it can be read;
- ``csv_dialect``: a CSV source's dialect and each file's field names;
- ``layout``: the raw layout of a batch (``probe_layout``) and its physical lines;
- ``readers``: the raw reader, one row per record with its file, line, raw text and parse
  error (``open_raw_reader``; also Parquet files and a transform's result);
- ``casts``: a field's text as its contract column's type;
- ``rules``: the validation query listing every broken rule of a row (``plan_validation``);
- ``batch``: the whole sequence in one call (``validate_files``) and what the contract says
  to do with the bad rows (``check_outcome``);
- ``stored``: the faster path the runner uses (``store_validated``), same result.

Import from the package: its public names are re-exported here.
"""

from headrace.quality.contracts.batch import (
    ContractOutcome,
    ValidatedBatch,
    check_outcome,
    validate_files,
)
from headrace.quality.contracts.casts import cast_sql, literal_sql, lossy_sql, typed_sql
from headrace.quality.contracts.csv_dialect import (
    CsvDialect,
    HeaderLine,
    csv_headers,
    csv_union,
    unique_names,
)
from headrace.quality.contracts.layout import RawLayout, json_fields_sql, lines_sql, probe_layout
from headrace.quality.contracts.probing import (
    FileProbe,
    file_chunks,
    header_text,
    probe_file,
    probe_files,
)
from headrace.quality.contracts.readers import (
    META_COLUMNS,
    RawReader,
    open_raw_reader,
    parquet_raw_sql,
    raw_reader_sql,
    result_raw_sql,
)
from headrace.quality.contracts.rules import (
    QUARANTINE_COLUMNS,
    VIOLATION_TYPE,
    VIOLATIONS_TYPE,
    SchemaMatch,
    ValidationPlan,
    check_contract_against_columns,
    plan_validation,
    split_counts_sql,
    validation_sql,
)
from headrace.quality.contracts.stored import (
    NO_REJECTS,
    StoredRows,
    StoredValidation,
    copy_parquet,
    store_rejects,
    store_rows,
    store_validated,
    stored_rows_sql,
)

__all__ = [
    "META_COLUMNS",
    "NO_REJECTS",
    "QUARANTINE_COLUMNS",
    "VIOLATIONS_TYPE",
    "VIOLATION_TYPE",
    "ContractOutcome",
    "CsvDialect",
    "FileProbe",
    "HeaderLine",
    "RawLayout",
    "RawReader",
    "SchemaMatch",
    "StoredRows",
    "StoredValidation",
    "ValidatedBatch",
    "ValidationPlan",
    "cast_sql",
    "check_contract_against_columns",
    "check_outcome",
    "copy_parquet",
    "csv_headers",
    "csv_union",
    "file_chunks",
    "header_text",
    "json_fields_sql",
    "lines_sql",
    "literal_sql",
    "lossy_sql",
    "open_raw_reader",
    "parquet_raw_sql",
    "plan_validation",
    "probe_file",
    "probe_files",
    "probe_layout",
    "raw_reader_sql",
    "result_raw_sql",
    "split_counts_sql",
    "store_rejects",
    "store_rows",
    "store_validated",
    "stored_rows_sql",
    "typed_sql",
    "unique_names",
    "validate_files",
    "validation_sql",
]
