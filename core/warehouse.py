"""A DB-API connection to the configured warehouse (DuckDB file or Postgres from PG* variables),
and DuckDB's one-writer rule (DESIGN §9).

SQL here is written with `%s` placeholders (psycopg2's style); `execute` adapts them for DuckDB.

DuckDB lets one process at a time open the file read-write (and any number read-only when no
process writes). A writer holds the file for the whole of its work (`held_for_writing`): dlt
and dbt running in the same process share that one database instance, and no other process can
slip in between their connections. Anything that meets another process's lock waits for it, at
most ELT_LOCK_TIMEOUT seconds, saying who holds it, then fails with one line (WarehouseBusy).
Postgres has MVCC: nothing waits there.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from core.settings import postgres_credentials, seconds_setting, target, warehouse_path

log = logging.getLogger(__name__)
T = TypeVar("T")

LOCK_TIMEOUT_VARIABLE = "ELT_LOCK_TIMEOUT"
DEFAULT_LOCK_TIMEOUT = 300.0
LOCK_POLL_SECONDS = 0.5
_LOCK_HOLDER = re.compile(r"Conflicting lock is held in .*? \(PID (?P<pid>\d+)\)")


class WarehouseBusy(RuntimeError):
    """Another process kept the DuckDB warehouse locked for the whole bounded wait."""


def lock_timeout() -> float:
    """Seconds to wait for another process's lock on the DuckDB file (ELT_LOCK_TIMEOUT)."""
    return seconds_setting(LOCK_TIMEOUT_VARIABLE, DEFAULT_LOCK_TIMEOUT)


def lock_holder(error: Exception) -> int | None:
    """The PID DuckDB names in a lock conflict; None when the error is not a lock conflict."""
    match = _LOCK_HOLDER.search(str(error))
    return int(match["pid"]) if match else None


def describe_process(pid: int) -> str:
    """'PID 123 (python -m loaders.query)', or just the PID when the process is gone or hidden."""
    import psutil

    try:
        process = psutil.Process(pid)
        command = " ".join(" ".join(process.cmdline()).split()) or process.name()  # one line
    except psutil.Error:
        return f"PID {pid}"
    return f"PID {pid} ({command if len(command) <= 80 else command[:77] + '...'})"


def when_unlocked(open_file: Callable[[], T], path: Path, timeout: float | None = None) -> T:
    """open_file(), retried while another process holds the DuckDB file's lock, for at most
    `timeout` seconds (default ELT_LOCK_TIMEOUT); says who holds it while waiting."""
    import duckdb

    timeout = lock_timeout() if timeout is None else timeout
    deadline = time.monotonic() + timeout
    announced: int | None = None
    while True:
        try:
            return open_file()
        except duckdb.IOException as error:
            pid = lock_holder(error)
            if pid is None:
                raise
            if time.monotonic() >= deadline:
                raise WarehouseBusy(
                    f"the warehouse {path} is locked by {describe_process(pid)}; "
                    f"gave up after {timeout:g}s ({LOCK_TIMEOUT_VARIABLE})"
                ) from None
            if pid != announced:
                log.warning(
                    "waiting for the warehouse %s: %s holds it (%s, %s)",
                    path,
                    describe_process(pid),
                    f"at most {timeout:g}s" if math.isfinite(timeout) else "for as long as it does",
                    LOCK_TIMEOUT_VARIABLE,
                )
                announced = pid
            time.sleep(LOCK_POLL_SECONDS)


@contextlib.contextmanager
def held_for_writing(timeout: float | None = None) -> Iterator[None]:
    """This process holds the DuckDB warehouse while the block runs (dlt and dbt inside it share
    the file); waits for another process's lock first. On Postgres, nothing to hold."""
    if target() != "duckdb":
        yield
        return
    import duckdb

    path = warehouse_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = when_unlocked(lambda: duckdb.connect(str(path)), path, timeout)
    try:
        yield
    finally:
        connection.close()


def _open_duckdb(read_only: bool):
    import duckdb

    path = str(warehouse_path())
    if read_only:
        try:
            return duckdb.connect(path, read_only=True)
        except duckdb.ConnectionException:
            pass  # this process has the file open read-write already (dbt, dlt): share that
    return duckdb.connect(path)


@contextlib.contextmanager
def connect(read_only: bool = True) -> Iterator:
    """A connection that commits on success and rolls back on error. A DuckDB reader opens the
    file read-only (beside other readers), unless this process already has it open read-write."""
    if target() == "postgres":
        import psycopg2

        connection = psycopg2.connect(postgres_credentials())
    else:
        warehouse_path().parent.mkdir(parents=True, exist_ok=True)
        if read_only and not warehouse_path().exists():
            read_only = False  # read-only cannot create the file
        connection = when_unlocked(lambda: _open_duckdb(read_only), warehouse_path())
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
    """Column names and rows of one read-only query; the file is held only while it runs."""
    with connect() as connection:
        cursor = execute(connection, sql, params)
        columns = [description[0] for description in cursor.description]
        return columns, cursor.fetchall()
