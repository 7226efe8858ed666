"""A DB-API connection to the configured warehouse (DuckDB file or Postgres from PG* variables)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from loaders.settings import postgres_credentials, target, warehouse_path


@contextlib.contextmanager
def connect(read_only: bool = True) -> Iterator:
    if target() == "postgres":
        import psycopg2

        connection = psycopg2.connect(postgres_credentials())
    else:
        import duckdb

        connection = duckdb.connect(str(warehouse_path()), read_only=read_only)
    try:
        yield connection
    finally:
        connection.close()


def query(sql: str) -> tuple[list[str], list[tuple]]:
    """Column names and rows of one query."""
    with connect() as connection:
        cursor = connection.cursor()
        cursor.execute(sql)
        columns = [description[0] for description in cursor.description]
        return columns, cursor.fetchall()
