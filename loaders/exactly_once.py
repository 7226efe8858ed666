"""Warehouse destinations whose Parquet append jobs load each file once, even when dlt runs one again.

dlt records a job as done just after the warehouse commits it (a pending-transition marker, written
in the gap dlt-hub/dlt#3767 narrowed but cannot close); a process killed inside that gap runs the
job again on the resume, and an append job's rows land twice. Here an append job commits its rows
together with its key in a ledger table of the dataset: the load package's id and dlt's job id (the
job file's name without its retry count), both the same on a resume and on a retry. A job that
finds its key taken was committed by an earlier run of it (killed, or failed after its commit, before
dlt recorded it), and commits nothing.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import TYPE_CHECKING

import dlt
from dlt.common.destination.client import LoadJob, PreparedTableSchema, RunnableLoadJob
from dlt.common.destination.reference import DestinationReference
from dlt.destinations.impl.duckdb.duck import DuckDbClient, DuckDbCopyJob
from dlt.destinations.impl.postgres.postgres import PostgresClient, PostgresParquetCopyJob

if TYPE_CHECKING:
    from adbc_driver_manager.dbapi import Connection

LEDGER = "_loaded_job_files"

# A job creates the ledger when it is missing (a package left half-loaded before the ledger
# existed resumes without dlt's schema step); one job thread at a time, so two never race.
LEDGER_CREATION = threading.Lock()

log = logging.getLogger(__name__)


def ledger_of(job: RunnableLoadJob) -> str:
    return job._job_client.sql_client.make_qualified_table_name(LEDGER)


def ledger_ddl(ledger: str) -> str:
    return (
        f"create table if not exists {ledger} (load_id varchar not null, job_id varchar not null,"
        " loaded_at timestamp with time zone not null default current_timestamp, primary key (load_id, job_id))"
    )


def claim(job: RunnableLoadJob) -> tuple[str, tuple[str, str]]:
    """The statement that takes the job's key, and its parameters; it returns no row when an
    earlier run of the job committed it."""
    statement = f"insert into {ledger_of(job)} (load_id, job_id) values ($1, $2) on conflict do nothing returning 1"
    return statement, (job._load_id, job.job_id())


class AlreadyLoaded(Exception):
    pass


def skipped(job: RunnableLoadJob) -> None:
    log.warning(
        "%s of load %s skipped: an earlier run of it committed it, then died or failed before dlt recorded it",
        job.job_id(),
        job._load_id,
    )


class DuckDbCopyOnceJob(DuckDbCopyJob):
    """dlt's copy of the file, in the transaction that takes the job's key."""

    def run(self) -> None:
        sql = self._job_client.sql_client
        with LEDGER_CREATION:
            sql.execute_sql(ledger_ddl(ledger_of(self)))
        with sql.begin_transaction():
            statement, key = claim(self)
            if not sql.execute_sql(statement, *key):
                skipped(self)
                return
            super().run()


class PostgresParquetCopyOnceJob(PostgresParquetCopyJob):
    """dlt's ADBC copy runs on the connection returned here, in the transaction the claim opens,
    and commits both."""

    def _connect(self) -> Connection:
        connection = super()._connect()
        try:
            with connection.cursor() as cursor:
                with LEDGER_CREATION:
                    cursor.execute(ledger_ddl(ledger_of(self)))
                    connection.commit()
                cursor.execute(*claim(self))
                claimed = cursor.fetchall()
        except BaseException:
            with contextlib.suppress(Exception):  # the claim's error is the one to raise
                connection.close()
            raise
        if not claimed:
            connection.close()
            raise AlreadyLoaded
        return connection

    def run(self) -> None:
        try:
            super().run()
        except AlreadyLoaded:
            skipped(self)


ONCE_JOBS = {DuckDbCopyJob: DuckDbCopyOnceJob, PostgresParquetCopyJob: PostgresParquetCopyOnceJob}


class LoadsAppendsOnce:
    """Mixed into a dlt SQL job client: its append jobs that copy Parquet files become their
    once-only versions."""

    def create_load_job(
        self, table: PreparedTableSchema, file_path: str, load_id: str, restore: bool = False
    ) -> LoadJob:
        job = super().create_load_job(table, file_path, load_id, restore)
        once = ONCE_JOBS.get(type(job))
        if once and table["write_disposition"] == "append":
            return once(file_path)
        return job


class DuckDbOnceClient(LoadsAppendsOnce, DuckDbClient):
    pass


class PostgresOnceClient(LoadsAppendsOnce, PostgresClient):
    pass


class DestinationAppendingOnce:
    """Mixed into a dlt destination factory: its client is the once-only one, and its type stays
    dlt's own (its config sections, and the destination kept in pipeline state)."""

    once_client: type
    dlt_type: str

    @property
    def client_class(self) -> type:
        return self.once_client

    @property
    def destination_type(self) -> str:
        return DestinationReference.normalize_type(self.dlt_type)


class duckdb_once(DestinationAppendingOnce, dlt.destinations.duckdb):
    """dlt's DuckDB destination, appending each Parquet file once."""

    once_client, dlt_type = DuckDbOnceClient, "duckdb"


class postgres_once(DestinationAppendingOnce, dlt.destinations.postgres):
    """dlt's Postgres destination, appending each Parquet file once."""

    once_client, dlt_type = PostgresOnceClient, "postgres"
