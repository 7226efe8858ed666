"""Schedules, served by this process (`prefect serve` style) against a Prefect API.

    python -m orchestration.serve                # needs PREFECT_API_URL
    python -m orchestration.serve --with-server  # starts a local Prefect server on 127.0.0.1 first (make serve)

The deployments, with their schedules, are defined once, in prefect.yaml, and read from there;
`make deploy` creates the same ones in a work pool (README: Orchestration lists them).
They run in live mode (never the bundled sample), so they need a data dir of their own or a
live one: a data dir filled by the sample refuses them.
Their warehouse-writing steps take turns through the global concurrency limit `elt-warehouse`
(orchestration/concurrency.py), created here before serving. The local server keeps its
concurrency leases on disk: restarted, it still knows the turns its runs hold.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import importlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import yaml
from prefect import Flow, serve
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron
from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

from core.cli import exit_promptly
from core.settings import PROJECT_ROOT, data_dir_or_exit
from orchestration.concurrency import ensure_warehouse_limit, local_server, try_lock, warehouse_limit

PREFECT_YAML = PROJECT_ROOT / "prefect.yaml"


def declared_deployments() -> list[dict]:
    """prefect.yaml's `deployments` entries: the one definition of the scheduled deployments."""
    return yaml.safe_load(PREFECT_YAML.read_text())["deployments"]


def flow_at(entrypoint: str) -> Flow:
    """The flow a prefect.yaml entrypoint (`orchestration/flows.py:elt`) names, imported as a module."""
    path, name = entrypoint.split(":")
    return getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), name)


def cron_schedule(entry: dict) -> Cron:
    if set(entry) - {"cron", "timezone"}:
        raise ValueError(f"prefect.yaml: only cron schedules with a timezone are served, not {entry}")
    return Cron(entry["cron"], timezone=entry.get("timezone"))


# What serving takes from a prefect.yaml deployment; the work pool is where `make deploy` puts it.
SERVED_KEYS = {"name", "entrypoint", "description", "parameters", "schedules"}
DEPLOYED_ONLY_KEYS = {"work_pool"}


def refuse_unserved_keys(entry: dict) -> dict:
    """A key serving would ignore (tags, concurrency_limit, paused…) would make the served
    deployment differ from the deployed one: refused until serving applies it too."""
    if unserved := set(entry) - SERVED_KEYS - DEPLOYED_ONLY_KEYS:
        raise ValueError(f"prefect.yaml deployment {entry.get('name')!r}: {sorted(unserved)} would not be served")
    return entry


def deployments() -> list[RunnerDeployment]:
    """prefect.yaml's deployments as this process serves them: same names, schedules, parameters."""
    return [
        flow_at(entry["entrypoint"]).to_deployment(
            name=entry["name"],
            schedules=[cron_schedule(schedule) for schedule in entry.get("schedules") or []],
            parameters=entry.get("parameters") or {},
            description=entry.get("description"),
        )
        for entry in map(refuse_unserved_keys, declared_deployments())
    ]


class ServerDidNotStart(RuntimeError):
    """The local Prefect server could not be started: one line, exit status 2."""


def start_local_server(port: int) -> subprocess.Popen:
    """A Prefect server bound to 127.0.0.1 only; returns once its API answers. It runs in its own
    session, so Ctrl-C or a SIGTERM to the serving process group stops the runner first (which
    pauses its deployments through the API) and the server after it, not both at once: Prefect's
    runner hangs when its server vanishes while it stops. It still dies with this process. Refused
    when something already listens on the port: its API would answer in this server's place."""
    refuse_a_port_in_use(port)
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        start_new_session=True,
        preexec_fn=_terminate_with_parent,
    )
    try:
        wait_for_api(server, local_api_url(port))
    except BaseException:
        stop_server(server)
        raise
    os.environ["PREFECT_API_URL"] = local_api_url(port)
    return server


def wait_for_api(server: subprocess.Popen, url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while server.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                if server.poll() is None:  # still up: not one that failed to bind while another answered
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise ServerDidNotStart(f"the Prefect server did not answer within {timeout:g}s") from None
            time.sleep(1)
    raise ServerDidNotStart(f"the Prefect server exited with {server.returncode}")


@contextlib.contextmanager
def the_only_serve_on_this_home() -> Iterator[None]:
    """One `make serve` per PREFECT_HOME (data dir): two would serve the same schedules twice, and
    their repossessors would release one expired lease twice."""
    home = PREFECT_HOME.value()
    home.mkdir(parents=True, exist_ok=True)
    with (home / "serve.lock").open("w") as lock:
        if not try_lock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB):
            raise ServerDidNotStart(f"another `make serve` is up on PREFECT_HOME={home}: one per data dir")
        yield


def refuse_a_port_in_use(port: int) -> None:
    if port_in_use(port):
        raise ServerDidNotStart(
            f"127.0.0.1:{port} is in use (another Prefect server?): stop it, or serve on another port"
            " (make serve PREFECT_PORT=...)"
        )


def port_in_use(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def local_api_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/api"


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _terminate_with_parent() -> None:
    """In the child: SIGTERM when the serving process dies, even by SIGKILL (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestration.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--with-server", action="store_true", help="start a local Prefect server on 127.0.0.1")
    parser.add_argument("--port", type=int, default=4200)
    args = parser.parse_args(argv)
    data_dir_or_exit()
    # SIGTERM ends the process through SystemExit, so the server below is stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with contextlib.ExitStack() as stack:
        if args.with_server:
            # Prefect read its settings at import: the server's URL is set through them.
            stack.enter_context(temporary_settings({PREFECT_API_URL: local_api_url(args.port)}))
            try:
                # Both before local_server gives back turns in the database.
                refuse_a_port_in_use(args.port)
                stack.enter_context(the_only_serve_on_this_home())
                stack.enter_context(
                    local_server(lambda: start_local_server(args.port), stop_server, runs_repossessor=True)
                )
            except ServerDidNotStart as error:
                print(f"error: {error}", file=sys.stderr)
                return 2
            print(f"Prefect UI: http://127.0.0.1:{args.port}")
        ensure_warehouse_limit()
        print(f"Warehouse writers take turns: global concurrency limit {warehouse_limit()!r} (1 slot)")
        serve(*deployments())
    return 0


def stop_server(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(timeout=30)


if __name__ == "__main__":
    exit_promptly(main())
