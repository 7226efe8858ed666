"""`make serve`'s Prefect server keeps its concurrency leases on disk: stopped or killed while a run
holds the warehouse turn, then started again, it still knows that turn's lease, so the turn comes
back (before: Prefect kept the leases in the server's memory, and the slot stayed taken for good)."""

from __future__ import annotations

import contextvars
import fcntl
import json
import os
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import psutil
import pytest
from prefect.server.concurrency.lease_storage import ConcurrencyLimitLeaseMetadata
from prefect.settings import (
    PREFECT_API_DATABASE_CONNECTION_URL,
    PREFECT_API_DATABASE_DRIVER,
    PREFECT_API_DATABASE_NAME,
    PREFECT_API_URL,
    PREFECT_HOME,
    get_current_settings,
    temporary_settings,
)
from prefect.utilities.asyncutils import run_coro_as_sync

from core.settings import PROJECT_ROOT
from orchestration.concurrency import (
    LEASE_STORAGE_VARIABLE,
    LEASE_VARIABLE,
    LOCAL_SERVERS_LOCK,
    RELEASES_EXPIRED_LEASES,
    REPOSSESSOR_LOCK,
    a_repossessor_is_up,
    give_back_turns_without_a_lease,
    lease_storage,
    local_server,
    reclaim_expired_turns,
)
from orchestration.serve import local_api_url, port_in_use

from .conftest import environment_restored
from .processes import MEMORY_LEASES, free_port, prefect_environment, stop_group

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
            env=prefect_environment(home, **extra),
            cwd=PROJECT_ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 180
        while READY not in logged_after(log, start):
            assert serving.poll() is None, logged_after(log, start)[-3000:]
            assert time.monotonic() < deadline, logged_after(log, start)[-3000:]
            time.sleep(0.5)
        yield serving
    finally:
        killed(serving, port)


def logged_after(log: Path, offset: int) -> str:
    """The log's text after byte `offset` (Prefect's banner holds multi-byte characters: a text
    offset would land past it)."""
    return log.read_bytes()[offset:].decode("utf-8", errors="replace")


def killed(serving: subprocess.Popen, port: int) -> None:
    """SIGKILL to the serving process group; its server, in a session of its own, gets SIGTERM
    (it dies with the process that started it) and is waited for until its port is free (SIGKILLed
    if it lingers)."""
    if serving.poll() is None:
        os.killpg(serving.pid, signal.SIGKILL)
        serving.wait(timeout=30)
    deadline = time.monotonic() + 60
    while port_in_use(port) and time.monotonic() < deadline:
        time.sleep(0.5)
    lingering = [c.pid for c in psutil.net_connections("tcp") if c.laddr.port == port and c.status == "LISTEN"]
    for pid in lingering:
        os.kill(pid, signal.SIGKILL)
    assert not lingering, f"the Prefect server still listened on {port} after 60 s"


def sigkill(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def step_in_a_turn(
    home: Path, port: int, release: Path, timeout: float = 60, **extra: str
) -> tuple[subprocess.Popen, float]:
    """A step on the served server, started; returns once it holds the warehouse turn, with when it
    took it (it fails the test if it does not take it within `timeout` seconds)."""
    step = subprocess.Popen(
        [sys.executable, "-c", IN_A_TURN, str(release)],
        env=prefect_environment(home, PREFECT_API_URL=local_api_url(port), **extra),
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
        with temporary_settings({PREFECT_HOME: home}):
            assert a_repossessor_is_up()  # runs on this PREFECT_HOME leave expired leases to it
        # A second serve on the same PREFECT_HOME (its own port) is refused.
        second = subprocess.run(
            [sys.executable, "-m", "orchestration.serve", "--with-server", "--port", str(free_port())],
            env=prefect_environment(home, **env),
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == 2, second.stderr[-3000:]
        assert second.stderr.strip().splitlines() == [
            f"error: another `make serve` is up on PREFECT_HOME={home}: one per data dir"
        ]
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
    restarted = log.stat().st_size
    with served(home, port, log, **env):
        (tmp_path / "release").touch()
        next_step, taken_at = step_in_a_turn(home, port, tmp_path / "release", timeout=lease * 3, **env)
        finished(next_step)
    assert taken_at > expired_at, (taken_at, expired_at)  # not before the killed run's lease expired
    # Revoked by the served server's repossessor: no process of the killed run was left to do it,
    # and the start gave back nothing (an expired lease still holds its slot until it is revoked).
    assert list((home / "concurrency_leases").glob("*-*.json")) == []
    assert "gave back" not in logged_after(log, restarted)


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
    assert "gave back elt-warehouse's turn that no lease holds" in logged_after(log, start)


def test_serving_refuses_a_port_another_server_answers_on(tmp_path):
    """Its API would answer in the new server's place, and the turns given back at start would be
    that server's."""
    home = tmp_path / "prefect"
    database = prefect_database(home, [("a1f0c3e2-0000-4000-8000-000000000001", "elt-warehouse", 1)])
    with ThreadingHTTPServer(("127.0.0.1", 0), AnswersEverything) as other:
        other.requests = []
        threading.Thread(target=other.serve_forever, daemon=True).start()
        port = other.server_address[1]
        serving = subprocess.run(
            [sys.executable, "-m", "orchestration.serve", "--with-server", "--port", str(port)],
            env=prefect_environment(home, **settings(tmp_path)),
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        other.shutdown()
    assert serving.returncode == 2, serving.stderr[-3000:]
    assert serving.stderr.strip().splitlines() == [
        f"error: 127.0.0.1:{port} is in use (another Prefect server?): stop it,"
        " or serve on another port (make serve PREFECT_PORT=...)"
    ]
    assert other.requests == []  # nothing was asked of it
    assert active_slots(database) == {"elt-warehouse": 1}  # nor of the database it may share


class AnswersEverything(BaseHTTPRequestHandler):
    """Any GET answered 200 with `{}`, as a Prefect server's /health answers; each path is recorded."""

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args) -> None:
        pass


def test_runs_leave_expired_leases_to_the_repossessor_of_a_served_server_up_beside_them(tmp_path):
    """A temporary API's run and `make serve`'s repossessor on one PREFECT_HOME would both release
    an expired lease: its slot would be given back twice. The API here answers nothing, so a
    release that is tried fails."""
    with socket.socket() as reserved:  # bound, never listening: nothing answers on its port
        reserved.bind(("127.0.0.1", 0))
        nobody = local_api_url(reserved.getsockname()[1])
        reclaimed_only_when_alone(tmp_path, nobody)


def reclaimed_only_when_alone(tmp_path: Path, nobody: str) -> None:
    with temporary_settings({PREFECT_HOME: tmp_path, PREFECT_API_URL: nobody}):
        storage = lease_storage()
        lease = run_coro_as_sync(
            storage.create_lease([uuid.uuid4()], timedelta(seconds=-1), ConcurrencyLimitLeaseMetadata(slots=1))
        )
        was_set = RELEASES_EXPIRED_LEASES.is_set()
        RELEASES_EXPIRED_LEASES.set()
        try:
            with (tmp_path / REPOSSESSOR_LOCK).open("w") as served_server:
                fcntl.flock(served_server, fcntl.LOCK_EX)  # as serve holds it while its server is up
                assert a_repossessor_is_up()
                reclaim_expired_turns()  # asks nothing of the API
            assert not a_repossessor_is_up()
            with pytest.raises(httpx.ConnectError):
                reclaim_expired_turns()  # with no served server up, the run releases it
        finally:
            if not was_set:
                RELEASES_EXPIRED_LEASES.clear()
    assert run_coro_as_sync(storage.read_lease(lease.id)) is not None


def prefect_database(home: Path, limits: list[tuple[str, str, int]]) -> Path:
    """A Prefect database in `home` holding only the global concurrency limits' table (the columns
    read here) with these (id, name, active slots)."""
    home.mkdir(parents=True, exist_ok=True)
    database = home / "prefect.db"
    with closing(sqlite3.connect(database)) as connection, connection:
        connection.execute("create table concurrency_limit_v2 (id char(36), name varchar, active_slots integer)")
        connection.executemany("insert into concurrency_limit_v2 values (?, ?, ?)", limits)
    return database


def active_slots(database: Path) -> dict[str, int]:
    with closing(sqlite3.connect(database)) as connection:
        return dict(connection.execute("select name, active_slots from concurrency_limit_v2"))


def test_a_turn_no_lease_holds_is_given_back_and_one_an_expired_lease_holds_is_kept(tmp_path):
    """Before a server starts: a slot with no lease on disk is given back; one an expired lease
    holds stays taken (whoever releases that lease gives its slot back: twice would be one too
    many); another limit than the warehouse's is not touched."""
    killed_run, expired_holder, other = (str(uuid.uuid4()) for _ in range(3))
    database = prefect_database(
        tmp_path,
        [(killed_run, "elt-warehouse", 1), (expired_holder, "elt-warehouse-prod", 1), (other, "some-other-limit", 1)],
    )
    # Prefect's default database in this PREFECT_HOME (the tests' Prefect harness chose its own).
    with temporary_settings({PREFECT_HOME: tmp_path}, restore_defaults={PREFECT_API_DATABASE_CONNECTION_URL}):
        run_coro_as_sync(
            lease_storage().create_lease(
                [uuid.UUID(expired_holder)], timedelta(seconds=-1), ConcurrencyLimitLeaseMetadata(slots=1)
            )
        )
        give_back_turns_without_a_lease()
    assert active_slots(database) == {"elt-warehouse": 0, "elt-warehouse-prod": 1, "some-other-limit": 1}


@pytest.mark.parametrize("chosen_by", ["its URL", "its driver and name"])
def test_a_database_of_your_choosing_is_left_alone(tmp_path, chosen_by):
    """Also when Prefect computes its URL from parts (it then counts it as a default)."""
    database = prefect_database(tmp_path, [(str(uuid.uuid4()), "elt-warehouse", 1)])
    elsewhere = tmp_path / "elsewhere.db"
    chosen = (
        {PREFECT_API_DATABASE_CONNECTION_URL: f"sqlite+aiosqlite:///{elsewhere}"}
        if chosen_by == "its URL"
        else {PREFECT_API_DATABASE_DRIVER: "sqlite+aiosqlite", PREFECT_API_DATABASE_NAME: str(elsewhere)}
    )
    restored = set() if chosen_by == "its URL" else {PREFECT_API_DATABASE_CONNECTION_URL}
    with temporary_settings({PREFECT_HOME: tmp_path, **chosen}, restore_defaults=restored):
        assert get_current_settings().server.database.connection_url.get_secret_value().endswith("elsewhere.db")
        give_back_turns_without_a_lease()
    assert active_slots(database) == {"elt-warehouse": 1}


def test_a_server_starts_only_after_another_one_alone_has_given_back_the_turns(tmp_path):
    """A server of this project starting while another, alone on PREFECT_HOME, gives back turns in
    the database waits for it: it could otherwise grant a turn the other then overwrites."""
    started = threading.Event()
    with (
        temporary_settings({PREFECT_HOME: tmp_path}),
        environment_restored(LEASE_STORAGE_VARIABLE),
        (tmp_path / LOCAL_SERVERS_LOCK).open("w") as giving_back,
    ):
        fcntl.flock(giving_back, fcntl.LOCK_EX)  # as the alone server holds it while it gives back

        def start_a_server() -> None:
            with local_server(started.set, lambda _: None, runs_repossessor=True):
                pass

        starting = threading.Thread(target=contextvars.copy_context().run, args=(start_a_server,), daemon=True)
        starting.start()
        assert not started.wait(2)
        fcntl.flock(giving_back, fcntl.LOCK_UN)
        assert started.wait(10)
        starting.join(10)
