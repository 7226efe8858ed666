"""The Iceberg lake: a pyiceberg SqlCatalog (SQLite file by default, Postgres in server mode)
holding `raw_vehicles.<table>` partitioned by day(<time column>) and `<table>_rejected`.

The commit ledger lives in the snapshots themselves: every batch commits with the summary
properties `elt.batch-id` and `elt.source-files`, so "is this file committed?" is answered by
the same atomic commit that added its rows (DESIGN §9).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pyarrow.fs import FileSelector, FileSystem
from pyiceberg.catalog import Catalog
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.partitioning import UNPARTITIONED_PARTITION_SPEC, PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.transforms import DayTransform
from pyiceberg.types import (
    BooleanType,
    DoubleType,
    LongType,
    NestedField,
    StringType,
    TimestamptzType,
)

from loaders.settings import data_dir
from loaders.vehicles.registry import FileType

NAMESPACE = "raw_vehicles"
BATCH_PROPERTY = "elt.batch-id"
FILES_PROPERTY = "elt.source-files"
ICEBERG_TYPES = {
    "string": StringType,
    "json": StringType,
    "long": LongType,
    "double": DoubleType,
    "boolean": BooleanType,
    "timestamp": TimestamptzType,
}
LINEAGE_FIELDS = (
    ("source_file", StringType),
    ("source_position", LongType),
    ("batch_id", StringType),
    ("ingested_at", TimestamptzType),
)
REJECTED_FIELDS = (
    ("source_file", StringType),
    ("source_position", LongType),
    ("reason", StringType),
    ("raw_record", StringType),
    ("batch_id", StringType),
    ("rejected_at", TimestamptzType),
)


def lake_dir() -> Path:
    return data_dir() / "lake"


def catalog() -> Catalog:
    """ICEBERG_CATALOG_URI (a SQLAlchemy URL, e.g. postgresql+psycopg2://...) or SQLite in the lake."""
    warehouse = os.environ.get("ICEBERG_WAREHOUSE") or lake_dir().as_uri()
    uri = os.environ.get("ICEBERG_CATALOG_URI")
    if not uri:
        lake_dir().mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{lake_dir() / 'catalog.db'}"
    lake = SqlCatalog("lake", uri=uri, warehouse=warehouse)
    lake.create_namespace_if_not_exists(NAMESPACE)
    return lake


def table_schema(file_type: FileType) -> Schema:
    columns = [(f.name, ICEBERG_TYPES[f.type]) for f in file_type.fields] + list(LINEAGE_FIELDS)
    return Schema(*(NestedField(i, name, kind(), required=False) for i, (name, kind) in enumerate(columns, start=1)))


def rejected_schema() -> Schema:
    return Schema(*(NestedField(i, name, kind(), required=False) for i, (name, kind) in enumerate(REJECTED_FIELDS, 1)))


def identifier(table_name: str) -> str:
    return f"{NAMESPACE}.{table_name}"


def ensure_tables(lake: Catalog, file_type: FileType) -> tuple[Table, Table]:
    """The type's table and its rejected table, created if missing; fields the registry added
    since are added to the table schema (Iceberg schema evolution, by name)."""
    schema = table_schema(file_type)
    try:
        table = lake.load_table(identifier(file_type.table_name))
        with table.update_schema() as update:
            update.union_by_name(schema)
        table = lake.load_table(identifier(file_type.table_name))
    except NoSuchTableError:
        time_field = schema.find_field(file_type.time_column)
        spec = PartitionSpec(
            PartitionField(
                source_id=time_field.field_id,
                field_id=1000,
                transform=DayTransform(),
                name=f"{file_type.time_column}_day",
            )
        )
        table = lake.create_table(identifier(file_type.table_name), schema=schema, partition_spec=spec)
    rejected = lake.create_table_if_not_exists(
        identifier(file_type.rejected_table_name), schema=rejected_schema(), partition_spec=UNPARTITIONED_PARTITION_SPEC
    )
    return table, rejected


def committed_files(table: Table) -> set[str]:
    """Source file names whose rows this table has committed (from the snapshot ledger)."""
    names: set[str] = set()
    for snapshot in table.metadata.snapshots:
        summary = snapshot.summary
        if summary is not None and FILES_PROPERTY in summary.additional_properties:
            names.update(json.loads(summary.additional_properties[FILES_PROPERTY]))
    return names


def commit_batch(table: Table, data_files: list[str], batch_id: str, source_files: list[str]) -> None:
    """One atomic snapshot adding the batch's Parquet files and recording its source files."""
    properties = {BATCH_PROPERTY: batch_id, FILES_PROPERTY: json.dumps(sorted(source_files))}
    with table.transaction() as transaction:
        if data_files:
            transaction.add_files(data_files, snapshot_properties=properties)
        else:
            # Nothing to add (every record rejected): still record the files as committed.
            transaction.append(table.schema().as_arrow().empty_table(), snapshot_properties=properties)


def parquet_files(folder_uri: str) -> list[str]:
    """URIs of the Parquet files Spark wrote under a folder (local path or object storage)."""
    filesystem, root = FileSystem.from_uri(folder_uri)
    try:
        infos = filesystem.get_file_info(FileSelector(root, recursive=True))
    except FileNotFoundError:
        return []
    scheme = folder_uri.split("://", 1)[0]
    return sorted(f"{scheme}://{info.path}" for info in infos if info.is_file and info.path.endswith(".parquet"))
