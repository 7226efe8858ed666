"""Run the real promote flow and SIGKILL it inside its transaction, after the first mart.

    python -m tests.promote_faults

As in tests/iceberg_commit_faults.py, the process kills itself at the exact point: the
warehouses, the transaction and the flow are the real ones, only the moment of death is chosen.
"""

from __future__ import annotations

import os
import signal
import sys

import orchestration.promote as promote

KILLED_AT = "promote: SIGKILL after the first mart, inside the transaction"


def arm() -> None:
    replace_mart = promote.replace_mart

    def replace_then_die(warehouses, table: str) -> int:
        rows = replace_mart(warehouses, table)
        print(KILLED_AT, file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        return rows

    promote.replace_mart = replace_then_die


if __name__ == "__main__":
    arm()
    sys.exit(promote.main())
