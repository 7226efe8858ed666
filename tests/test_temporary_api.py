"""Prefect's temporary API (a run with no PREFECT_API_URL) logs to PREFECT_HOME/temporary-api.log,
not over the run's console; the run ends with one line naming what it logged."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from core.settings import PROJECT_ROOT
from orchestration.temporary_api import LOG_FILE_NAME, NOTE, describe_problems, problems_logged

pytestmark = pytest.mark.one_target

# A task run of a flow run that does not exist: the server's foreign key refuses it, and the server
# logs that error with its traceback (HTTP 409 to the client), as it logs a `database is locked`.
REFUSED_TASK_RUN = """
import uuid, httpx
from prefect.server.api.server import SubprocessASGIServer
response = httpx.post(SubprocessASGIServer().api_url + "/task_runs/",
    json={"flow_run_id": str(uuid.uuid4()), "task_key": "k", "dynamic_key": "0", "name": "refused"})
print("status", response.status_code)
"""
# The same request on the temporary API as Prefect starts it by itself (its first client does).
ON_PREFECTS_OWN = "from prefect.client.orchestration import get_client\nget_client(sync_client=True)\n"
ON_OURS = "from orchestration import temporary_api\nwith temporary_api.when_needed() as started:\n    assert started\n"


def run_python(code: str, prefect_home: Path) -> subprocess.CompletedProcess:
    env = {name: value for name, value in os.environ.items() if name != "PREFECT_API_URL"}
    env.update(
        PREFECT_HOME=str(prefect_home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="90",
    )
    return subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300
    )


def test_an_error_on_the_temporary_api_goes_to_its_log_and_one_line_names_it(tmp_path):
    home = tmp_path / "prefect"
    ours = run_python(ON_OURS + textwrap.indent(REFUSED_TASK_RUN, "    "), home)
    console = f"stdout:\n{ours.stdout[-2000:]}\nstderr:\n{ours.stderr[-5000:]}"
    assert ours.returncode == 0, console
    assert "status 409" in ours.stdout, console  # the server refused the task run: the fault happened there
    log = (home / LOG_FILE_NAME).read_text()
    assert "Encountered exception in request" in log and "FOREIGN KEY constraint failed" in log, log[-5000:]
    assert "Traceback" in log
    # Off the console: one line names it and where the rest is.
    assert "Traceback" not in ours.stderr and "FOREIGN KEY" not in ours.stderr, console
    # (a busy machine may add a retried `database is locked` of the server's own)
    assert "ERROR: Encountered exception in request:" in problems_logged(home / LOG_FILE_NAME)
    note = ours.stderr.strip().splitlines()[-1]
    assert note.startswith(f"{NOTE} ") and note.endswith(f"; all in {home / LOG_FILE_NAME}"), console

    # As Prefect starts it by itself (on the same, already migrated, database), the same error's
    # traceback lands on the run's console.
    prefects = run_python(ON_PREFECTS_OWN + REFUSED_TASK_RUN, home)
    theirs = prefects.stderr[-5000:]
    assert prefects.returncode == 0 and "status 409" in prefects.stdout, theirs
    assert "Traceback" in prefects.stderr and "FOREIGN KEY constraint failed" in prefects.stderr, theirs


def test_the_note_names_only_what_was_logged_after_the_run_started(tmp_path):
    log = tmp_path / LOG_FILE_NAME
    earlier = "2026-12-01 13:59:33,310 | ERROR   | docket.dependencies - send_telemetry_heartbeat()\nTraceback:\n"
    log.write_text(earlier)
    start = log.stat().st_size
    with log.open("a") as file:
        file.write("2026-12-01 14:10:02,001 | INFO    | prefect.server - started\n")
        file.write("2026-12-01 14:10:05,146 | ERROR   | prefect.server.services.x - Error flushing 1 events\n")
        file.write("Traceback (most recent call last):\nsqlite3.OperationalError: database is locked\n")
        file.write("2026-12-01 14:10:06,002 | WARNING | prefect.server - Lease 1 not found during decrement\n")
    assert problems_logged(log) == [
        "ERROR: send_telemetry_heartbeat()",
        "ERROR: Error flushing 1 events",
        "WARNING: Lease 1 not found during decrement",
    ]
    during_this_run = problems_logged(log, start)
    assert during_this_run == ["ERROR: Error flushing 1 events", "WARNING: Lease 1 not found during decrement"]
    assert "logged 2 warning or error records (the first: ERROR: Error flushing 1 events)" in describe_problems(
        during_this_run
    )
