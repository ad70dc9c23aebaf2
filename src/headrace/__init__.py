"""headrace: reliable data pipelines on an open lakehouse.

Declare sources and tables in ``pipelines/*.py`` (or SQL in ``models/``) and run them with
``headrace run``::

    import headrace as hr

    orders_raw = hr.files("data/orders/*.ndjson", format="ndjson")

    @hr.table("bronze.orders", source=orders_raw, write="overwrite_partitions",
              partition_by="order_date")
    def orders(raw):
        return raw.select("*, CAST(order_ts AS DATE) AS order_date")

Importing this package defines names only; engines and the lake load when a run starts.
"""

from headrace.errors import (
    ConfigError,
    DataQualityError,
    DefinitionError,
    EngineError,
    HeadraceError,
    SourceError,
    TransformError,
    TransientError,
)
from headrace.spec import checks as check
from headrace.spec.builders import files, table
from headrace.spec.context import RunContext
from headrace.spec.contracts import (
    Bool,
    Contract,
    Date,
    Decimal,
    Float32,
    Float64,
    Int8,
    Int16,
    Int32,
    Int64,
    List,
    String,
    Struct,
    Timestamp,
)
from headrace.spec.database import DatabaseSource, database
from headrace.spec.kafka import KafkaSource, kafka
from headrace.spec.sources import FileSource
from headrace.spec.tables import TableRef, TableSpec, ref
from headrace.spec.write_modes import Append, Merge, Overwrite, OverwritePartitions, Scd2

__version__ = "0.1.0"

__all__ = [
    "Append",
    "Bool",
    "ConfigError",
    "Contract",
    "DataQualityError",
    "DatabaseSource",
    "Date",
    "Decimal",
    "DefinitionError",
    "EngineError",
    "FileSource",
    "Float32",
    "Float64",
    "HeadraceError",
    "Int8",
    "Int16",
    "Int32",
    "Int64",
    "KafkaSource",
    "List",
    "Merge",
    "Overwrite",
    "OverwritePartitions",
    "RunContext",
    "Scd2",
    "SourceError",
    "String",
    "Struct",
    "TableRef",
    "TableSpec",
    "Timestamp",
    "TransformError",
    "TransientError",
    "__version__",
    "check",
    "database",
    "files",
    "kafka",
    "ref",
    "table",
]
