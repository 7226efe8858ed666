"""The vehicle lake job on a real Spark standalone cluster (a master and one worker on 127.0.0.1),
started from the installed pyspark and stopped by PID."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from lake.files import discover, state_dir
from loaders.vehicles.generate import generate
from spark_jobs.session import java_home

from .processes import free_port, stop_group
from .vehicles_helpers import count_files, lake_rows

pytestmark = [pytest.mark.integration, pytest.mark.one_target]


def spark_class_path() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent / "bin" / "spark-class"


def start_daemon(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "JAVA_HOME": java_home(), "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_NO_DAEMONIZE": "1"}
    return subprocess.Popen(
        [str(spark_class_path()), *args],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, so stopping it stops the JVM
    )


def alive_workers(ui_port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/json/", timeout=5) as response:
            return int(json.load(response).get("aliveworkers", 0))
    except OSError:
        return 0


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[str]:
    port, ui_port, worker_ui_port = free_port(), free_port(), free_port()
    master_url = f"spark://127.0.0.1:{port}"
    master = start_daemon(
        ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port)]
        + ["--webui-port", str(ui_port)],
        tmp_path / "master.log",
    )
    worker = start_daemon(
        ["org.apache.spark.deploy.worker.Worker", master_url, "--host", "127.0.0.1", "--cores", "2"]
        + ["--memory", "2g", "--webui-port", str(worker_ui_port), "--work-dir", str(tmp_path / "work")],
        tmp_path / "worker.log",
    )
    try:
        deadline = time.monotonic() + 120
        while alive_workers(ui_port) < 1:
            if master.poll() is not None or worker.poll() is not None or time.monotonic() > deadline:
                logs = "\n".join((tmp_path / name).read_text()[-3000:] for name in ("master.log", "worker.log"))
                raise AssertionError(f"the Spark cluster did not come up:\n{logs}")
            time.sleep(0.5)
        yield master_url
    finally:
        stop_group(worker)
        stop_group(master)
    assert master.poll() is not None and worker.poll() is not None


def test_the_lake_job_runs_on_a_standalone_cluster_with_exact_counts(data_dir: Path, cluster: str, tmp_path: Path):
    manifest = generate(state_dir("incoming"), files=6, events_per_file=400, seed=21, quirks=True)
    discover()
    job = subprocess.run(
        [sys.executable, "-m", "spark_jobs.vehicle_lake"],
        env={**os.environ, "SPARK_MASTER": cluster, "PYSPARK_PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert job.returncode == 0, job.stderr[-4000:]
    assert f"master {cluster}" in job.stderr  # it really ran on the cluster, not local[*]
    assert list((tmp_path / "work").glob("app-*/*/stderr")), "no executor ran on the worker"

    assert len(lake_rows("vehicle_events")) == manifest.good["vehicles_events"]
    assert len(lake_rows("vehicle_status")) == manifest.good["vehicles_status"]
    assert len(lake_rows("vehicle_events_rejected")) == len(manifest.rejected["vehicles_events"])
    accounted = sum(
        count_files(state_dir(s, t)) for s in ("processed", "failed") for t in ("vehicles_events", "vehicles_status")
    )
    assert accounted == len(set(manifest.files))
