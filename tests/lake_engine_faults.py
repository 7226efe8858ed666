"""Run the real vehicle lake job on its DuckDB engine and SIGKILL it at one exact point of its write.

    LAKE_ENGINE=duckdb python -m tests.lake_engine_faults "<kill point>"

DuckDB writes a small batch in milliseconds, so polling from outside cannot stop it between two
steps: the job kills itself there. DuckDB, the Parquet and the catalog are the real ones; only
the moment of death is chosen. (The kills inside the pyiceberg commits, and after them before the
files move, are tests/iceberg_commit_faults.py's, on both engines.)
"""

from __future__ import annotations

import os
import signal
import sys

import spark_jobs.vehicle_lake as lake_job
from spark_jobs.duckdb_engine import DuckDBEngine

KILL_POINTS = ("good rows written as Parquet, rejected rows not yet", "Parquet written, not yet committed")


def die(*_args, **_kwargs) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def arm(point: str) -> None:
    if point == KILL_POINTS[0]:
        DuckDBEngine._write_rejected_rows = die
    elif point == KILL_POINTS[1]:
        lake_job.commit_batch = die
    else:
        raise SystemExit(f"unknown kill point {point!r}; known: {', '.join(KILL_POINTS)}")


if __name__ == "__main__":
    if os.environ.get("LAKE_ENGINE") != "duckdb":
        sys.exit("set LAKE_ENGINE=duckdb: these kill points are the DuckDB engine's")
    arm(sys.argv[1])
    lake_job.main()
    sys.exit("the kill point was never reached")
