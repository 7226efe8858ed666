"""dlt pipelines of the loaders: the warehouse destination for the configured target, state
under the data dir."""

from __future__ import annotations

import os
import sys

import dlt
from dlt.common.destination import Destination
from dlt.destinations.impl.duckdb.configuration import DuckDbCredentials

from core.settings import data_dir, postgres_credentials, target, warehouse_path
from loaders.exactly_once import duckdb_once, postgres_once


def dlt_postgres_credentials():
    """dlt insists on a password; under trust or pgpass auth an empty one lets libpq decide."""
    from dlt.destinations.impl.postgres.configuration import PostgresCredentials

    credentials = PostgresCredentials()
    credentials.parse_native_representation(postgres_credentials())
    credentials.password = os.environ.get("PGPASSWORD", "")
    return credentials


def destination(keep_insertion_order: bool = True, appends_once: bool = False) -> Destination:
    """The warehouse. Without an insertion order to keep, DuckDB inserts on all its threads at
    once (append-only rows with no order to them; a merge's deduplication keeps the order).
    With appends_once, a Parquet append job that dlt runs again after a kill loads nothing twice."""
    postgres, duckdb = (
        (postgres_once, duckdb_once) if appends_once else (dlt.destinations.postgres, dlt.destinations.duckdb)
    )
    if target() == "postgres":
        return postgres(credentials=dlt_postgres_credentials())
    warehouse_path().parent.mkdir(parents=True, exist_ok=True)
    config = {} if keep_insertion_order else {"preserve_insertion_order": False}
    return duckdb(DuckDbCredentials(str(warehouse_path()), global_config=config))


def pipeline(
    name: str, dataset_name: str, keep_insertion_order: bool = True, appends_once: bool = False
) -> dlt.Pipeline:
    """A dlt pipeline whose local state lives under the data dir, so data dirs stay independent."""
    return dlt.pipeline(
        pipeline_name=name,
        pipelines_dir=str(data_dir() / ".dlt_pipelines"),
        destination=destination(keep_insertion_order, appends_once),
        dataset_name=dataset_name,
        progress=progress_collector(),
    )


def progress_collector() -> str | None:
    """dlt's own progress lines (items per resource, rate, memory) in a terminal; none in pipes and logs."""
    return "log" if sys.stderr.isatty() else None


def source_state(load: dlt.Pipeline, source: str) -> dict:
    """What a source keeps in the pipeline's state (dlt.current.source_state() in its code)."""
    return load.state.get("sources", {}).get(source, {})
