"""An interactive SQL prompt over the lake and the warehouse (DuckDB + its iceberg extension).

    python -m loaders.query                                  # or: make query
    python -m loaders.query -c "select * from vehicle_events limit 10"   # exit 1 if it fails

Lake tables appear by name (vehicle_events, vehicle_status, ...) as views over their current
Iceberg snapshot; warehouse schemas (marts, staging, raw_*) are attached read-only for each
statement and detached after it, so an idle session never blocks a load (DuckDB lets no process
write while another has the file open, even read-only). The iceberg
and avro extensions come from the PyPI wheels duckdb-extension-iceberg/-avro, as DuckDB cannot
download extensions here.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from collections.abc import Iterator
from pathlib import Path

import duckdb

from core.cli import exit_promptly
from core.settings import data_dir_or_exit, target, warehouse_path
from core.warehouse import WarehouseBusy, when_unlocked
from lake.catalog import NAMESPACE, catalog

EXTENSION_PACKAGES = ("duckdb_extension_avro", "duckdb_extension_iceberg")
WAREHOUSE_SCHEMAS = ("marts", "intermediate", "staging", "raw_vehicles", "raw_football", "raw_football_api")

_WAREHOUSE_SCHEMAS_PRESENT = "select schema_name from duckdb_schemas() where database_name = 'warehouse'"


def load_extensions(connection: duckdb.DuckDBPyConnection) -> None:
    for package in EXTENSION_PACKAGES:
        folder = Path(importlib.import_module(package).__file__).parent / "extensions" / f"v{duckdb.__version__}"
        (extension,) = folder.glob("*.duckdb_extension")
        connection.execute(f"load '{extension}'")


def open_session() -> duckdb.DuckDBPyConnection:
    """An in-memory session with the lake's tables as views; the warehouse is not attached yet."""
    connection = duckdb.connect()
    load_extensions(connection)
    connection.execute("create schema lake")
    lake = catalog()
    for _, name in lake.list_tables(NAMESPACE):
        metadata = lake.load_table(f"{NAMESPACE}.{name}").metadata_location
        connection.execute(f"create view lake.{name} as select * from iceberg_scan('{metadata}')")
    connection.execute("set search_path = 'memory.lake'")
    return connection


@contextlib.contextmanager
def warehouse_attached(connection: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """The DuckDB warehouse attached read-only for one statement (waiting, within
    ELT_LOCK_TIMEOUT, while a writer holds it), then detached."""
    if target() != "duckdb" or not warehouse_path().exists():
        yield
        return
    when_unlocked(lambda: connection.execute(f"attach '{warehouse_path()}' as warehouse (read_only)"), warehouse_path())
    try:
        present = {name for (name,) in connection.execute(_WAREHOUSE_SCHEMAS_PRESENT).fetchall()}
        search_path = ["memory.lake", *(f"warehouse.{schema}" for schema in WAREHOUSE_SCHEMAS if schema in present)]
        connection.execute(f"set search_path = '{','.join(search_path)}'")
        yield
    finally:
        connection.execute("set search_path = 'memory.lake'")
        connection.execute("detach warehouse")


def run_statement(connection: duckdb.DuckDBPyConnection, sql: str) -> bool:
    """Runs one statement and shows its result; False, with one error line, when it failed."""
    try:
        with warehouse_attached(connection):
            relation = connection.sql(sql)
            if relation is not None:
                relation.show(max_rows=50)
    except (duckdb.Error, WarehouseBusy) as error:
        print(f"error: {error}", file=sys.stderr)
        return False
    return True


def repl(connection: duckdb.DuckDBPyConnection) -> None:
    try:
        import readline  # noqa: F401 (line editing and history for input())
    except ImportError:
        pass
    print("SQL over the lake (lake.*) and the warehouse; end statements with ';', quit with .quit or Ctrl-D")
    buffer: list[str] = []
    while True:
        try:
            line = input("sql> " if not buffer else "...> ")
        except EOFError:
            print()
            return
        if not buffer and line.strip() in (".quit", ".exit", "\\q"):
            return
        buffer.append(line)
        if line.rstrip().endswith(";"):
            run_statement(connection, "\n".join(buffer))
            buffer.clear()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loaders.query", description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--command", help="run one statement and exit")
    args = parser.parse_args(argv)
    data_dir_or_exit()
    connection = open_session()
    if args.command:
        return 0 if run_statement(connection, args.command) else 1
    repl(connection)
    return 0


if __name__ == "__main__":
    exit_promptly(main())
