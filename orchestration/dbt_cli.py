"""dbt's CLI run in this process while it holds the DuckDB warehouse (`make build`).

    python -m orchestration.dbt_cli build [any dbt arguments]

A separate `dbt` process that meets another process's lock on the file fails at once with a
traceback; here dbt starts once the lock is free (waiting at most ELT_LOCK_TIMEOUT seconds and
saying who holds it), or the command fails with one line. dbt-duckdb then shares the file with
this process. On Postgres it is plain dbt.
"""

from __future__ import annotations

import logging
import sys

from loaders.warehouse import WarehouseBusy, held_for_writing


def exit_code(result) -> int:
    """dbt's own convention: 0 success, 1 failed nodes, 2 an error before or around the run."""
    if result.success:
        return 0
    return 2 if result.exception else 1


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from dbt.cli.main import dbtRunner

    try:
        with held_for_writing():
            result = dbtRunner().invoke(sys.argv[1:] if argv is None else argv)
    except WarehouseBusy as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return exit_code(result)


if __name__ == "__main__":
    sys.exit(main())
