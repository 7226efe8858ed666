"""Run the real lake → warehouse load and SIGKILL it in the gap between the warehouse's commit of
one append job and dlt's record of that job (its pending-transition marker).

    python -m tests.warehouse_load_faults <table>

The first job of <table> to finish prints its file name and dies there: dlt has just returned
from the job's commit and has not yet written anything about it.
"""

from __future__ import annotations

import os
import signal
import sys

from dlt.common.destination.client import RunnableLoadJob

from loaders.__main__ import main


def arm(table_name: str) -> None:
    release = RunnableLoadJob._release

    def die_between_commit_and_record(job: RunnableLoadJob, next_state: str) -> None:
        if next_state == "completed" and job.load_table_name == table_name:
            print(job.file_name(), flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        release(job, next_state)

    RunnableLoadJob._release = die_between_commit_and_record


if __name__ == "__main__":
    arm(sys.argv[1])
    main(["vehicles", "load"])
    sys.exit("the kill point was never reached")
