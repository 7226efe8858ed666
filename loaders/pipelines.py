"""dlt pipelines of the loaders: the warehouse destination for the configured target, state
under the data dir."""

from __future__ import annotations

import os
import sys

import dlt
from dlt.common.destination import Destination

from core.settings import data_dir, postgres_credentials, target, warehouse_path


def dlt_postgres_credentials():
    """dlt insists on a password; under trust or pgpass auth an empty one lets libpq decide."""
    from dlt.destinations.impl.postgres.configuration import PostgresCredentials

    credentials = PostgresCredentials()
    credentials.parse_native_representation(postgres_credentials())
    credentials.password = os.environ.get("PGPASSWORD", "")
    return credentials


def destination() -> Destination:
    if target() == "postgres":
        return dlt.destinations.postgres(credentials=dlt_postgres_credentials())
    warehouse_path().parent.mkdir(parents=True, exist_ok=True)
    return dlt.destinations.duckdb(str(warehouse_path()))


def pipeline(name: str, dataset_name: str) -> dlt.Pipeline:
    """A dlt pipeline whose local state lives under the data dir, so data dirs stay independent."""
    return dlt.pipeline(
        pipeline_name=name,
        pipelines_dir=str(data_dir() / ".dlt_pipelines"),
        destination=destination(),
        dataset_name=dataset_name,
        progress=progress_collector(),
    )


def progress_collector() -> str | None:
    """dlt's own progress lines (items per resource, rate, memory) in a terminal; none in pipes and logs."""
    return "log" if sys.stderr.isatty() else None


def source_state(load: dlt.Pipeline, source: str) -> dict:
    """What a source keeps in the pipeline's state (dlt.current.source_state() in its code)."""
    return load.state.get("sources", {}).get(source, {})
