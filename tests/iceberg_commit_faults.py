"""Run the real vehicle lake job and SIGKILL it at one exact point of its pyiceberg commits.

    python -m tests.iceberg_commit_faults "<kill point>"

Polling from outside cannot hit a window of a few milliseconds, so the job kills itself there:
the commits, the catalog and Spark are the real ones, only the moment of death is chosen.
"""

from __future__ import annotations

import os
import signal
import sys

from pyiceberg.catalog.sql import SqlCatalog

import spark_jobs.vehicle_lake as lake_job

TABLE = "vehicle_events"
REJECTED_TABLE = f"{TABLE}_rejected"

# kill point -> (table whose commit it is in, whether the new metadata file is written first)
KILL_POINTS = {
    "rejected table: new metadata written, catalog pointer not moved": (REJECTED_TABLE, "inside"),
    "rejected table committed, main table not": (REJECTED_TABLE, "after"),
    "main table: new metadata written, catalog pointer not moved": (TABLE, "inside"),
    "main table committed, files not yet moved to processed": (TABLE, "after"),
}


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def arm(point: str) -> None:
    table_name, where = KILL_POINTS[point]
    commit_batch, write_metadata = lake_job.commit_batch, SqlCatalog._write_metadata

    def write_metadata_then_die(*args, **kwargs):
        write_metadata(*args, **kwargs)
        die()

    def commit_batch_with_fault(table, *args):
        if table.name()[-1] != table_name:
            return commit_batch(table, *args)
        if where == "inside":
            SqlCatalog._write_metadata = staticmethod(write_metadata_then_die)
        commit_batch(table, *args)
        die()

    lake_job.commit_batch = commit_batch_with_fault


if __name__ == "__main__":
    arm(sys.argv[1])
    lake_job.main()
    sys.exit("the kill point was never reached")
