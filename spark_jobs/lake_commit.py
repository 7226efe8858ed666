"""The lake job's write path: table schemas from the registry, Parquet output (staged when the
lake is on object storage) and one atomic Iceberg commit per batch, with pyiceberg.

The commit ledger lives in the snapshots themselves: every batch commits with the summary
properties `elt.batch-id` and `elt.source-files`, so "is this file committed?" is answered by
the same atomic commit that added its rows (DESIGN §9).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from pyarrow.fs import FileSelector, FileSystem
from pyiceberg.catalog import Catalog
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

from core import storage
from core.settings import data_dir
from lake.catalog import identifier
from lake.registry import FileType

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


def table_schema(file_type: FileType) -> Schema:
    columns = [(f.name, ICEBERG_TYPES[f.type]) for f in file_type.fields] + list(LINEAGE_FIELDS)
    return Schema(*(NestedField(i, name, kind(), required=False) for i, (name, kind) in enumerate(columns, start=1)))


def rejected_schema() -> Schema:
    return Schema(*(NestedField(i, name, kind(), required=False) for i, (name, kind) in enumerate(REJECTED_FIELDS, 1)))


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


def commit_batch(table: Table, data_files: list[str], batch_id: str, source_files: list[str]) -> int:
    """One atomic snapshot adding the batch's Parquet files and recording its source files;
    returns the number of records it added (from the snapshot summary).

    pyiceberg's duplicate-file check is skipped: it reads every manifest of the table, so each
    commit would cost more as history grows, and it can never fire here, because an engine writes
    each batch under a folder named by its new batch id. Rows committed twice are what the ledger
    prevents (process_type sends no file the table's ledger has to an engine)."""
    properties = {BATCH_PROPERTY: batch_id, FILES_PROPERTY: json.dumps(sorted(source_files))}
    with table.transaction() as transaction:
        if data_files:
            transaction.add_files(data_files, snapshot_properties=properties, check_duplicate_files=False)
        else:
            # Nothing to add (every record rejected): still record the files as committed.
            transaction.append(table.schema().as_arrow().empty_table(), snapshot_properties=properties)
    return int(table.current_snapshot().summary["added-records"] or 0)


def staged_output(folder: str) -> str:
    """Where an engine writes a batch bound for `folder`: the folder itself when it is local; else
    a local staging folder that publish_staged_output uploads (Spark reaches object storage only
    with the hadoop-aws jars, which come from Maven; DuckDB only with httpfs, which it would
    download). SPARK_STAGING_DIR must be shared by the driver and the executors (one machine,
    NFS, HDFS)."""
    if not storage.is_uri(folder):
        return folder
    root = os.environ.get("SPARK_STAGING_DIR") or str(data_dir() / "lake_staging")
    return storage.join(Path(root).resolve().as_uri(), folder.replace("://", "/", 1))


def publish_staged_output(folder: str) -> None:
    """Upload a staged batch's Parquet files to the table's folder, then drop the staging copy.
    Uploaded but uncommitted files are orphans that maintenance removes."""
    staged = staged_output(folder)
    if staged == folder:
        return
    local = Path(staged.removeprefix("file://"))
    for path in sorted(local.rglob("*.parquet")):
        storage.upload_file(path, storage.join(folder, path.relative_to(local).as_posix()))
    shutil.rmtree(local, ignore_errors=True)


def parquet_files(folder_uri: str) -> list[str]:
    """URIs of the Parquet files an engine wrote under a folder (local path or object storage)."""
    filesystem, root = FileSystem.from_uri(folder_uri)
    try:
        infos = filesystem.get_file_info(FileSelector(root, recursive=True))
    except FileNotFoundError:
        return []
    scheme = folder_uri.split("://", 1)[0]
    return sorted(f"{scheme}://{info.path}" for info in infos if info.is_file and info.path.endswith(".parquet"))
