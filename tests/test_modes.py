"""Run modes as a user meets them: `sample` (the bundled inputs, offline) and `live` (real
sources, here local folders laid out like them: no test reaches the internet). A data dir
remembers the mode that filled it and refuses the other."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lake.files import SAMPLE_DIR, STATES

from .conftest import lay_out_api_recordings, lay_out_as_site, real_csv_files, rows
from .processes import run_loaders

pytestmark = [pytest.mark.integration, pytest.mark.one_target]  # about the data dir, not the warehouse


@pytest.fixture
def in_process(capsys, monkeypatch):
    """The CLI's main() in this process (for runs refused before they load: no start-up cost);
    returns the exit code and what it wrote to stderr."""
    from loaders.__main__ import main

    def run(*args: str, **env: str) -> tuple[int, str]:
        with monkeypatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            capsys.readouterr()
            code = main(list(args))
            return code, capsys.readouterr().err.strip()

    return run


def lifecycle_files(data_dir: Path) -> set[str]:
    return {path.name for state in STATES for path in (data_dir / state).rglob("*.json")}


def landing_files(data_dir: Path) -> set[Path]:
    return set((data_dir / "landing").rglob("*.*"))


def refusal(data_dir: Path, remembered: str, asked: str) -> str:
    """The one line a refused run prints, written out here as the user reads it."""
    return (
        f"error: data dir {data_dir} holds {remembered} data and this run is in {asked} mode; "
        f"use another ELT_DATA_DIR for {asked} data, or `make reset` to empty this one"
    )


@pytest.fixture
def site(tmp_path) -> Path:
    """football-data.co.uk laid out locally with the real 2024/25 files of the five divisions."""
    return lay_out_as_site([p for p in real_csv_files() if p.name.startswith("2425_")], tmp_path / "site")


def test_a_fresh_data_dir_runs_in_sample_mode_and_stages_the_sample(data_dir):
    assert "Mode: none yet (a fresh data dir" in run_loaders("status").stdout
    result = run_loaders("vehicles", "discover")
    assert result.returncode == 0, result.stderr
    assert lifecycle_files(data_dir) == {path.name for path in SAMPLE_DIR.glob("*.json")}
    assert (data_dir / ".elt-mode").read_text() == "sample\n"
    assert f"Mode: sample (remembered in {data_dir / '.elt-mode'})" in run_loaders("status").stdout


def test_live_mode_stages_no_sample_only_files_that_arrive(data_dir):
    refused = run_loaders("vehicles", "stage-sample", ELT_MODE="live")
    assert refused.returncode == 2
    assert (
        refused.stderr.strip() == "error: vehicles stage-sample copies the bundled sample: it runs in sample mode only"
    )
    arrived = "vehicles_events_20260101000000.json"
    (data_dir / "incoming").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(sorted(SAMPLE_DIR.glob("vehicles_events_*.json"))[0], data_dir / "incoming" / arrived)

    result = run_loaders("vehicles", "discover", ELT_MODE="live")
    assert result.returncode == 0, result.stderr
    assert "1 to process" in result.stdout
    assert lifecycle_files(data_dir) == {arrived}  # nothing from data/sample
    assert "Mode: live" in run_loaders("status").stdout  # remembered: ELT_MODE is no longer needed


def test_live_defaults_read_config_with_current_seasons(data_dir, site, tmp_path):
    live = {
        "ELT_MODE": "live",
        "SOURCES__FOOTBALL_CSV__BASE_URL": str(site),
        "SOURCES__FOOTBALL_API__BASE_URL": str(lay_out_api_recordings(tmp_path / "api")),
    }
    # On 30 June 2025 the current season is 2024/25, the one the site holds; the API recordings
    # were made on 12 September 2022, in 2022/23.
    csv = run_loaders("football-csv", ELT_TODAY="2025-06-30", **live)
    assert csv.returncode == 0, csv.stderr
    assert "football_csv (2425): 5 loaded, 0 unchanged, 0 not found, 0 failed" in csv.stdout
    api = run_loaders("football-api", ELT_TODAY="2022-09-12", **live)
    assert api.returncode == 0, api.stderr
    assert "football_api: season 2022" in api.stdout
    assert rows("select count(*) from raw_football_api.matches where season_year = 2022") == [(306,)]


def test_switching_modes_on_a_used_data_dir_is_refused_and_loads_nothing(data_dir, site, in_process):
    sample = run_loaders("football-csv", "--divisions", "E0")
    assert sample.returncode == 0, sample.stderr
    before = (rows("select count(*) from raw_football.matches"), landing_files(data_dir), lifecycle_files(data_dir))

    for args, env in [
        (("football-csv", "--divisions", "E0,E1", "--base-url", str(site)), {}),  # a mirror: live data
        (("football-csv", "--live"), {}),
        (("football-api",), {"ELT_MODE": "live"}),
        (("vehicles", "discover"), {"ELT_MODE": "live"}),
    ]:
        assert in_process(*args, **env) == (2, refusal(data_dir, "sample", "live")), args

    flow = subprocess.run(  # make run: refused before the flow (and Prefect) starts
        [sys.executable, "-m", "orchestration.flows"],
        env={**os.environ, "ELT_MODE": "live"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert flow.returncode == 2 and flow.stderr.strip() == refusal(data_dir, "sample", "live")

    after = (rows("select count(*) from raw_football.matches"), landing_files(data_dir), lifecycle_files(data_dir))
    assert after == before
    assert "ELT_MODE=live differs: loads are refused" in run_loaders("status", ELT_MODE="live").stdout


def test_a_live_data_dir_keeps_its_mode_and_refuses_the_sample(data_dir, site, in_process):
    live = run_loaders("football-csv", "--divisions", "E0", "--base-url", str(site), "--seasons", "2425")
    assert live.returncode == 0, live.stderr
    assert (data_dir / ".elt-mode").read_text() == "live\n"
    # ELT_MODE unset: the remembered live mode, so no sample is staged.
    assert in_process("vehicles", "discover") == (0, "")
    assert lifecycle_files(data_dir) == set()
    assert in_process("football-api", ELT_MODE="sample") == (2, refusal(data_dir, "live", "sample"))
    assert in_process("football-csv", "--live", ELT_MODE="sample") == (
        2,
        "error: this run asks for live mode but ELT_MODE=sample: choose one",
    )
    assert in_process("football-csv", ELT_MODE="demo") == (2, "error: ELT_MODE='demo' is not one of sample, live")


def test_a_data_dir_loaded_before_modes_existed_is_not_taken_for_live(data_dir, in_process):
    """Before the marker existed every run staged the sample's vehicle files: such a data dir holds them."""
    processed = data_dir / "processed" / "vehicles_events"
    processed.mkdir(parents=True)
    shutil.copy(next(SAMPLE_DIR.glob("vehicles_events_*.json")), processed)
    code, error = in_process("vehicles", "discover", ELT_MODE="live")
    assert code == 2 and error.startswith(f"error: data dir {data_dir} holds the bundled sample's files from before")
    assert not (data_dir / ".elt-mode").exists() and not (data_dir / "incoming").exists()
    (data_dir / ".elt-mode").write_text("live\n")  # what the message offers when it holds live data only
    assert in_process("vehicles", "discover", ELT_MODE="live")[0] == 0
