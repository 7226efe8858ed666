"""The lake's SQL database: the Iceberg catalog's tables and, beside them, the file-type registry
(DESIGN §2, §6). A SQLite file in the lake by default; with ICEBERG_CATALOG_URI a Postgres
database, the project's tables in the schema ICEBERG_CATALOG_SCHEMA (default iceberg_catalog).
Nothing here touches the warehouse: the lake side never waits for, nor depends on, it.
"""

from __future__ import annotations

import os
from pathlib import Path

import sqlalchemy

from core.settings import data_dir, in_environment
from lake.identifiers import validate_identifier

DEFAULT_SCHEMA = "iceberg_catalog"


def lake_dir() -> Path:
    return data_dir() / "lake"


def catalog_uri() -> str:
    """ICEBERG_CATALOG_URI (a SQLAlchemy URL, e.g. postgresql+psycopg2://...) or SQLite in the lake."""
    uri = os.environ.get("ICEBERG_CATALOG_URI")
    if not uri:
        lake_dir().mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{lake_dir() / 'catalog.db'}"
    if uri.startswith("postgresql"):
        return in_own_schema(uri, catalog_schema())
    return uri


def catalog_schema() -> str:
    """ICEBERG_CATALOG_SCHEMA for dev; staging and prod keep their catalog and registry in
    `<schema>_<env>`, so environments sharing one catalog database never see each other's tables."""
    schema = os.environ.get("ICEBERG_CATALOG_SCHEMA", DEFAULT_SCHEMA)
    return in_environment(schema).replace("/", "_")


def in_own_schema(uri: str, schema: str) -> str:
    """The catalog's tables go to a schema of their own (not `public`): created if missing, and
    first on the connection's search_path (Java's JdbcCatalog reaches it with currentSchema=)."""
    validate_identifier(schema, "ICEBERG_CATALOG_SCHEMA")
    url = sqlalchemy.make_url(uri)
    if "options" in url.query:  # the user chose the search_path (or other options) already
        return uri
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql(f'create schema if not exists "{schema}"')
    finally:
        engine.dispose()
    return url.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)
