"""The Prefect `elt` flow and its dbt gate, end to end on real data (real Prefect, dbt, DuckDB)."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import pytest
from prefect.artifacts import Artifact

from core.warehouse import query
from lake.files import STATES
from loaders.modes import ModeError
from orchestration import dbt_gate
from orchestration.flows import elt, print_summary, summarise_run, wait_until_task_runs_are_recorded

from .conftest import lay_out_api_recordings, lay_out_as_site, real_csv_files, rows, run_logs

pytestmark = pytest.mark.integration


def marts_snapshot(data_dir: Path) -> list[tuple]:
    # Through the project's connection: dbt, run in-process by the flow, keeps the file open.
    return query("select division_code, season_code, team_name, points from marts.fct_standings order by 1, 2, 3, 4")[1]


def run_football(**options):
    return elt(
        sources=["football_csv", "football_api"],
        seasons=["2425", "1819"],
        divisions=["E0", "D1"],
        season=2022,  # the API recordings' season
        selector="football",
        **options,
    )


@pytest.fixture
def football_site(data_dir, tmp_path, monkeypatch):
    files = [p for p in real_csv_files() if p.name in ("2425_E0.csv", "1819_D1.csv")]
    site = lay_out_as_site(files, tmp_path / "site")
    monkeypatch.setenv("ELT_MODE", "live")  # real files from a local copy of the sites
    monkeypatch.setenv("SOURCES__FOOTBALL_CSV__BASE_URL", str(site))
    monkeypatch.setenv("SOURCES__FOOTBALL_API__BASE_URL", str(lay_out_api_recordings(tmp_path / "api")))
    return site


def task_run_names(flow_state) -> set[str]:
    """The task runs Prefect's API recorded for a finished flow run (waiting for the last one)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    flow_run_id = flow_state.state_details.flow_run_id
    wait_until_task_runs_are_recorded(flow_run_id, summarise_run.name)
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {run.name for run in runs}


def dbt_node_task_names(target_path: Path) -> set[str]:
    """The task run name PrefectDbtRunner gives each node of the last dbt build, from dbt's own files."""
    manifest = json.loads((target_path / "manifest.json").read_text())
    nodes = {**manifest["nodes"], **manifest["unit_tests"]}
    results = json.loads((target_path / "run_results.json").read_text())["results"]
    return {f"{nodes[r['unique_id']]['resource_type']} {nodes[r['unique_id']]['name']}" for r in results}


def node_rows(artifact_key: str) -> dict[str, tuple]:
    data = Artifact.get(artifact_key).data
    return {row["node"]: (row["status"], row["failures"]) for row in json.loads(data)}


def results_by_node(target_path: Path) -> dict[str, tuple]:
    results = json.loads((target_path / "run_results.json").read_text())["results"]
    return {r["unique_id"]: (r["status"], r.get("failures")) for r in results}


def test_the_gate_blocks_bad_data_keeps_published_marts_and_resumes_after_a_fix(prefect_api, data_dir, football_site):
    # 1. A clean run publishes marts and the report; the mapping coverage test only warns.
    first_state = run_football(return_state=True)
    first = first_state.result()
    assert first["tests"].get("error", 0) == 0 and first["tests"].get("fail", 0) == 0
    # dbt ran inside the gate's step: each node is a row of the dbt-nodes artifact, not a task run.
    target_path = data_dir / "dbt_target"
    assert node_rows("dbt-nodes") == results_by_node(target_path) and len(results_by_node(target_path)) > 50
    assert not dbt_node_task_names(target_path) & task_run_names(first_state)
    published = marts_snapshot(data_dir)
    report = data_dir / "reports" / "league_leaders.csv"
    report_before = report.read_bytes()
    gate = Artifact.get("dbt-gate")
    assert "dbt gate: passed" in gate.data and "Warnings (do not block)" in gate.data
    assert "assert_football_data_teams_are_mapped" in gate.data and "Nurnberg" in gate.data

    # 2. A corrected-at-source file arrives broken: a result that is not H, D or A.
    path = football_site / "2425" / "E0.csv"
    good = path.read_bytes()
    path.write_bytes(good.replace(b"Man United,Fulham,1,0,H", b"Man United,Fulham,1,0,X", 1))
    with pytest.raises(dbt_gate.DbtGateFailed) as failure:
        run_football()
    message = str(failure.value)
    assert "accepted_values_stg_football_data__matches_result__H__D__A" in message
    assert "model.elt.stg_football_data__matches" in message and "1 failing rows" in message
    gate = Artifact.get("dbt-gate")
    assert "FAILED - nothing published" in gate.data
    assert "accepted_values_stg_football_data__matches_result__H__D__A" in gate.data
    assert '"value_field": "X"' in gate.data  # a failing row, from store_failures
    nodes = node_rows("dbt-nodes")
    [failed_test] = [node for node in nodes if "accepted_values_stg_football_data__matches_result" in node]
    assert nodes[failed_test] == ("fail", 1)
    assert marts_snapshot(data_dir) == published  # marts untouched
    assert report.read_bytes() == report_before  # report untouched
    run_results = json.loads((data_dir / "dbt_target" / "run_results.json").read_text())
    not_done = {r["unique_id"] for r in run_results["results"] if r["status"] in ("fail", "error", "skipped")}
    assert len(not_done) > 1 and len(not_done) < len(run_results["results"])

    # 3. The fix lands; the next run resumes with dbt retry and publishes.
    path.write_bytes(good)
    third = run_football()
    assert third["dbt_command"] == ["retry"]
    run_results = json.loads((data_dir / "dbt_target" / "run_results.json").read_text())
    assert {r["unique_id"] for r in run_results["results"]} == not_done  # only what had not passed
    assert third["tests"].get("error", 0) == 0 and third["tests"].get("fail", 0) == 0
    assert "dbt gate: passed" in Artifact.get("dbt-gate").data
    assert marts_snapshot(data_dir) == published
    assert report.exists()

    # 4. Nothing new arrives: the loaders load nothing, and the gate is skipped, not re-run.
    fourth = run_football()
    assert fourth.get("gate_skipped") is True and "tests" not in fourth
    assert marts_snapshot(data_dir) == published

    # 5. Every schema written is the project's own: nothing in public (Postgres), main (DuckDB)
    # or the profile's default schema.
    assert (
        rows(
            "select table_schema, table_name from information_schema.tables "
            "where table_schema in ('public', 'main', 'analytics')"
        )
        == []
    )


@pytest.mark.one_target  # the mode and the seasons a run asks for, not the warehouse
def test_a_live_run_loads_the_current_season_stages_no_sample_and_says_so(
    prefect_api, data_dir, tmp_path, monkeypatch, capsys
):
    site = lay_out_as_site([p for p in real_csv_files() if p.name.startswith("2425_")], tmp_path / "site")
    monkeypatch.setenv("SOURCES__FOOTBALL_CSV__BASE_URL", str(site))
    monkeypatch.setenv("ELT_TODAY", "2025-06-30")  # the last day of 2024/25: current is 2425
    outcome = elt(sources=["football_csv", "vehicles"], build=False, mode="live")

    assert outcome["mode"] == "live"
    assert outcome["football_csv"]["seasons"] == ["2425"]  # .dlt/config.toml: seasons = ["current"]
    assert sorted(outcome["football_csv"]["loaded"]) == [f"2425/{d}" for d in sorted(["E0", "E1", "SC0", "SP1", "D2"])]
    assert outcome["discovery"]["staged"] == 0
    assert not [path for state in STATES for path in (data_dir / state).rglob("*.json")]
    print_summary(outcome)
    printed = capsys.readouterr().out
    assert f"Mode: live (data dir {data_dir})" in printed
    assert "Seasons: football_csv 2425" in printed

    # The data dir now holds live data: a sample run is refused before it loads anything.
    with pytest.raises(ModeError, match=f"data dir {data_dir} holds live data and this run is in sample mode"):
        elt(sources=["vehicles"], build=False, mode="sample")
    assert not [path for state in STATES for path in (data_dir / state).rglob("*.json")]


@pytest.mark.one_target  # which Prefect tasks dbt's nodes run in, not the warehouse
def test_with_elt_dbt_node_tasks_each_dbt_node_runs_as_its_own_prefect_task(prefect_api, data_dir, monkeypatch):
    monkeypatch.setenv("ELT_DBT_NODE_TASKS", "true")
    state = elt(sources=["vehicles"], selector="vehicles", mode="sample", return_state=True)
    outcome = state.result()
    assert outcome["tests"].get("error", 0) == 0 and outcome["tests"].get("fail", 0) == 0
    target_path = data_dir / "dbt_target"
    expected = dbt_node_task_names(target_path)
    assert len(expected) > 20 and expected <= task_run_names(state)
    assert node_rows("dbt-nodes") == results_by_node(target_path)


@pytest.mark.one_target
def test_a_dbt_command_that_cannot_run_fails_with_dbt_s_own_message(data_dir):
    # No node ran, so there is nothing to gate on: the step fails instead of reading old results.
    unknown_selector = r"(?s)dbt build .* failed: .*Could not find selector named no_such_selector"
    with pytest.raises(dbt_gate.DbtCommandFailed, match=unknown_selector):
        dbt_gate.invoke(["build", "--vars", dbt_gate.AUDIT_VARS, "--selector", "no_such_selector"])
    assert not (data_dir / "dbt_target" / "run_results.json").exists()


@pytest.mark.one_target
def test_a_dbt_warning_that_belongs_to_no_node_reaches_the_log(data_dir, caplog):
    # The console gets nothing of dbt's and run_results.json holds only nodes: a selection that
    # matches nothing would otherwise be said only in dbt.log.
    with caplog.at_level("WARNING"):
        result = dbt_gate.invoke(["build", "--vars", dbt_gate.AUDIT_VARS, "--select", "no_such_model"])
    assert result.success
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("'no_such_model' does not match any enabled nodes" in message for message in warnings), warnings


@pytest.mark.one_target
def test_a_dbt_warning_fired_on_one_of_dbt_s_threads_reaches_the_run_s_log(prefect_api, data_dir):
    # dbt runs its nodes on threads of its own, which do not carry the Prefect run's context.
    from dbt.events.types import NoNodesForSelectionCriteria
    from dbt_common.events.base_types import EventLevel, msg_from_base_event
    from prefect import flow, task

    warning = msg_from_base_event(NoNodesForSelectionCriteria(spec_raw="fired_on_a_worker_thread"), EventLevel.WARN)

    def fired_on_a_worker_thread(log) -> bool:
        return "fired_on_a_worker_thread" in log.message

    @task
    def dbt_warns_on_a_worker_thread():
        [callback] = dbt_gate.dbt_runner().callbacks
        worker = threading.Thread(target=callback, args=(warning,))
        worker.start()
        worker.join()

    @flow
    def with_dbt():
        dbt_warns_on_a_worker_thread()

    flow_run_id = with_dbt(return_state=True).state_details.flow_run_id
    logs = run_logs([flow_run_id], lambda logs: any(fired_on_a_worker_thread(log) for log in logs), timeout=30)
    [log] = [log for log in logs if fired_on_a_worker_thread(log)]
    assert log.message.startswith("dbt: ") and log.level == logging.WARNING
    assert log.task_run_id is not None  # the task's log, where the run's other messages are
