"""`make build`: dbt build of everything the loaded sources feed, straight into `marts` (the `elt`
flow audits first), in this process while it holds the DuckDB warehouse. The same plan as the
flow (orchestration/build_plan.py): sources never loaded are skipped and named, a source table
dropped after loading is an error.

    python -m orchestration.build [dbt build options, e.g. --selector football or --select +fct_matches]
"""

from __future__ import annotations

import json
import sys

from core.cli import exit_promptly
from core.settings import DBT_PROFILES_DIR, DBT_PROJECT_DIR, data_dir_or_exit
from core.warehouse import WarehouseBusy, held_for_writing
from orchestration import build_plan

PROJECT = ["--project-dir", str(DBT_PROJECT_DIR), "--profiles-dir", str(DBT_PROFILES_DIR)]
VARS = json.dumps(build_plan.VARS)


def main(argv: list[str]) -> int:
    """dbt runs in this process while it holds the DuckDB warehouse: a separate `dbt` meeting
    another process's lock fails at once; this waits for it (ELT_LOCK_TIMEOUT), then one line."""
    data_dir_or_exit()  # secrets first: dbt, in this process, reads the PG* they fill
    try:
        with held_for_writing():
            return plan_and_build(argv)
    except WarehouseBusy as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def plan_and_build(argv: list[str]) -> int:
    from dbt.cli.main import dbtRunner

    parsed = dbtRunner().invoke(["parse", *PROJECT, "--vars", VARS, "--quiet"])
    if not parsed.success:
        return 2
    manifest = parsed.result.writable_manifest().to_dict()
    try:
        skips = build_plan.skips(manifest)
    except build_plan.SourcesVanished as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    # The parsed manifest is handed over: neither dbt ls nor the build parses again.
    runner = dbtRunner(manifest=parsed.result)
    selector, options = build_plan.split_selector(argv)

    def listed(name: str) -> list[str]:
        return build_plan.selector_nodes(runner, name, *PROJECT, "--vars", VARS)

    try:
        selection = build_plan.selection_args(selector, skips.excluded, listed)
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    result = runner.invoke(["build", *PROJECT, "--vars", VARS, *selection, *options])
    for line in skips.messages:
        print(line)
    if result.success:
        return 0
    return 2 if result.exception else 1


if __name__ == "__main__":
    exit_promptly(main(sys.argv[1:]))
