"""Process helpers shared by the tests: a job in its own process group and SIGKILLing the whole
group (JVM included) at a point, stopping a group, a free loopback port, the loader CLI, the
environment of a process with a Prefect home of its own."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """moto's AWS server on a free loopback port, reset (moto keeps its state per process);
    yields its endpoint URL and stops it afterwards."""
    import requests
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        requests.post(f"{endpoint}/moto-api/reset", timeout=10)
        yield endpoint
    finally:
        server.stop()


def start(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        command, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )


def free_port() -> int:
    """A TCP port nothing listens on at 127.0.0.1 right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stop_group(process: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM the process's group (started with start_new_session), SIGKILL it if it lingers."""
    if process.poll() is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # the leader is gone; its children must not outlive it
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout)


def run_loaders(*args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """`python -m loaders <args>` as a user runs it, in this environment plus `env`; output captured."""
    return subprocess.run(
        [sys.executable, "-m", "loaders", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def kill_when(job: subprocess.Popen, condition: Callable[[], bool], timeout: float = 240) -> bool:
    """SIGKILL the job's process group as soon as `condition()` holds; False if it ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if job.poll() is not None:
            return False
        if condition():
            os.killpg(job.pid, signal.SIGKILL)
            job.wait(timeout=30)
            return True
        time.sleep(0.005)
    os.killpg(job.pid, signal.SIGKILL)
    raise AssertionError("the job neither reached the kill point nor ended")


def any_file(folder: Path, pattern: str = "*") -> Callable[[], bool]:
    """A kill condition: some file under `folder` matches `pattern`. The job renames the folders
    being walked (dlt moves a package from stage to stage), so one that vanishes mid-walk means
    "not there" for this poll rather than an error."""

    def found() -> bool:
        try:
            return next(folder.rglob(pattern), None) is not None
        except FileNotFoundError:
            return False

    return found


MEMORY_LEASES = "prefect.server.concurrency.lease_storage.memory"  # Prefect's default


def prefect_environment(prefect_home: Path, **extra: str) -> dict[str, str]:
    """This environment for a process with PREFECT_HOME of its own and no Prefect API or lease
    storage chosen (so it starts a temporary API, or serves), plus `extra`."""
    from orchestration.concurrency import LEASE_STORAGE_VARIABLE

    env = {name: value for name, value in os.environ.items() if name not in ("PREFECT_API_URL", LEASE_STORAGE_VARIABLE)}
    env.update(
        PREFECT_HOME=str(prefect_home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="90",
        **extra,
    )
    return env
