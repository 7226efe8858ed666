"""A DB-API connection to the configured warehouse (DuckDB file or Postgres from PG* variables).

SQL here is written with `%s` placeholders (psycopg2's style); `execute` adapts them for DuckDB.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from loaders.settings import postgres_credentials, target, warehouse_path


@contextlib.contextmanager
def connect(read_only: bool = True) -> Iterator:
    """A connection that commits on success and rolls back on error."""
    if target() == "postgres":
        import psycopg2

        connection = psycopg2.connect(postgres_credentials())
    else:
        import duckdb

        warehouse_path().parent.mkdir(parents=True, exist_ok=True)
        # Always opened read-write: DuckDB refuses a second connection with another
        # configuration in the same process (dbt and dlt run in-process in the flows).
        connection = duckdb.connect(str(warehouse_path()))
    try:
        if not read_only and target() == "duckdb":
            connection.execute("begin transaction")
        yield connection
        if not read_only:
            connection.commit()
    except BaseException:
        if not read_only:
            connection.rollback()
        raise
    finally:
        connection.close()


def execute(connection, sql: str, params: Sequence[Any] = ()) -> Any:
    """Run one statement; the result has fetchone/fetchall/description on both targets."""
    if target() == "postgres":
        cursor = connection.cursor()
        # Without parameters psycopg2 must not read `%` (as in LIKE 'raw_%') as a placeholder.
        cursor.execute(sql, tuple(params) if params else None)
        return cursor
    # A DuckDB cursor is a separate connection with its own transaction: use the connection.
    return connection.execute(sql.replace("%s", "?"), tuple(params))


def query(sql: str, params: Sequence[Any] = ()) -> tuple[list[str], list[tuple]]:
    """Column names and rows of one read-only query."""
    with connect() as connection:
        cursor = execute(connection, sql, params)
        columns = [description[0] for description in cursor.description]
        return columns, cursor.fetchall()
