"""Schedules served against a real local Prefect server on 127.0.0.1, and the backfill flow."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL, temporary_settings

from core.settings import PROJECT_ROOT
from core.warehouse import query
from lake.catalog import catalog
from lake.files import SAMPLE_DIR
from lake.registry import Registry
from loaders.football_api import football_api
from loaders.pipelines import pipeline
from orchestration.concurrency import TURN_RELEASED, TURN_TAKEN, warehouse_limit
from orchestration.flows import backfill, elt, maintenance
from orchestration.serve import deployments
from spark_jobs.lake_commit import ensure_tables

from .conftest import (
    api_counts,
    lay_out_api_recordings,
    lay_out_as_site,
    listens_on_loopback_only,
    real_csv_files,
    rows,
    run_logs,
    sample_matches,
)
from .processes import free_port, stop_group
from .test_vehicle_lake import event_identity
from .vehicles_helpers import expected_daily_summary, good_events, records_in

pytestmark = pytest.mark.integration
DEPLOYMENTS = {"vehicles-hourly", "daily-summary", "football-weekly", "maintenance-daily"}


def test_deployments_have_the_documented_schedules():
    schedules = {d.name: (d.schedules[0].schedule.cron, d.schedules[0].schedule.timezone) for d in deployments()}
    assert schedules == {
        "vehicles-hourly": ("0 * * * *", "UTC"),
        "daily-summary": ("0 1 * * *", "UTC"),
        "football-weekly": ("0 0 * 1-5,8-12 6", "UTC"),
        "maintenance-daily": ("30 2 * * *", "UTC"),
    }


def test_scheduled_deployments_run_in_live_mode_and_never_stage_the_sample():
    loading = {d.name: d.parameters for d in deployments() if d.entrypoint.endswith(":elt")}
    assert {name: parameters.get("mode") for name, parameters in loading.items()} == {
        "vehicles-hourly": "live",
        "daily-summary": "live",
        "football-weekly": "live",
    }
    accepted = set(elt.parameters.properties)
    assert all(set(parameters) <= accepted for parameters in loading.values())  # no stale stage_sample


@contextmanager
def served_deployments(data_dir, tmp_path):
    """orchestration.serve --with-server on a free port, its deployments registered; the API
    URL is set for the block, and both processes are stopped after it."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), ELT_DATA_DIR=str(data_dir))
    # Prefect's defaults are made for a long-lived server: the runner looks for runs to start
    # every 10 s and the scheduler plans runs every 60 s. Here every run is triggered by the test
    # and waited for, so both look more often; what they do is unchanged.
    env.update(PREFECT_RUNNER_POLL_FREQUENCY="1", PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="2")
    served = subprocess.Popen(
        [sys.executable, "-m", "orchestration.serve", "--with-server", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{port}/api"}):
            deadline = time.monotonic() + 180
            names: set[str] = set()
            while names != DEPLOYMENTS:
                assert served.poll() is None, "orchestration.serve exited"
                assert time.monotonic() < deadline, f"deployments never registered: {names}"
                time.sleep(2)
                try:
                    with get_client(sync_client=True) as client:
                        names = {d.name for d in client.read_deployments()}
                except Exception:
                    names = set()
            assert_the_scheduler_plans_runs_then_clear_them()
            yield port
    finally:
        stop_group(served)


def assert_the_scheduler_plans_runs_then_clear_them(timeout: float = 120) -> None:
    """The server's scheduler creates each served deployment's next runs (it once could not: a
    SQLAlchemy 2.1 change broke Prefect 3.8's insert of scheduled runs, so no schedule fired).
    The schedules are then paused, which removes those runs, so none starts inside the test."""
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            planned = {
                deployment.name: [
                    run
                    for run in client.read_flow_runs(deployment_filter=deployment_with_id(deployment.id))
                    if run.auto_scheduled and run.state.is_scheduled()
                ]
                for deployment in client.read_deployments()
            }
            if all(planned.values()) or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert planned.keys() == DEPLOYMENTS and all(planned.values()), {k: len(v) for k, v in planned.items()}
        for deployment in client.read_deployments():
            client.pause_deployment(deployment.id)  # the server also drops its planned runs
        left = [run.id for runs in planned.values() for run in runs if run_exists(client, run.id)]
        assert not left, left


def run_exists(client, flow_run_id) -> bool:
    try:
        client.read_flow_run(flow_run_id)
    except ObjectNotFound:
        return False
    return True


def deployment_with_id(deployment_id) -> DeploymentFilter:
    return DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))


def wait_for_final_states(flow_run_ids: list, timeout: float = 240) -> list:
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            runs = [client.read_flow_run(flow_run_id) for flow_run_id in flow_run_ids]
            if all(run.state.is_final() for run in runs):
                return runs
            assert time.monotonic() < deadline, [run.state for run in runs]
            time.sleep(1)


def warehouse_turns(flow_run_ids: list, expected: int, timeout: float = 60) -> list[tuple]:
    """(taken, released, seconds waited, flow run) per warehouse-writing step, from the run logs
    the Prefect API holds, once all `expected` turns have reached it."""

    def released_in(logs: list) -> dict:
        return {log.task_run_id: log for log in logs if log.message == TURN_RELEASED}

    logs = run_logs(flow_run_ids, lambda logs: len(released_in(logs)) >= expected, timeout)
    taken = {log.task_run_id: log for log in logs if log.message.startswith(TURN_TAKEN)}
    released = released_in(logs)
    turns = []
    for task_run_id, log in taken.items():
        waited = float(re.search(r"after waiting ([0-9.]+)s", log.message)[1])
        turns.append((log.timestamp, released[task_run_id].timestamp, waited, log.flow_run_id))
    return sorted(turns)


def synthetic_events(count: int) -> list[dict]:
    start = datetime(2025, 11, 1, tzinfo=UTC)
    return [
        {
            "vehicle_id": f"{position:04x}",
            "event_time": start + timedelta(minutes=position),
            "event_type": "parking",
            "source_file": "vehicles_events_20251101010000.json",
            "source_position": position,
            "batch_id": "20251101T010000000000Z-00000000",
            "ingested_at": start,
        }
        for position in range(count)
    ]


def commit_lake_events(events: list[dict]) -> None:
    """Vehicle events committed to the lake with pyiceberg, as one batch. The lake job's own
    commits are tested elsewhere; here the lake only has to hold rows for vehicles-hourly."""
    registry = Registry()
    registry.sync_seed()
    table, _ = ensure_tables(catalog(), registry.get("vehicles_events"))
    table.append(pa.Table.from_pylist(events, schema=table.schema().as_arrow()))


def deliver_sample_vehicle_files(incoming: Path) -> dict[str, list[dict]]:
    """The bundled vehicle files dropped into incoming/; their records per file type, read here."""
    incoming.mkdir(parents=True, exist_ok=True)
    delivered: dict[str, list[dict]] = {"vehicles_events": [], "vehicles_status": []}
    for path in sorted(SAMPLE_DIR.glob("*.json")):
        shutil.copyfile(path, incoming / path.name)
        delivered[path.name.rsplit("_", 1)[0]] += records_in(path)
    return delivered


def run_served(name: str) -> None:
    run = run_deployment(f"elt/{name}", timeout=0)
    (finished,) = wait_for_final_states([run.id], timeout=400)
    assert finished.state.is_completed(), finished.state


# One target: the turns are Prefect's global concurrency limit, the same whatever the warehouse.
@pytest.mark.one_target
def test_served_runs_triggered_together_take_turns_in_the_warehouse(data_dir, tmp_path, monkeypatch):
    # The schedules run in live mode: the live sources here are local copies of the bundled
    # files laid out like the sites, and `current` is 2024/25, the season those files hold.
    site = tmp_path / "site"
    shutil.copytree(PROJECT_ROOT / "data" / "sample" / "football_csv", site)
    monkeypatch.setenv("SOURCES__FOOTBALL_CSV__BASE_URL", str(site))
    api = lay_out_api_recordings(tmp_path / "api")
    monkeypatch.setenv("SOURCES__FOOTBALL_API__BASE_URL", str(api))
    monkeypatch.setenv("SOURCES__FOOTBALL_API__SEASON", "2022")  # the season the recordings hold
    monkeypatch.setenv("ELT_TODAY", "2025-03-01")
    committed = synthetic_events(40)
    commit_lake_events(committed)  # so vehicles-hourly starts writing at once (no files: no Spark)
    with served_deployments(data_dir, tmp_path) as port:
        assert listens_on_loopback_only(port)  # the Prefect server listens on 127.0.0.1 only
        # Both at the same instant, as at 00:00 on a Saturday (football loads only: no dbt).
        vehicles = run_deployment("elt/vehicles-hourly", timeout=0)
        football = run_deployment("elt/football-weekly", parameters={"build": False}, timeout=0)
        runs = wait_for_final_states([vehicles.id, football.id])
        assert all(run.state.is_completed() for run in runs), [run.state for run in runs]
        turns = warehouse_turns([vehicles.id, football.id], expected=5)
        with get_client(sync_client=True) as client:
            assert client.read_global_concurrency_limit_by_name(warehouse_limit()).limit == 1

        hourly_before_files = rows("select count(*), count(distinct vehicle_id) from raw_vehicles.vehicle_events")

        # The next hour, on the same server: vehicle files arrived, and the marts are built after.
        delivered = deliver_sample_vehicle_files(data_dir / "incoming")
        run_served("vehicles-hourly")
        loaded = {
            "raw_vehicles": rows(
                "select (select count(*) from raw_vehicles.vehicle_events),"
                " (select count(*) from raw_vehicles.vehicle_status)"
            ),
            "processed": sorted(path.name for path in (data_dir / "processed").rglob("*.json")),
            "left": sorted(
                path.name
                for state in ("incoming", "processing", "failed")
                for path in (data_dir / state).rglob("*.json")
            ),
        }
        run_served("daily-summary")
        marts = rows(
            "select (select count(*) from marts.fct_vehicle_events), (select count(*) from marts.dim_vehicles)"
        )
        daily = rows(
            "select vehicle_id, cast(day as varchar), last_event_time, last_event_type from marts.daily_summary"
        )
    with socket.socket() as probe:  # the server it started is gone
        assert probe.connect_ex(("127.0.0.1", port)) != 0

    # vehicles: lake→warehouse and the row summary; football: CSV, API and the row summary.
    assert len(turns) == 5, turns
    assert {flow_run for *_, flow_run in turns} == {vehicles.id, football.id}
    for (_, released, *_), (taken, *_) in zip(turns, turns[1:], strict=False):
        assert released <= taken, turns  # one writer at a time
    assert max(run.start_time for run in runs) < min(run.end_time for run in runs)  # the runs overlapped
    assert max(waited for _, _, waited, _ in turns) > 0.5, turns  # and one step did wait for the other

    assert rows("select count(*) from raw_football.matches") == [(sample_matches(),)]
    assert rows(
        "select (select count(*) from raw_football_api.competitions), (select count(*) from raw_football_api.teams),"
        " (select count(*) from raw_football_api.matches)"
    ) == [api_counts(api)]
    assert hourly_before_files == [(len(committed), len(committed))]

    # vehicles-hourly really loaded the delivered files: every record, counted from the JSON above
    # (the bundled files have no defective records), through the lake into the warehouse.
    events, reports = delivered["vehicles_events"], delivered["vehicles_status"]
    assert len(good_events(SAMPLE_DIR)) == len(events) > 0
    assert loaded["raw_vehicles"] == [(len(committed) + len(events), len(reports))]
    assert loaded["processed"] == sorted(path.name for path in SAMPLE_DIR.glob("*.json"))
    assert loaded["left"] == []
    # daily-summary built the vehicle marts from them.
    every_event = good_events(SAMPLE_DIR) + [{**event, "at": event["event_time"]} for event in committed]
    vehicles = {record["vehicle_id"] for record in events + reports + committed}
    assert marts == [
        (len(committed) + len({event_identity(event) for event in good_events(SAMPLE_DIR)}), len(vehicles))
    ]
    assert {(vehicle, day): (moment.astimezone(UTC), kind) for vehicle, day, moment, kind in daily} == (
        expected_daily_summary(every_event)
    )


def test_backfill_loads_a_season_range_and_is_idempotent(prefect_api, data_dir, tmp_path, monkeypatch):
    files = [p for p in real_csv_files() if p.name in ("1415_E0.csv", "1718_SP1.csv")]
    site = lay_out_as_site(files, tmp_path / "site")
    monkeypatch.setenv("SOURCES__FOOTBALL_CSV__BASE_URL", str(site))
    # The football marts also need the API tables: the recordings (season 2022) loaded once.
    api = lay_out_api_recordings(tmp_path / "api")
    pipeline("football_api", "raw_football_api").run(football_api(competitions=["BL1"], season=2022, base_url=str(api)))
    first = backfill(2014, 2017, divisions=["E0", "SP1"], request_delay=0, build=False)
    assert first["seasons"] == ["1415", "1516", "1617", "1718"]
    assert sorted(first["football_csv"]["loaded"]) == ["1415/E0", "1718/SP1"]
    assert len(first["football_csv"]["missing"]) == 6
    counts = query("select season, division, count(*) from raw_football.matches group by 1, 2 order by 1, 2")[1]
    assert counts == [("1415", "E0", 380), ("1718", "SP1", 380)]
    second = backfill(2014, 2017, divisions=["E0", "SP1"], request_delay=0)
    assert sorted(second["football_csv"]["unchanged"]) == ["1415/E0", "1718/SP1"]
    assert query("select season, division, count(*) from raw_football.matches group by 1, 2 order by 1, 2")[1] == counts
    assert second["tests"].get("error", 0) == second["tests"].get("fail", 0) == 0
    leaders = query("select division_code, season_label, leader from marts.rpt_league_leaders order by 1, 2")[1]
    assert leaders == [("E0", "2014/15", "Chelsea"), ("SP1", "2017/18", "Barcelona")]


def test_the_maintenance_flow_prunes_old_landing_files(prefect_api, data_dir):
    landing = data_dir / "landing" / "football_csv"
    landing.mkdir(parents=True)
    (old := landing / "old.csv").write_text("x")
    (new := landing / "new.csv").write_text("x")
    forty_days_ago = time.time() - 40 * 86400
    os.utime(old, (forty_days_ago, forty_days_ago))
    outcome = maintenance()
    assert outcome["landing_files_deleted"] == 1 and not old.exists() and new.exists()
    assert outcome["expired_snapshots"] == {}  # an empty lake: nothing to expire
