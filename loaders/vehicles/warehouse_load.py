"""dlt source: new lake rows → warehouse schema raw_vehicles, incrementally, as Parquet files.

Each lake table (every processed type's table and its rejected table) becomes one append-only
resource. Rows carry the `batch_id` of the lake commit that wrote them, and batch ids sort in
commit order, so the batches committed since the last load are the rows with a greater batch_id.
pyiceberg plans the data files that may hold them (pruned by their batch_id statistics) and each
file goes to dlt as a file (dlt's file import), hard-linked into the load package when the lake is
local, downloaded when it is on object storage. Python never touches a row: DuckDB loads the files
with its own Parquet reader, Postgres by ADBC's binary COPY.

A file whose batch_id lower bound is not past the cursor may also hold rows already loaded (the
lake writes one batch per file, but a rewrite such as compaction would not): DuckDB copies only its
new rows into a Parquet file of their own, which is imported instead.

The cursor moves to the greatest batch_id imported and is kept in the resource's dlt state, which
travels in the load package with the files: a load killed at any step resumes or redoes that
package; a job that dlt runs again because the kill came after the warehouse committed it and
before dlt recorded it loads nothing twice (loaders/exactly_once.py).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dlt
import duckdb
from dlt.extract.items import DataItemWithMeta
from pyiceberg.catalog import Catalog
from pyiceberg.expressions import AlwaysTrue, GreaterThan
from pyiceberg.table import FileScanTask, Table

from core import storage
from core.settings import data_dir
from lake.catalog import NAMESPACE, catalog, identifier
from loaders.pipelines import pipeline

DATASET = "raw_vehicles"
CURSOR = "batch_id"


@dataclass(frozen=True)
class ImportFile:
    path: Path
    rows: int


def batch_cursor(resource_state: dict) -> dict:
    """Where the last loaded batch_id is kept: the place dlt.sources.incremental("batch_id") used,
    so warehouses loaded before files were imported carry on from their cursor."""
    return resource_state.setdefault("incremental", {}).setdefault(CURSOR, {})


class DeleteFilesError(ValueError):
    """A data file with Iceberg delete files: its Parquet alone is not its rows."""


def new_data_files(table: Table, since: str) -> list[FileScanTask]:
    """Data files that may hold rows after `since`; pyiceberg prunes the others by statistics.
    The lake only adds and replaces whole files (no merge-on-read deletes), which file import needs."""
    tasks = list(table.scan(row_filter=GreaterThan(CURSOR, since) if since else AlwaysTrue()).plan_files())
    if any(task.delete_files for task in tasks):
        raise DeleteFilesError(f"{table.name()}: data files with delete files cannot be imported as they are")
    return tasks


def only_new_rows(table: Table, task: FileScanTask, since: str) -> bool:
    """Whether every row of the file is after `since`, from its batch_id lower bound. Iceberg may
    keep a truncated prefix of the least value as the bound; a prefix sorts no later than the value,
    so a bound past `since` still means every value is."""
    field_id = table.schema().find_field(CURSOR).field_id
    lower = (task.file.lower_bounds or {}).get(field_id)
    return lower is not None and lower.decode() > since


def local_file(location: str, folder: Path) -> Path:
    """The data file as a local path: itself when the lake is local, else a download into `folder`."""
    if storage.is_uri(location):
        local = folder / "downloaded" / location.split("://", 1)[1]
        storage.download_file(location, local)
        return local
    return Path(storage.resolve(location)[1])


# Only the file's own columns: DuckDB would add columns for the key=value folders the lake
# writes files under (batch_id=…/day=…).
LAKE_PARQUET = "read_parquet($files, hive_partitioning = false)"


def rows_after(db: duckdb.DuckDBPyConnection, source: Path, since: str, target: Path) -> ImportFile:
    """The file's rows after `since`, copied by DuckDB into a Parquet file of their own."""
    target.parent.mkdir(parents=True, exist_ok=True)
    copied = db.execute(
        f"copy (select * from {LAKE_PARQUET} where batch_id > $since) to $target (format parquet)",
        {"files": [str(source)], "since": since, "target": str(target)},
    ).fetchone()[0]
    return ImportFile(target, copied)


def import_files(table: Table, tasks: list[FileScanTask], since: str, folder: Path) -> list[ImportFile]:
    db = duckdb.connect()
    files = []
    for number, task in enumerate(tasks):
        source = local_file(task.file.file_path, folder)
        if only_new_rows(table, task, since):
            files.append(ImportFile(source, task.file.record_count))
        else:
            files.append(rows_after(db, source, since, folder / "filtered" / f"{number}.parquet"))
    return [file for file in files if file.rows]


def last_batch_id(files: list[ImportFile]) -> str:
    paths = [str(file.path) for file in files]
    return duckdb.execute(f"select max(batch_id) from {LAKE_PARQUET}", {"files": paths}).fetchone()[0]


def import_folder(table_name: str) -> Path:
    """Scratch space for downloaded and filtered files, emptied on each load (a killed load's
    leftovers go too); dlt links the files into its package before the load ends."""
    folder = data_dir() / "lake_import" / table_name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def lake_table(lake: Catalog, table_name: str):
    @dlt.resource(name=table_name, write_disposition="append", file_format="parquet")
    def files() -> Iterator[DataItemWithMeta]:
        table = lake.load_table(identifier(table_name))
        cursor = batch_cursor(dlt.current.resource_state())
        since = cursor.get("last_value") or ""
        folder = import_folder(table_name)
        new = import_files(table, new_data_files(table, since), since, folder)
        if new:
            cursor["last_value"] = last_batch_id(new)
        # The Iceberg schema as an empty Arrow table gives dlt the columns and their types.
        columns = table.schema().as_arrow().empty_table()
        for file in new:
            yield dlt.mark.with_file_import(str(file.path), "parquet", file.rows, hints=columns)
        shutil.rmtree(folder, ignore_errors=True)

    files.__doc__ = f"Parquet files of the lake table {identifier(table_name)} with rows committed since the last load."
    return files


def lake_pipeline() -> dlt.Pipeline:
    """The pipeline that loads vehicles_lake; its rows are append-only, in no order, each file once."""
    return pipeline("vehicles_lake", DATASET, keep_insertion_order=False, appends_once=True)


@dlt.source(name="vehicles_lake")
def vehicles_lake():
    """One resource per table in the lake (every processed type's table and its rejects): the
    lake, not the warehouse's registry, says what there is, so a new warehouse loads it all."""
    lake = catalog()
    return [lake_table(lake, name) for _, name in sorted(lake.list_tables(NAMESPACE))]
