"""One source loaded alone on a fresh data dir: `make build` and the `elt` flow build and test
what it feeds, skip the never-loaded sources and say so; a table dropped after loading fails."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.settings import PROJECT_ROOT
from core.warehouse import connect, execute
from loaders.vehicles.generate import generate
from orchestration import build
from orchestration.build_plan import SourcesVanished
from orchestration.flows import elt

from .api_replay import recorded_routes
from .conftest import QUIET_TOOLS, lay_out_api_recordings, lay_out_as_site, real_csv_files, rows, tables_in
from .vehicles_helpers import expected_daily_summary, good_events

pytestmark = pytest.mark.integration

FOOTBALL_MARTS = {"dim_seasons", "fct_matches", "fct_standings", "rpt_league_leaders"}
API_MARTS = {"dim_competitions", "fct_api_matches", "fct_competition_teams", "rpt_teams_per_competition"}
VEHICLE_MARTS = {"daily_summary", "dim_vehicles", "fct_vehicle_events"}
# dim_divisions comes from a seed; dim_teams conforms both football sources and builds from either.
# With the API alone the football-data.co.uk marts are built too, with no rows: they carry the
# conformed team keys, which the API's teams feed (int_teams__football_data_names).
BUILT = {
    "football_csv": FOOTBALL_MARTS | {"dim_divisions", "dim_teams"},
    "football_api": API_MARTS | FOOTBALL_MARTS | {"dim_divisions", "dim_teams"},
    "vehicles": VEHICLE_MARTS | {"dim_divisions"},
}
# Built only because a built mart reads it, from never-loaded sources alone: empty, and its tests
# (reading nothing loaded) are skipped with that source. dim_seasons feeds rpt_league_leaders.
BUILT_EMPTY_UNTESTED = {"football_csv": set(), "football_api": {"dim_seasons"}, "vehicles": set()}
SOURCE_MARTS = {"football_data": FOOTBALL_MARTS, "football_api": API_MARTS, "vehicles": VEHICLE_MARTS}
NEVER_LOADED = {  # dbt source -> its dataset, for each source loaded alone
    "football_csv": {"football_api": "raw_football_api", "vehicles": "raw_vehicles"},
    "football_api": {"football_data": "raw_football", "vehicles": "raw_vehicles"},
    "vehicles": {"football_api": "raw_football_api", "football_data": "raw_football"},
}


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(
        args, cwd=PROJECT_ROOT, env={**os.environ, **QUIET_TOOLS, **(env or {})}, capture_output=True, text=True
    )
    assert result.returncode == 0, f"{args} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def load_alone(source: str, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Load one source through its CLI, as a user would; return the flow options for the same source."""
    python = sys.executable
    if source == "football_csv":
        files = [path for path in real_csv_files() if path.name == "2425_E0.csv"]
        monkeypatch.setenv("SOURCES__FOOTBALL_CSV__BASE_URL", str(lay_out_as_site(files, tmp_path / "site")))
        cli(python, "-m", "loaders", "football-csv", "--seasons", "2425", "--divisions", "E0")
        return {"seasons": ["2425"], "divisions": ["E0"]}
    if source == "football_api":
        monkeypatch.setenv("SOURCES__FOOTBALL_API__BASE_URL", str(lay_out_api_recordings(tmp_path / "api")))
        cli(python, "-m", "loaders", "football-api")
        return {}
    monkeypatch.setenv("ELT_MODE", "live")  # only the generated files: no sample staged
    generate(data_dir / "incoming", files=1, events_per_file=40)
    cli(python, "-m", "loaders", "vehicles", "discover")
    cli(python, "-m", "spark_jobs.vehicle_lake")
    cli(python, "-m", "loaders", "vehicles", "load")
    return {}


def expected_rows(source: str, data_dir: Path) -> dict[str, int]:
    """Row counts computed from the input files, not from the code under test."""
    if source == "football_csv":
        [path] = [path for path in real_csv_files() if path.name == "2425_E0.csv"]
        with path.open(encoding="utf-8-sig", newline="") as handle:
            matches = [row for row in csv.DictReader(handle) if row.get("Date")]
        teams = {row["HomeTeam"] for row in matches} | {row["AwayTeam"] for row in matches}
        return {"fct_matches": len(matches), "dim_teams": len(teams), "dim_seasons": 1}
    if source == "football_api":
        competitions = json.loads(recorded_routes()["/v4/competitions"].read_bytes())["competitions"]
        return {"dim_competitions": len(competitions), "fct_matches": 0, "fct_standings": 0, "rpt_league_leaders": 0}
    events = good_events(data_dir / "processed" / "vehicles_events")
    return {"fct_vehicle_events": len(events), "daily_summary": len(expected_daily_summary(events))}


def data_test_statuses(marts: set[str], target_path: Path) -> dict[str, list[str]]:
    """Mart -> statuses of the data tests attached to it in the last build there."""
    nodes = json.loads((target_path / "manifest.json").read_text())["nodes"]
    statuses: dict[str, list[str]] = {mart: [] for mart in marts}
    for result in json.loads((target_path / "run_results.json").read_text())["results"]:
        attached = nodes.get(result["unique_id"], {}).get("attached_node") or ""
        if attached.removeprefix("model.elt.") in statuses:
            statuses[attached.removeprefix("model.elt.")].append(result["status"])
    return statuses


def assert_names_the_skipped(lines: list[str], source: str) -> None:
    """One line per never-loaded source, with the reason and its marts that were not built."""
    assert len(lines) == len(NEVER_LOADED[source]), lines
    for line, (name, dataset) in zip(sorted(lines), sorted(NEVER_LOADED[source].items()), strict=True):
        assert line.startswith(f"skipped source {name} (never loaded: no tables in {dataset}): "), line
        for mart in SOURCE_MARTS[name] - BUILT[source]:
            assert mart in line, (mart, line)


def assert_built_and_tested(source: str, schema: str, target_path: Path, data_dir: Path) -> None:
    assert tables_in(schema) == BUILT[source]
    for mart, count in expected_rows(source, data_dir).items():
        assert rows(f"select count(*) from {schema}.{mart}") == [(count,)], mart
    for mart in BUILT_EMPTY_UNTESTED[source]:
        assert rows(f"select count(*) from {schema}.{mart}") == [(0,)], mart
    for mart, statuses in data_test_statuses(BUILT[source] - BUILT_EMPTY_UNTESTED[source], target_path).items():
        assert statuses and set(statuses) == {"pass"}, (mart, statuses)


@pytest.mark.parametrize("source", ["football_csv", "football_api", "vehicles"])
def test_a_source_loaded_alone_builds_and_tests_its_marts_and_names_the_skipped_sources(
    prefect_api, source, target, data_dir, tmp_path, monkeypatch, capsys
):
    options = load_alone(source, data_dir, tmp_path, monkeypatch)

    # make build: exit 0, the marts of what is loaded built and tested, one line per skipped source.
    # (DuckDB only, for the suite's time: the plan is the flow's, which runs on both targets below.)
    if target == "duckdb":
        build_target = data_dir / "make_build_target"
        env = {"ELT_DATA_DIR": str(data_dir), "DBT_TARGET_PATH": str(build_target), "DBT_LOG_PATH": str(tmp_path)}
        made = cli("make", "--no-print-directory", "build", env=env)
        assert_names_the_skipped([line for line in made.stdout.splitlines() if line.startswith("skipped ")], source)
        assert_built_and_tested(source, "marts", build_target, data_dir)

    # The flow on the same data dir: completed, the same marts audited and published, same lines.
    # A football source builds through the `football` selector, which holds the other football
    # source's never-loaded nodes: they stay out though dbt ignores --exclude beside --selector.
    outcome = elt(sources=[source], selector=None if source == "vehicles" else "football", **options)
    assert_names_the_skipped(outcome["skipped"], source)
    assert outcome["tests"].get("error", 0) == 0 and outcome["tests"].get("fail", 0) == 0
    assert tables_in("marts_audit") == BUILT[source]
    assert_built_and_tested(source, "marts", data_dir / "dbt_target", data_dir)
    assert outcome["freshness"] and all(status == "pass" for status in outcome["freshness"].values())
    assert {name.split(".")[0] for name in outcome["freshness"]} == {
        {"football_csv": "football_data"}.get(source, source)
    }
    if source == "football_csv":
        assert_a_table_dropped_after_loading_is_an_error(options, capsys, monkeypatch, data_dir)


def assert_a_table_dropped_after_loading_is_an_error(options, capsys, monkeypatch, data_dir) -> None:
    monkeypatch.setenv("DBT_TARGET_PATH", str(data_dir / "make_build_target"))
    with connect(read_only=False) as connection:
        execute(connection, "drop table raw_football.source_files")
    gone = "source football_data was loaded but raw_football.source_files is gone"
    # make build's entry point, in this process: the flow's dbt still holds the DuckDB file.
    capsys.readouterr()
    assert build.main([]) == 1
    assert f"error: {gone}" in capsys.readouterr().err
    with pytest.raises(SourcesVanished, match=gone):
        elt(sources=[], **options)
