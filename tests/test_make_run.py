"""`make run` as a user runs it: consecutive runs on a data dir that does not exist yet, output
made for a person (no traceback, no line per dbt node), each run's summary at the end."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from core.settings import PROJECT_ROOT
from loaders.exactly_once import LEDGER
from orchestration.temporary_api import LOG_FILE_NAME, NOTE, log_end, logged_since

from .processes import run_loaders

# What it tests (Prefect's temporary API, the console, the data dir) does not depend on the
# warehouse; a Postgres data dir's creation is in test_entry_points.py.
pytestmark = [pytest.mark.integration, pytest.mark.one_target]
RUNS = 2


def make_run(data_dir) -> subprocess.CompletedProcess:
    # As on a user's machine: make derives PREFECT_HOME from the data dir, and the run starts
    # its own temporary Prefect API.
    env = {name: value for name, value in os.environ.items() if name not in ("PREFECT_HOME", "PREFECT_API_URL")}
    return subprocess.run(
        ["make", "--no-print-directory", "run"],
        env={**env, "ELT_DATA_DIR": str(data_dir)},
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )


def assert_no_event_lost(api_log: str) -> None:
    """A busy machine may make the temporary API's recorder retry a write (`database is locked`:
    `Error flushing 1 events (1 to retry, 0 dropped)`); none may be dropped, nor cancelled by the
    server stopping before the run's events were recorded."""
    assert "Dropping event" not in api_log and "CancelledError" not in api_log, api_log[-8000:]
    dropped = re.findall(r"Error flushing \d+ events \(\d+ to retry, (\d+) dropped\)", api_log)
    assert set(dropped) <= {"0"}, api_log[-8000:]


def test_consecutive_make_runs_on_a_new_data_dir_print_no_traceback(tmp_path, target):
    data_dir = tmp_path / "srv" / "elt"
    api_log = data_dir / ".prefect" / LOG_FILE_NAME
    outputs = []
    for run in range(1, RUNS + 1):
        log_start = log_end(api_log)
        result = make_run(data_dir)
        output = result.stdout + result.stderr
        outputs.append(output)
        assert result.returncode == 0, f"run {run} exited {result.returncode}:\n{output[-5000:]}"
        # The temporary API's own records are in its log, named by one note line (orchestration/temporary_api.py).
        console = "\n".join(line for line in output.splitlines() if not line.startswith(NOTE))
        assert "Traceback" not in console and "Error flushing" not in console, f"run {run}:\n{output[-8000:]}"
        assert console.count("Starting temporary server") == 1, f"run {run}:\n{output[-8000:]}"
        assert_no_event_lost(logged_since(api_log, log_start))
        # One finished line for the flow run; the task runs' own lines stay in Prefect's logs.
        assert output.count("Finished in state") == 1, f"run {run}:\n{output[-8000:]}"
        assert "Rows per table" in result.stdout and "Pipeline time:" in result.stdout
        assert "raw_vehicles.vehicle_events " in result.stdout and LEDGER not in result.stdout  # data only
        # One line per step as it starts and ends; no progress bars when output is not a terminal.
        assert "lake job: done in" in output or run > 1
        assert "[Stage " not in output and "Rate:" not in output, f"run {run}:\n{output[-8000:]}"
        assert len(output.splitlines()) < 150, f"run {run} printed {len(output.splitlines())} lines:\n{output}"
    assert data_dir.is_dir() and (data_dir / ".prefect" / "prefect.db").is_file()
    # The temporary API logged to its own file (created by its logging configuration).
    assert api_log.is_file()
    assert "nothing new since the last published build" in outputs[-1]
    status = run_loaders("status", timeout=120, ELT_DATA_DIR=str(data_dir))
    assert "raw_vehicles.vehicle_events " in status.stdout and LEDGER not in status.stdout, status.stdout
