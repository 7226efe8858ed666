"""Faults: a step SIGKILLed half-way then re-run ends with exact counts; a full disk is a clear
error that commits nothing. (The lake job's own kill test, per engine, is in test_vehicle_lake.py;
the kills inside its pyiceberg commits, behind each engine, are here.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.settings import DBT_PROFILES_DIR, DBT_PROJECT_DIR
from lake.catalog import NAMESPACE, catalog
from lake.files import discover, state_dir
from loaders.vehicles.generate import generate
from spark_jobs.lake_commit import committed_files
from spark_jobs.vehicle_lake import run as run_lake_job

from .conftest import QUIET_TOOLS, lay_out_as_site, real_csv_files, rows, run_dbt, tables_in
from .iceberg_commit_faults import KILL_POINTS, REJECTED_TABLE, TABLE
from .processes import any_file, free_port, kill_when, start, stop_group
from .test_vehicle_lake import event_identity, summary
from .vehicles_helpers import count_files, expected_daily_summary, good_events, lake_rows

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def lake_batch(module_data_dir: Path) -> dict:
    """A committed lake batch, not yet loaded into the warehouse."""
    manifest = generate(state_dir("incoming"), files=8, events_per_file=1500, seed=41, quirks=True)
    discover()
    run_lake_job()
    return {"manifest": manifest, "data_dir": module_data_dir}


def test_sigkill_during_the_lake_to_warehouse_load_then_rerun_loads_each_row_once(lake_batch):
    """Three loads, each killed at the next stage of dlt's package lifecycle: each resumes the
    package the previous one left, so every kill point is reached in turn."""
    packages = lake_batch["data_dir"] / ".dlt_pipelines" / "vehicles_lake"
    extracted, normalized = packages / "normalize" / "extracted", packages / "load" / "normalized"
    kill_points = {
        "extracting": (any_file(extracted), any_file(extracted)),
        "normalized, not loaded": (any_file(normalized), any_file(normalized)),
        "loading jobs": (any_file(normalized, "started_jobs/*"), any_file(normalized)),
    }
    for name, (reached, left_behind) in kill_points.items():
        assert kill_when(start([sys.executable, "-m", "loaders", "vehicles", "load"]), reached), (
            f"the load ended before the kill point '{name}'"
        )
        assert left_behind(), f"a kill at '{name}' left no unfinished package"
    subprocess.run([sys.executable, "-m", "loaders", "vehicles", "load"], check=True, timeout=300)

    for table in ("vehicle_events", "vehicle_status", "vehicle_events_rejected"):
        expected = len(lake_rows(table))
        assert rows(f"select count(*) from raw_vehicles.{table}") == [(expected,)], table
        distinct = rows(f"select count(distinct source_file || ':' || source_position) from raw_vehicles.{table}")
        assert distinct == [(expected,)], f"{table}: a row loaded twice"


def test_sigkill_during_dbt_build_then_rerun_ends_with_the_right_marts(lake_batch, monkeypatch):
    data_dir = lake_batch["data_dir"]
    # The environment run_dbt gives dbt (without it dbt exits 2 at once and nothing is killed).
    dbt_dirs = {"DBT_PROJECT_DIR": DBT_PROJECT_DIR, "DBT_PROFILES_DIR": DBT_PROFILES_DIR, "ELT_DATA_DIR": data_dir}
    for name, value in {**QUIET_TOOLS, **dbt_dirs}.items():
        monkeypatch.setenv(name, str(value))
    log = data_dir / "dbt_logs" / "dbt.log"
    log.parent.mkdir(exist_ok=True)
    log.write_text("")
    dbt = [str(Path(sys.executable).parent / "dbt"), "build", "--selector", "vehicles"]
    dbt += ["--target-path", str(data_dir / "dbt_target"), "--log-path", str(data_dir / "dbt_logs")]
    run_results = data_dir / "dbt_target" / "run_results.json"
    run_results.unlink(missing_ok=True)
    mid_build = lambda: "model marts.fct_vehicle_events" in log.read_text(errors="replace")  # noqa: E731
    subprocess.run([sys.executable, "-m", "loaders", "vehicles", "load"], check=True, timeout=300)  # the sources
    build = start(dbt)
    assert kill_when(build, mid_build), (
        f"dbt ended (exit {build.returncode}) before fct_vehicle_events started:\n"
        + (log.read_text(errors="replace")[-3000:])
    )
    assert build.returncode == -signal.SIGKILL
    # Killed mid-build: the fact model had started, its downstream mart was never built and dbt
    # never got to write its results.
    assert "Done. PASS=" not in log.read_text(errors="replace") and not run_results.exists()
    assert "daily_summary" not in tables_in("marts")
    run_dbt("build", "--selector", "vehicles", data_dir=data_dir)

    processed = state_dir("processed", "vehicles_events")
    expected = {event_identity(event) for event in good_events(processed)}
    ((count, distinct),) = rows("select count(*), count(distinct event_id) from marts.fct_vehicle_events")
    assert count == distinct == len(expected)
    assert summary() == expected_daily_summary(good_events(processed))


def unreferenced_metadata_files(table_name: str) -> set[str]:
    """metadata.json files in the table's folder that the catalog's pointer (and its log) never took."""
    table = catalog().load_table(f"{NAMESPACE}.{table_name}")
    referenced = {table.metadata_location} | {entry.metadata_file for entry in table.metadata.metadata_log}
    folder = Path(table.location().removeprefix("file://")) / "metadata"
    return {path.name for path in folder.glob("*.metadata.json")} - {Path(uri).name for uri in referenced}


def waiting_events_files() -> set[str]:
    return {path.name for path in state_dir("processing", "vehicles_events").glob("*.json")}


def ledger(table_name: str) -> set[str]:
    return committed_files(catalog().load_table(f"{NAMESPACE}.{table_name}"))


# One target keeps the suite's budget: the kills fall before the catalog's UPDATE or after its
# COMMIT, so the state they leave is the same on SQLite and Postgres catalogs; the Spark kill test
# in test_vehicle_lake.py runs on both.
@pytest.mark.one_target
@pytest.mark.parametrize("engine", ["spark", "duckdb"])
def test_sigkill_inside_each_iceberg_commit_then_rerun_ends_with_exact_counts(data_dir, tmp_path, engine, monkeypatch):
    """Each kill leaves the state its name says; each re-run recovers from it and dies at the next.
    The commits are the same code behind either lake engine; each engine's batch goes through them."""
    monkeypatch.setenv("LAKE_ENGINE", engine)
    manifest = generate(state_dir("incoming"), files=4, events_per_file=600, seed=47, quirks=True)
    discover()
    state_after = {
        "rejected table: new metadata written, catalog pointer not moved": lambda: (
            unreferenced_metadata_files(REJECTED_TABLE) and not ledger(REJECTED_TABLE) and not ledger(TABLE)
        ),
        "rejected table committed, main table not": lambda: (
            ledger(REJECTED_TABLE) == waiting_events_files() and not ledger(TABLE)
        ),
        "main table: new metadata written, catalog pointer not moved": lambda: (
            unreferenced_metadata_files(TABLE) and not ledger(TABLE)
        ),
        "main table committed, files not yet moved to processed": lambda: ledger(TABLE) == waiting_events_files(),
    }
    assert list(state_after) == list(KILL_POINTS)
    for point, holds in state_after.items():
        log = tmp_path / "lake_job.log"
        with log.open("w") as stderr:
            job = subprocess.Popen(
                [sys.executable, "-m", "tests.iceberg_commit_faults", point],
                env=dict(os.environ),
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
            )
            returncode = job.wait(timeout=300)
        stop_group(job)  # the driver died; its JVM must not outlive it
        assert returncode == -signal.SIGKILL, f"{point}: exit {returncode}\n{log.read_text()[-3000:]}"
        assert holds(), f"not the state a kill at '{point}' leaves"
    run_lake_job()

    assert len(lake_rows("vehicle_events")) == manifest.good["vehicles_events"]
    assert len(lake_rows("vehicle_status")) == manifest.good["vehicles_status"]
    rejected = lake_rows("vehicle_events_rejected")
    assert len(rejected) == len(manifest.rejected["vehicles_events"])
    for table in ("vehicle_events", "vehicle_events_rejected"):
        positions = [(row["source_file"], row["source_position"]) for row in lake_rows(table)]
        assert len(positions) == len(set(positions)), f"{table}: a record committed twice"
    accounted = sum(
        count_files(state_dir(s, t)) for s in ("processed", "failed") for t in ("vehicles_events", "vehicles_status")
    )
    assert accounted == len(set(manifest.files)) and not waiting_events_files()
    subprocess.run([sys.executable, "-m", "loaders", "vehicles", "load"], check=True, timeout=300)
    for table in ("vehicle_events", "vehicle_status", "vehicle_events_rejected"):
        assert rows(f"select count(*) from raw_vehicles.{table}") == [(len(lake_rows(table)),)], table


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs: writes beyond it fail with ENOSPC, like a full landing disk."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill needs root")
    mount_point = tmp_path / "small_disk"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)], check=True)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def test_a_full_landing_disk_is_a_clear_error_and_commits_nothing(data_dir, tmp_path, full_disk):
    files = [p for p in real_csv_files() if p.name in ("0102_E0.csv", "2425_E0.csv", "1920_E0.csv", "1819_D1.csv")]
    site = lay_out_as_site(files, tmp_path / "site")
    (full_disk / "filler").write_bytes(b"x" * (200 * 1024))  # what is left is smaller than one season file
    env = {**os.environ, "ELT_LANDING_DIR": str(full_disk / "landing")}
    result = subprocess.run(
        [sys.executable, "-m", "loaders", "football-csv", "--base-url", str(site), "--seasons", "0102,1819,1920,2425"]
        + ["--divisions", "E0,D1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    assert "No space left on device" in result.stderr and "nothing from this run was loaded" in result.stderr
    assert not [p for p in (full_disk / "landing").rglob("*") if p.is_file()]  # no partial file either
    assert not tables_in("raw_football") or rows("select count(*) from raw_football.matches") == [(0,)]


@pytest.fixture
def own_postgres_server() -> Iterator[dict]:
    """A Postgres server of the test's own (initdb on a free port), so it can be restarted
    mid-load without touching the machine's shared server."""
    import pwd
    import shutil
    import tempfile

    binaries = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if os.geteuid() != 0 or not binaries or not shutil.which("runuser"):
        pytest.skip("needs root, runuser and the PostgreSQL server binaries to start a private server")
    bin_dir = binaries[-1].parent
    account = pwd.getpwnam("postgres")
    home = Path(tempfile.mkdtemp(prefix="elt-test-pg-"))  # pytest's tmp dirs are private to root
    os.chown(home, account.pw_uid, account.pw_gid)
    port = free_port()

    def as_postgres(*command: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *command], check=True, capture_output=True, timeout=120)

    as_postgres(str(bin_dir / "initdb"), "-D", str(home / "data"), "-A", "trust", "-U", "postgres")
    options = f"-p {port} -k {home} -c listen_addresses=127.0.0.1"
    ctl = [str(bin_dir / "pg_ctl"), "-D", str(home / "data"), "-l", str(home / "log"), "-w", "-o", options]
    as_postgres(*ctl, "start")
    try:
        yield {"port": port, "restart": lambda: as_postgres(*ctl, "-m", "fast", "restart"), "log": home / "log"}
    finally:
        as_postgres(*ctl, "-m", "immediate", "stop")
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.one_target  # it brings its own Postgres
def test_postgres_restarted_mid_load_the_flow_task_retries_and_loads_each_row_once(
    data_dir, own_postgres_server, prefect_api, monkeypatch
):
    import threading

    from prefect import flow

    from orchestration.flows import load_lake_to_warehouse

    monkeypatch.setenv("ELT_TARGET", "postgres")
    monkeypatch.setenv("PGHOST", "127.0.0.1")
    monkeypatch.setenv("PGPORT", str(own_postgres_server["port"]))
    monkeypatch.setenv("PGDATABASE", "postgres")
    generate(state_dir("incoming"), files=10, events_per_file=4000, seed=43)
    discover()
    run_lake_job()

    outcome: dict = {}

    @flow
    def load_only() -> None:
        load_lake_to_warehouse()

    loader = threading.Thread(target=lambda: outcome.setdefault("state", load_only(return_state=True)))
    loading = any_file(data_dir / ".dlt_pipelines" / "vehicles_lake" / "load" / "normalized", "started_jobs/*")
    loader.start()
    deadline = time.monotonic() + 120
    while not loading() and loader.is_alive() and time.monotonic() < deadline:
        time.sleep(0.005)
    assert loader.is_alive(), "the load finished before the server could be restarted"
    own_postgres_server["restart"]()
    loader.join(timeout=240)
    assert not loader.is_alive() and outcome["state"].is_completed(), outcome.get("state")
    assert "received fast shutdown request" in own_postgres_server["log"].read_text()
    for table in ("vehicle_events", "vehicle_status"):
        expected = len(lake_rows(table))
        ((count, distinct),) = rows(
            f"select count(*), count(distinct source_file || ':' || source_position) from raw_vehicles.{table}"
        )
        assert count == distinct == expected, table
