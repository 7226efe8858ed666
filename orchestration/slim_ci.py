"""`make slim-ci`: in dev, dbt builds only what changed against prod (`state:modified+`) and reads
every other model from prod's warehouse (DESIGN §2).

- The state compared against is prod's defer state, dbt_state/manifest.json (staging's manifest,
  installed by `make promote`); before any promotion, the manifest of prod's own last run
  (dbt_target/). With neither, slim CI refuses in one line.
- Deferral: dbt reads an unselected model at the relation the state manifest names. That manifest
  names its own build's database (warehouse_staging after a promotion) and the audit schema
  (marts_audit, orchestration/dbt_gate.py), so dbt is given a copy of it that names prod's
  published relations (database warehouse_prod, schema marts) and, for sources, dev's database
  (comparable_state); prod's file is attached read-only under that name (profiles.yml,
  DBT_DUCKDB_ATTACH). --favor-state: prod's relation even where dev's warehouse has an older copy.
- dbt defers refs, not sources: a modified staging model reads its sources from dev's warehouse.
- DuckDB only: Postgres cannot read across databases, so deferral would need prod's relations in
  dev's database.

    python -m orchestration.slim_ci [--project-dir DIR] [dbt build options]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from core.cli import exit_promptly
from core.settings import (
    DBT_PROFILES_DIR,
    DBT_PROJECT_DIR,
    DEFAULT_ENVIRONMENT,
    data_dir,
    data_dir_or_exit,
    environment,
    target,
    warehouse_path,
)
from core.warehouse import WarehouseBusy, held_for_writing
from orchestration.promote import MARTS

PROD = "prod"
ATTACH_VARIABLE = "DBT_DUCKDB_ATTACH"


class SlimCiRefused(RuntimeError):
    """Slim CI cannot run; the message says why in one line."""


def prod_state_manifest() -> Path:
    """Prod's defer state (installed by promotion), else the manifest of prod's own last run."""
    for candidate in (data_dir(PROD) / "dbt_state" / "manifest.json", data_dir(PROD) / "dbt_target" / "manifest.json"):
        if candidate.is_file():
            return candidate
    raise SlimCiRefused(f"prod has no manifest ({data_dir(PROD)}/dbt_state or dbt_target): promote or run prod first")


def check_runnable() -> None:
    if environment() != DEFAULT_ENVIRONMENT:
        raise SlimCiRefused(f"slim CI builds in dev, not in ELT_ENV={environment()}")
    if target() != "duckdb":
        raise SlimCiRefused(
            "slim CI defers to prod's DuckDB warehouse; Postgres cannot read across databases, "
            "so it is not supported on ELT_TARGET=postgres"
        )
    if not warehouse_path(PROD).is_file():
        raise SlimCiRefused(f"prod has no warehouse ({warehouse_path(PROD)}): run prod first")


def published_relation(node: dict, database: str) -> dict:
    """A manifest node moved to where prod serves it: prod's database, and for a mart (configured
    for the `marts` schema, as publish_marts selects them) the published schema rather than the
    audit schema the orchestrated build wrote it to."""
    if node.get("database") is None or node.get("relation_name") is None:
        return node
    schema = MARTS if node.get("config", {}).get("schema") == MARTS else node["schema"]
    relation_name = f'"{database}"."{schema}"."{node["alias"]}"'
    return {**node, "database": database, "schema": schema, "relation_name": relation_name}


def comparable_state(state: dict, prod_database: str, dev_database: str) -> dict:
    """The state manifest as slim CI compares and defers to it: every model, seed and snapshot
    at prod's published relation, every source in dev's database. dbt counts a source whose
    database differs as modified (so everything it feeds), and that difference is the
    environment's, not a change."""
    nodes = {uid: published_relation(node, prod_database) for uid, node in state["nodes"].items()}
    sources = {uid: {**source, "database": dev_database} for uid, source in state["sources"].items()}
    return {**state, "nodes": nodes, "sources": sources}


def attachment(prod_warehouse: Path) -> list[dict]:
    """Prod's warehouse as dev's dbt connection attaches it: read-only, under its own name."""
    return [{"path": str(prod_warehouse), "alias": prod_warehouse.stem, "read_only": True}]


def build_args(project_dir: Path, target_dir: Path, state_dir: Path) -> list[str]:
    return [
        "build",
        "--project-dir",
        str(project_dir),
        "--profiles-dir",
        str(DBT_PROFILES_DIR),
        "--target-path",
        str(target_dir),
        "--select",
        "state:modified+",
        "--state",
        str(state_dir),
        "--defer",
        "--favor-state",
    ]


def slim_build(project_dir: Path, options: list[str]) -> int:
    from dbt.cli.main import dbtRunner

    state = prod_state_manifest()
    prod_warehouse = warehouse_path(PROD)
    work = data_dir() / "slim_ci"
    state_dir = work / "state"
    state_dir.mkdir(parents=True, exist_ok=True)
    comparable = comparable_state(json.loads(state.read_text()), prod_warehouse.stem, warehouse_path().stem)
    (state_dir / "manifest.json").write_text(json.dumps(comparable))
    os.environ[ATTACH_VARIABLE] = json.dumps(attachment(prod_warehouse))
    print(f"slim CI: building state:modified+ against {state}, reading the rest from {prod_warehouse}")
    result = dbtRunner().invoke([*build_args(project_dir, work / "target", state_dir), *options])
    if result.success:
        return 0
    return 2 if result.exception else 1


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m orchestration.slim_ci",
        description="dbt build of state:modified+ in dev, against prod's manifest, reading the rest from prod.",
    )
    parser.add_argument("--project-dir", type=Path, default=DBT_PROJECT_DIR)
    arguments, options = parser.parse_known_args(argv)
    data_dir_or_exit()
    try:
        check_runnable()
        prod_state_manifest()
    except SlimCiRefused as error:
        print(f"error: slim CI refused: {error}", file=sys.stderr)
        return 2
    try:
        with held_for_writing():
            return slim_build(arguments.project_dir, options)
    except WarehouseBusy as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    exit_promptly(main(sys.argv[1:]))
