"""Prefect's temporary API (a run with no PREFECT_API_URL) logs to PREFECT_HOME/temporary-api.log,
not over the run's console; the run ends with one line naming what it logged. A run killed in its
warehouse turn does not keep the turn from the runs after it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from datetime import datetime
from pathlib import Path

import pytest

from core.settings import PROJECT_ROOT
from orchestration.concurrency import LEASE_STORAGE_VARIABLE, LEASE_VARIABLE, TURN_TAKEN, lease_seconds
from orchestration.temporary_api import LOG_FILE_NAME, NOTE, describe_problems, problems_logged

from .processes import MEMORY_LEASES, prefect_environment

pytestmark = pytest.mark.one_target

# A task run of a flow run that does not exist: the server's foreign key refuses it, and the server
# logs that error with its traceback (HTTP 409 to the client), as it logs a `database is locked`.
# A 503 is the server's "retry": SQLite was busy (a loaded CI machine saw one), and Prefect's own
# client retries it, so this request does too.
REFUSED_TASK_RUN = """
import time, uuid, httpx
from prefect.server.api.server import SubprocessASGIServer
for attempt in range(10):
    response = httpx.post(SubprocessASGIServer().api_url + "/task_runs/",
        json={"flow_run_id": str(uuid.uuid4()), "task_key": "k", "dynamic_key": "0", "name": "refused"})
    if response.status_code != 503:
        break
    time.sleep(1)
print("status", response.status_code)
"""
# The same request on the temporary API as Prefect starts it by itself (its first client does).
ON_PREFECTS_OWN = "from prefect.client.orchestration import get_client\nget_client(sync_client=True)\n"
ON_OURS = "from orchestration import temporary_api\nwith temporary_api.when_needed() as started:\n    assert started\n"


# A step in a warehouse turn, as the flows' steps take it, on our temporary API; it says when it
# holds the turn, then holds it for argv[1] seconds.
IN_A_TURN = ON_OURS + textwrap.indent(
    """
import sys, time
from orchestration.concurrency import writes_to_warehouse
writes_to_warehouse(lambda: print("holding the turn at", time.time(), flush=True) or time.sleep(float(sys.argv[1])))()
print("step done")
""",
    "    ",
)


# A step as the flows run it (a task in a flow, in its warehouse turn, on our temporary API) whose
# first grant's answer is, by argv[1]: `lost` (the server granted the turn, then the client reads a
# timeout, as when the answer takes longer than PREFECT_API_REQUEST_TIMEOUT, and Prefect's client
# sends the acquisition again); or `late` (it comes in only once that grant's lease is gone from disk:
# a step's process that stalled after the answer reached it). The step says which leases are on
# disk while it runs and whom they name; the process, how many grants it was answered with.
FIRST_GRANT_LOST_OR_LATE = ON_OURS + textwrap.indent(
    """
import asyncio, json, sys, time, httpx
from prefect import flow, task, runtime
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_HOME
from orchestration.concurrency import ensure_warehouse_limit, writes_to_warehouse

send, granted = httpx.AsyncClient.send, []
leases = PREFECT_HOME.value() / "concurrency_leases"

def named(holder):
    return f"{holder.get('type')} {holder.get('id')}" if holder else "nobody"

async def first_grant_lost_or_late(self, request, *args, **kwargs):
    response = await send(self, request, *args, **kwargs)
    acquiring = request.url.path.endswith("/increment-with-lease")
    if acquiring and json.loads(request.content)["names"] == ["elt-warehouse"] and response.status_code == 200:
        granted.append(response.json()["lease_id"])
        if len(granted) == 1:
            holder = named(json.loads(request.content).get("holder"))
            print(sys.argv[1], "the answer granting lease", granted[0], "to", holder, flush=True)
            if sys.argv[1] == "lost":
                raise httpx.ReadTimeout("the answer was lost", request=request)
            for _ in range(240):
                if not (leases / f"{granted[0]}.json").exists():
                    break
                await asyncio.sleep(0.5)
    return response

httpx.AsyncClient.send = first_grant_lost_or_late

# Prefect's tag concurrency leases name the task run too (a user's limit on the step's tag).
ensure_warehouse_limit()
TAG_LIMIT = "tag:warehouse-writer"
with get_client(sync_client=True) as client:
    client.upsert_global_concurrency_limit_by_name(TAG_LIMIT, 5)
    limits = {str(client.read_global_concurrency_limit_by_name(name).id): name for name in ("elt-warehouse", TAG_LIMIT)}

@task(tags=["warehouse-writer"])
@writes_to_warehouse
def step():
    on_disk = [json.loads(f.read_text()) for f in leases.glob("*-*.json")]
    print("holding the turn as task_run", runtime.task_run.id, flush=True)
    print("leases on disk:", "; ".join(
        f"{lease['id']} naming {named(lease['metadata']['holder'])} on {limits.get(lease['resource_ids'][0])}"
        for lease in on_disk
    ), flush=True)

@flow
def a_flow():
    step()

a_flow()
print("grants answered:", len(granted))
print("step done")
""",
    "    ",
)


# The lost-or-late grant tests' lease and Prefect request timeout (s), and what the step logs.
LEASE, REQUEST_TIMEOUT = 60, 10
RELEASED_AS_LOST = (
    r"released the warehouse turn granted (\d+) s ago whose answer never reached this step \(lease (\S+)\)"
)


def run_python(code: str, home: Path, *args: str, timeout: float = 300, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        env=prefect_environment(home, **extra),
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def killed_in_its_turn(prefect_home: Path, **extra: str) -> None:
    """A run SIGKILLed (its temporary API with it) while it holds the warehouse turn."""
    holder = subprocess.Popen(
        [sys.executable, "-c", IN_A_TURN, "600"],
        env=prefect_environment(prefect_home, **extra),
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        assert holder.stdout.readline().startswith("holding the turn at "), "the run ended before it took the turn"
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)


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


def test_a_run_killed_in_its_warehouse_turn_keeps_it_only_until_its_lease_expires(tmp_path):
    """The temporary API runs no repossessor; its leases are on disk and the next run releases the
    expired one (before: the turn stayed taken and every later run waited for it forever)."""
    home, lease = tmp_path / "prefect", 60
    data = {"ELT_DATA_DIR": str(tmp_path / "data"), LEASE_VARIABLE: str(lease)}
    killed_in_its_turn(home, **data)
    (killed_lease,) = (home / "concurrency_leases").glob("*-*.json")  # the killed run's lease, on disk
    expired_at = datetime.fromisoformat(json.loads(killed_lease.read_text())["expiration"]).timestamp()
    after = run_python(IN_A_TURN, home, "0", timeout=lease * 4, **data)  # before, it waited for good
    console = f"stdout:\n{after.stdout[-2000:]}\nstderr:\n{after.stderr[-3000:]}"
    assert after.returncode == 0 and after.stdout.splitlines()[-1] == "step done", console
    taken_at = float(after.stdout.splitlines()[-2].removeprefix("holding the turn at "))
    assert taken_at > expired_at, (taken_at, expired_at)  # not before the killed run's lease expired
    assert f"released the expired warehouse turn of a run that is gone (lease {killed_lease.stem})" in after.stderr
    assert "Traceback" not in after.stderr and "ERROR" not in after.stderr, console  # waiting is no error
    assert list((home / "concurrency_leases").glob("*-*.json")) == []


def test_a_grant_whose_answer_was_lost_is_given_back_by_the_step_still_waiting_for_it(tmp_path):
    """Before, the step's retried acquisition waited for the slot its own lost grant held, until that
    lease expired (seen in CI: 420.7 s with a 300 s lease). The lease names the step's task run; while
    it waits, the step gives back a lease naming it that is older than twice the request timeout."""
    run, console, lost_lease, _ = grant_lost_or_late("lost", tmp_path)
    released = re.findall(RELEASED_AS_LOST, run.stderr)
    assert [lease for _, lease in released] == [lost_lease], console
    (age,) = [int(seconds) for seconds, _ in released]
    assert 2 * REQUEST_TIMEOUT <= age < LEASE, console
    waited = float(one_line(rf"{TURN_TAKEN} after waiting ([\d.]+)s", run.stderr, console))
    assert waited < LEASE - 10, console  # its lost grant's lease would have kept the slot for LEASE seconds
    assert "given back as lost: asking again" not in run.stderr, console


def test_a_step_whose_grant_was_given_back_as_lost_as_its_answer_came_in_asks_again(tmp_path):
    """The one case where the step gives back a grant it was answered with: the answer came in, late,
    while the step's lock was not yet taken. The step then holds no turn, so it must not run on it."""
    run, console, late_lease, _ = grant_lost_or_late("late", tmp_path)
    assert [lease for _, lease in re.findall(RELEASED_AS_LOST, run.stderr)] == [late_lease], console
    assert "the warehouse turn answered late was given back as lost: asking again" in run.stderr, console


def grant_lost_or_late(fault: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess, str, str, str]:
    """FIRST_GRANT_LOST_OR_LATE run with `fault` to its end: (the run, its console, the lease of the
    grant it faulted, the holder that lease named: the step's task run). The step ran holding a
    lease of its own: the second grant's, one naming it."""
    home = tmp_path / "prefect"
    data = {"ELT_DATA_DIR": str(tmp_path / "data"), LEASE_VARIABLE: str(LEASE)}
    run = run_python(
        FIRST_GRANT_LOST_OR_LATE,
        home,
        fault,
        timeout=LEASE * 4,
        PREFECT_API_REQUEST_TIMEOUT=str(REQUEST_TIMEOUT),
        **data,
    )
    console = f"stdout:\n{run.stdout[-2000:]}\nstderr:\n{run.stderr[-5000:]}"
    assert run.returncode == 0 and run.stdout.splitlines()[-1] == "step done", console
    # The fault: the server granted a lease naming the step's task run, and the step did not take it.
    faulted = re.findall(rf"^{fault} the answer granting lease (\S+) to (task_run \S+)$", run.stdout, re.MULTILINE)
    assert len(faulted) == 1, console
    faulted_lease, holder = faulted[0]
    assert one_line(r"^holding the turn as (task_run \S+)$", run.stdout, console) == holder, console
    held = one_line(r"^leases on disk: (.*)$", run.stdout, console).split("; ")
    held_as = sorted(re.fullmatch(r"(\S+) naming (task_run \S+) on (\S+)", lease).groups()[1:] for lease in held)
    assert held_as == [(holder, "elt-warehouse"), (holder, "tag:warehouse-writer")], console
    assert faulted_lease not in str(held), console
    assert one_line(r"^grants answered: (\d+)$", run.stdout, console) == "2", console
    assert "released the expired warehouse turn" not in run.stderr, console
    assert "Traceback" not in run.stderr and "ERROR" not in run.stderr, console
    assert list((home / "concurrency_leases").glob("*-*.json")) == [], console
    return run, console, faulted_lease, holder


def one_line(pattern: str, text: str, console: str) -> str:
    found = re.findall(pattern, text, re.MULTILINE)
    assert len(found) == 1, console
    return found[0]


def test_a_turn_taken_before_leases_were_kept_on_disk_is_given_back_when_the_next_run_starts(tmp_path):
    """A data dir whose last run was killed in its turn while Prefect kept leases in memory: the
    slot stays taken with no lease left to expire; the next run's temporary API gives it back."""
    home = tmp_path / "prefect"
    data = {"ELT_DATA_DIR": str(tmp_path / "data")}
    killed_in_its_turn(home, **data, **{LEASE_STORAGE_VARIABLE: MEMORY_LEASES})
    assert not (home / "concurrency_leases").exists()
    after = run_python(IN_A_TURN, home, "0", timeout=120, **data)  # before, it waited for good
    console = f"stdout:\n{after.stdout[-2000:]}\nstderr:\n{after.stderr[-3000:]}"
    assert after.returncode == 0 and after.stdout.splitlines()[-1] == "step done", console
    assert "gave back elt-warehouse's turn that no lease holds" in after.stderr, console


@pytest.mark.parametrize("value", ["59", "86401", "nan", "inf", "five minutes"])
def test_a_turn_lease_prefect_would_refuse_is_refused_by_name(monkeypatch, value):
    monkeypatch.setenv(LEASE_VARIABLE, value)
    with pytest.raises(ValueError, match=f"^{LEASE_VARIABLE}='{value}' is not a number of seconds from 60 to 86400$"):
        lease_seconds()
