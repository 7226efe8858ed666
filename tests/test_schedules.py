"""Schedules served against a real local Prefect server on 127.0.0.1, and the backfill flow."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL, temporary_settings

from loaders.football_api import football_api
from loaders.settings import PROJECT_ROOT, pipeline
from loaders.warehouse import query
from orchestration.flows import backfill, elt, maintenance
from orchestration.serve import deployments

from .conftest import lay_out_api_recordings, lay_out_as_site, listens_on_loopback_only, real_csv_files

pytestmark = pytest.mark.integration
DEPLOYMENTS = {"vehicles-hourly", "daily-summary", "football-weekly", "maintenance-daily"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


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
    declared = yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())["deployments"]
    assert {d["name"]: d.get("parameters") for d in declared if d["entrypoint"].endswith(":elt")} == loading
    accepted = set(elt.parameters.properties)
    assert all(set(parameters) <= accepted for parameters in loading.values())  # no stale stage_sample


def test_served_deployments_run_on_a_real_local_server(data_dir, tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), ELT_DATA_DIR=str(data_dir))
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
            assert listens_on_loopback_only(port)  # the Prefect server listens on 127.0.0.1 only
            run = run_deployment("elt/vehicles-hourly", timeout=240)
            assert run.state.is_completed(), run.state
    finally:
        os.killpg(served.pid, signal.SIGTERM)
        try:
            served.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(served.pid, signal.SIGKILL)
            served.wait(timeout=30)
    with socket.socket() as probe:  # the server it started is gone
        assert probe.connect_ex(("127.0.0.1", port)) != 0


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
