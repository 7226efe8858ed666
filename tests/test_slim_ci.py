"""`make slim-ci`: after one model changes, dev builds only it and its children, reading every
other model from prod's warehouse (orchestration/slim_ci.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from core.settings import PROJECT_ROOT

from . import test_environments
from .test_environments import base_env, run_module

pytestmark = pytest.mark.one_target
staging_and_prod = test_environments.staging_and_prod  # the same runs, once for this module

CHANGED_MODEL = "model.elt.int_teams__football_data_names"  # a view read by two marts
CHANGED_FILE = Path("models/intermediate/teams/int_teams__football_data_names.sql")


@pytest.fixture(params=["before any promotion", "after a promotion"])
def prod(staging_and_prod, tmp_path, request) -> tuple[Path, Path]:
    """A copy of the data dir where staging and prod ran the sample flow, and the manifest slim
    CI compares against: prod's own last one, or, once staging was promoted, staging's (which
    names warehouse_staging and marts_audit: slim CI must still read prod's relations)."""
    root = tmp_path / "data"
    shutil.copytree(staging_and_prod["root"], root, symlinks=True)
    if request.param == "before any promotion":
        return root, root / "prod" / "dbt_target" / "manifest.json"
    promoted = run_module("orchestration.promote", root, "prod")
    assert promoted.returncode == 0, promoted.stderr[-3000:]
    return root, root / "prod" / "dbt_state" / "manifest.json"


def slim_ci(root: Path, *arguments: str, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "orchestration.slim_ci", *arguments],
        env=base_env(root, **extra),
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


def descendants(child_map: dict[str, list[str]], root: str) -> set[str]:
    found, pending = set(), [root]
    while pending:
        for child in child_map.get(pending.pop(), []):
            if child not in found:
                found.add(child)
                pending.append(child)
    return found


def changed_project(folder: Path) -> Path:
    """A copy of the dbt project with one model's SQL changed (a comment: a new checksum)."""
    project = folder / "dbt_project"
    shutil.copytree(PROJECT_ROOT / "dbt_project", project, ignore=shutil.ignore_patterns("target", "logs"))
    model = project / CHANGED_FILE
    model.write_text("-- changed: slim CI builds this model and its children\n" + model.read_text())
    return project


STALE_IN_DEV = ("staging", "stg_football_data__matches")  # a parent of the changed model


def leave_a_stale_copy_in_dev(warehouse: Path) -> None:
    """An old build of an unchanged parent in dev's warehouse: slim CI must read prod's."""
    import duckdb

    schema, table = STALE_IN_DEV
    with duckdb.connect(str(warehouse)) as connection:
        connection.execute(f"create schema {schema}")
        connection.execute(f"create table {schema}.{table} as select 'stale' as stale")


def dev_relations(warehouse: Path) -> set[tuple[str, str]]:
    import duckdb

    with duckdb.connect(str(warehouse), read_only=True) as connection:
        rows = connection.execute(
            "select table_schema, table_name from information_schema.tables "
            "where table_catalog = current_database() and table_schema <> 'test_failures'"
        ).fetchall()
    return set(rows)


def test_slim_ci_after_changing_one_model_builds_only_it_and_its_children_reading_the_rest_from_prod(prod, tmp_path):
    root, state = prod
    project = changed_project(tmp_path)
    leave_a_stale_copy_in_dev(root / "warehouse.duckdb")
    result = slim_ci(root, "--project-dir", str(project))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    assert f"against {state}," in result.stdout
    prod_manifest = json.loads(state.read_text())
    expected = {CHANGED_MODEL} | descendants(prod_manifest["child_map"], CHANGED_MODEL)
    target = root / "slim_ci" / "target"
    results = json.loads((target / "run_results.json").read_text())["results"]
    assert {result["unique_id"] for result in results} == expected
    for result in results:  # dbt runs nothing for an exposure (its status is no-op)
        built_or_passed = "no-op" if result["unique_id"].startswith("exposure.") else {"success", "pass"}
        assert result["status"] in built_or_passed, result["unique_id"]

    compiled = (target / "compiled" / "elt" / CHANGED_FILE).read_text()
    schema, table = STALE_IN_DEV
    assert f'"warehouse_prod"."{schema}"."{table}"' in compiled
    assert '"warehouse_prod"."seeds"."team_name_mapping"' in compiled

    built_models = {
        (node["schema"], node["alias"])
        for uid, node in json.loads((target / "manifest.json").read_text())["nodes"].items()
        if uid in expected and node["resource_type"] == "model"
    }
    assert dev_relations(root / "warehouse.duckdb") == built_models | {STALE_IN_DEV}


def test_slim_ci_refuses_in_one_line_without_a_prod_manifest(tmp_path):
    (tmp_path / "data" / "prod").mkdir(parents=True)
    (tmp_path / "data" / "prod" / "warehouse_prod.duckdb").touch()
    result = slim_ci(tmp_path / "data")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: slim CI refused: prod has no manifest ({tmp_path / 'data' / 'prod'}/dbt_state or dbt_target): "
        "promote or run prod first"
    )


def test_slim_ci_refuses_on_postgres(tmp_path):
    result = slim_ci(tmp_path / "data", ELT_TARGET="postgres")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: slim CI refused: slim CI defers to prod's DuckDB warehouse;")
