"""Schedules, served by this process (`prefect serve` style) against a Prefect API.

    python -m orchestration.serve                # needs PREFECT_API_URL
    python -m orchestration.serve --with-server  # starts a local Prefect server on 127.0.0.1 first (make serve)

| deployment        | schedule (UTC)                       | what                                     |
| vehicles-hourly   | every hour at :00                     | discover → Spark lake job → warehouse    |
| daily-summary     | 01:00 every day                       | dbt gate + publish for the vehicle marts |
| football-weekly   | Saturdays 00:00, August to May        | both football sources, gate + publish    |
| maintenance-daily | 02:30 every day                       | snapshots, orphan files, landing retention |

prefect.yaml declares the same deployments for a process work pool (`prefect deploy --all`).
They run in live mode (never the bundled sample), so they need a data dir of their own or a
live one: a data dir filled by the sample refuses them.
Their warehouse-writing steps take turns through the global concurrency limit `elt-warehouse`
(orchestration/concurrency.py), created here before serving.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
import urllib.request

from prefect import serve
from prefect.schedules import Cron
from prefect.settings import PREFECT_API_URL, temporary_settings

from core.settings import data_dir_or_exit
from orchestration.concurrency import WAREHOUSE_LIMIT, ensure_warehouse_limit
from orchestration.flows import elt, maintenance


def deployments() -> list:
    return [
        elt.to_deployment(
            name="vehicles-hourly",
            schedules=[Cron("0 * * * *", timezone="UTC")],
            parameters={"sources": ["vehicles"], "build": False, "mode": "live"},
            description="Hourly vehicle ingestion: discover, Spark lake job, lake → warehouse.",
        ),
        elt.to_deployment(
            name="daily-summary",
            schedules=[Cron("0 1 * * *", timezone="UTC")],
            parameters={"sources": [], "selector": "vehicles", "mode": "live"},
            description="Builds, tests and publishes daily_summary and the other vehicle marts.",
        ),
        elt.to_deployment(
            name="football-weekly",
            schedules=[Cron("0 0 * 1-5,8-12 6", timezone="UTC")],
            parameters={"sources": ["football_csv", "football_api"], "selector": "football", "mode": "live"},
            description="Weekly football load during the season (August to May), gate and publish.",
        ),
        maintenance.to_deployment(
            name="maintenance-daily",
            schedules=[Cron("30 2 * * *", timezone="UTC")],
            description="Expire Iceberg snapshots, remove orphan files, prune landing.",
        ),
    ]


def start_local_server(port: int) -> subprocess.Popen:
    """A Prefect server bound to 127.0.0.1 only; returns once its API answers. It runs in its own
    session, so Ctrl-C or a SIGTERM to the serving process group stops the runner first (which
    pauses its deployments through the API) and the server after it, not both at once: Prefect's
    runner hangs when its server vanishes while it stops. It still dies with this process."""
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        start_new_session=True,
        preexec_fn=_terminate_with_parent,
    )
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the Prefect server exited with {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                os.environ["PREFECT_API_URL"] = url
                return server
        except OSError:
            time.sleep(1)
    server.terminate()
    raise RuntimeError("the Prefect server did not answer within 120s")


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
    server = start_local_server(args.port) if args.with_server else None
    if server:
        print(f"Prefect UI: http://127.0.0.1:{args.port}")
    # Prefect read its settings at import: the started server's URL must be set through them too.
    api = temporary_settings({PREFECT_API_URL: os.environ["PREFECT_API_URL"]}) if server else contextlib.nullcontext()
    try:
        with api:
            ensure_warehouse_limit()
            print(f"Warehouse writers take turns: global concurrency limit {WAREHOUSE_LIMIT!r} (1 slot)")
            serve(*deployments())
    finally:
        if server:
            server.terminate()
            server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
