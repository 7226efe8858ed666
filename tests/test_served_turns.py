"""`make serve`'s Prefect server keeps its concurrency leases on disk: stopped or killed while a run
holds the warehouse turn, then started again, it still knows that turn's lease, so the turn comes
back (before: Prefect kept the leases in the server's memory, and the slot stayed taken for good)."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import pytest

from core.settings import PROJECT_ROOT
from orchestration.concurrency import LEASE_STORAGE_VARIABLE, LEASE_VARIABLE
from orchestration.serve import local_api_url

from .processes import free_port, stop_group
from .test_temporary_api import MEMORY_LEASES, environment

pytestmark = pytest.mark.one_target

READY = "Warehouse writers take turns"
# A step in a warehouse turn, as the flows' steps take it, on the served server: it says when it
# holds the turn, then holds it until the file argv[1] exists.
IN_A_TURN = """
import sys, time
from pathlib import Path
from orchestration.concurrency import writes_to_warehouse

def step():
    print("holding the turn at", time.time(), flush=True)
    while not Path(sys.argv[1]).exists():
        time.sleep(0.2)

writes_to_warehouse(step)()
print("step done at", time.time(), flush=True)
"""


@contextmanager
def served(home: Path, port: int, log: Path, **extra: str) -> Iterator[subprocess.Popen]:
    """`python -m orchestration.serve --with-server` (as `make serve` runs it) on `port`, its output
    appended to `log`, once it serves; SIGKILLed with its process group after the block."""
    start = log.stat().st_size if log.exists() else 0
    with log.open("a") as output:
        serving = subprocess.Popen(
            [sys.executable, "-m", "orchestration.serve", "--with-server", "--port", str(port)],
            env=environment(home, **extra),
            cwd=PROJECT_ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 180
        while READY not in log.read_text()[start:]:
            assert serving.poll() is None, log.read_text()[start:][-3000:]
            assert time.monotonic() < deadline, log.read_text()[start:][-3000:]
            time.sleep(0.5)
        yield serving
    finally:
        killed(serving, port)


def killed(serving: subprocess.Popen, port: int) -> None:
    """SIGKILL to the serving process group; its server, in a session of its own, gets SIGTERM
    (it dies with the process that started it) and is waited for until its port is free."""
    if serving.poll() is None:
        os.killpg(serving.pid, signal.SIGKILL)
        serving.wait(timeout=30)
    deadline = time.monotonic() + 60
    while port_open(port):
        assert time.monotonic() < deadline, f"the Prefect server still listens on {port}"
        time.sleep(0.5)


def sigkill(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def port_open(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def step_in_a_turn(
    home: Path, port: int, release: Path, timeout: float = 60, **extra: str
) -> tuple[subprocess.Popen, float]:
    """A step on the served server, started; returns once it holds the warehouse turn, with when it
    took it (it fails the test if it does not take it within `timeout` seconds)."""
    step = subprocess.Popen(
        [sys.executable, "-c", IN_A_TURN, str(release)],
        env=environment(home, PREFECT_API_URL=local_api_url(port), **extra),
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    ready, _, _ = select.select([step.stdout], [], [], timeout)
    line = step.stdout.readline() if ready else ""
    if not line.startswith("holding the turn at "):
        stop_group(step)
        pytest.fail(f"the step did not take the turn within {timeout}s: {line}{step.stderr.read()[-3000:]}")
    return step, float(line.removeprefix("holding the turn at "))


def finished(step: subprocess.Popen, timeout: float = 60) -> str:
    """The step's stderr, once it is done."""
    try:
        out, err = step.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_group(step)
        raise
    assert step.returncode == 0 and out.splitlines()[-1].startswith("step done at "), err[-3000:]
    return err


def settings(tmp_path: Path, **extra: str) -> dict[str, str]:
    # No scheduled run may take the turn inside the test: the scheduler plans none.
    return {
        "ELT_DATA_DIR": str(tmp_path / "data"),
        "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
        **extra,
    }


def test_a_run_holding_the_turn_while_the_served_server_restarts_gives_it_back_when_done(tmp_path):
    """The server killed and started again under a running step: the step's release, after the
    restart, finds its lease, and the next step takes the turn at once."""
    home, port, log = tmp_path / "prefect", free_port(), tmp_path / "serve.log"
    env = settings(tmp_path)
    with served(home, port, log, **env) as serving:
        step, _ = step_in_a_turn(home, port, tmp_path / "release-1", **env)
        killed(serving, port)
    try:
        with served(home, port, log, **env):
            (tmp_path / "release-1").touch()
            finished(step)
            (tmp_path / "release-2").touch()
            next_step, _ = step_in_a_turn(home, port, tmp_path / "release-2", **env)  # before: waited for good
            finished(next_step)
    finally:
        stop_group(step)


def test_a_run_killed_with_the_served_server_keeps_the_turn_only_until_its_lease_expires(tmp_path):
    """The server's repossessor, started again, finds the killed run's lease on disk and releases
    the turn once that lease expires."""
    home, port, log, lease = tmp_path / "prefect", free_port(), tmp_path / "serve.log", 60
    env = settings(tmp_path, **{LEASE_VARIABLE: str(lease), "PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS": "2"})
    with served(home, port, log, **env) as serving:
        step, _ = step_in_a_turn(home, port, tmp_path / "never", **env)
        sigkill(step)  # in its turn
        killed(serving, port)
    (lease_file,) = (home / "concurrency_leases").glob("*-*.json")  # the killed run's lease, on disk
    expired_at = datetime.fromisoformat(json.loads(lease_file.read_text())["expiration"]).timestamp()
    with served(home, port, log, **env):
        (tmp_path / "release").touch()
        next_step, taken_at = step_in_a_turn(home, port, tmp_path / "release", timeout=lease * 3, **env)
        finished(next_step)
    assert taken_at > expired_at, (taken_at, expired_at)  # not before the killed run's lease expired
    # Revoked by the served server's repossessor: no process of the killed run was left to do it.
    assert list((home / "concurrency_leases").glob("*-*.json")) == []


def test_a_turn_taken_while_the_served_server_kept_leases_in_memory_is_given_back_when_it_starts(tmp_path):
    home, port, log = tmp_path / "prefect", free_port(), tmp_path / "serve.log"
    env = settings(tmp_path)
    with served(home, port, log, **env, **{LEASE_STORAGE_VARIABLE: MEMORY_LEASES}) as serving:
        step, _ = step_in_a_turn(home, port, tmp_path / "never", **env)
        sigkill(step)
        killed(serving, port)
    assert not (home / "concurrency_leases").exists()
    start = log.stat().st_size
    with served(home, port, log, **env):
        (tmp_path / "release").touch()
        next_step, _ = step_in_a_turn(home, port, tmp_path / "release", **env)  # before: waited for good
        finished(next_step)
    assert "gave back elt-warehouse's turn that no lease holds" in log.read_text()[start:]
