"""The Iceberg lake's catalog: a pyiceberg SqlCatalog (SQLite file by default, Postgres in
server mode) holding `raw_vehicles.<table>` and `<table>_rejected`. Tables are created and
written by the Spark job (spark_jobs/lake_commit.py); this side is what every reader shares.
"""

from __future__ import annotations

import os

from pyiceberg.catalog import Catalog
from pyiceberg.catalog.sql import SqlCatalog

from core.settings import in_environment
from lake.catalog_database import catalog_uri, lake_dir

NAMESPACE = "raw_vehicles"


def catalog() -> Catalog:
    """The Iceberg catalog in the lake's SQL database (catalog_database.catalog_uri)."""
    given = os.environ.get("ICEBERG_WAREHOUSE")
    warehouse = in_environment(given) if given else lake_dir().as_uri()
    lake = SqlCatalog("lake", uri=catalog_uri(), warehouse=warehouse, **object_storage_properties())
    lake.create_namespace_if_not_exists(NAMESPACE)
    return lake


def object_storage_properties() -> dict[str, str]:
    """pyiceberg's S3 settings from the standard AWS variables. The region must be given: without
    it pyiceberg asks AWS where the bucket is. Credentials come from the AWS default chain."""
    properties = {}
    if endpoint := os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"):
        properties["s3.endpoint"] = endpoint
    if region := os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"):
        properties["s3.region"] = region
    return properties


def identifier(table_name: str) -> str:
    return f"{NAMESPACE}.{table_name}"
