"""Shared fixtures: isolated data dirs, the real sample files laid out like the live site, dbt."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from core.settings import (
    DBT_PROFILES_DIR,
    DBT_PROJECT_DIR,
    PROJECT_ROOT,
    SHARED_REAL_DATA,
    TARGETS,
    postgres_credentials,
)

QUIET_TOOLS = {
    "DO_NOT_TRACK": "1",
    "DBT_SEND_ANONYMOUS_USAGE_STATS": "False",
    "RUNTIME__DLTHUB_TELEMETRY": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}
for _name, _value in QUIET_TOOLS.items():
    os.environ.setdefault(_name, _value)

# The tests' Spark drivers compile with C1 only: their batches are tiny, and the C2 compiler's
# work did not pay back in runs that short (the Spark-heavy test files, once each way: 363 s of
# the machine's CPU with the JVM's default, 284 s with this). Users and the bench get the default.
os.environ.setdefault("PYSPARK_SUBMIT_ARGS", "--driver-java-options -XX:TieredStopAtLevel=1 pyspark-shell")


SAMPLE_CSV = PROJECT_ROOT / "data" / "sample" / "football_csv" / "2425"
SAMPLE_DIVISIONS = ("D2", "E0", "E1", "SC0", "SP1")


def sample_matches(*divisions: str) -> int:
    """Match rows in the bundled CSVs, counted here with the csv module (blank rows skipped)."""
    total = 0
    for division in divisions or SAMPLE_DIVISIONS:
        with open(SAMPLE_CSV / f"{division}.csv", encoding="utf-8-sig", newline="") as handle:
            total += sum(1 for row in csv.reader(handle) if any(cell.strip() for cell in row)) - 1
    return total


def matches_in(path: Path) -> int:
    """Data rows with a date and both teams, counted from the file itself with the csv module."""
    with open(path, encoding="utf-8-sig", newline="") as handle:
        return sum(
            1
            for row in csv.DictReader(handle)
            if all((row.get(column) or "").strip() for column in ("Date", "HomeTeam", "AwayTeam"))
        )


def api_counts(v4: Path) -> tuple[int, int, int]:
    """(competitions, distinct teams, distinct matches) in a football-data.org v4 mirror, counted
    from its JSON responses."""

    def listed(pattern: str, key: str) -> list[dict]:
        return [item for path in sorted(v4.glob(pattern)) for item in json.loads(path.read_bytes())[key]]

    competitions = listed("competitions.json", "competitions")
    teams = {team["id"] for team in listed("competitions/*/teams*.json", "teams")}
    matches = {match["id"] for match in listed("competitions/*/matches*.json", "matches")}
    return len(competitions), len(teams), len(matches)


SAMPLE_API = PROJECT_ROOT / "data" / "sample" / "football_api" / "v4"


def real_data(kind: str) -> Path:
    """The shared real sample files; CI always has them, a lone clone may not."""
    folder = SHARED_REAL_DATA / kind
    if not folder.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{folder} is missing: CI must run with shared/ beside the clone")
        pytest.skip(f"real sample data not found at {folder}")
    return folder


def real_csv_files() -> list[Path]:
    return sorted(real_data("football_csv").glob("*.csv"))


def season_and_division(path: Path) -> tuple[str, str]:
    """'2324_E0_excel_resaved.csv' -> ('2324', 'E0')."""
    season, division = path.stem.split("_")[:2]
    return season, division


def lay_out_as_site(files: list[Path], base: Path) -> Path:
    """Copy files to <base>/<season>/<division>.csv, the live site's layout."""
    for path in files:
        season, division = season_and_division(path)
        target = base / season / f"{division}.csv"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return base


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test that writes a warehouse runs on each target, unless marked `one_target`
    (its subject does not depend on the warehouse: parsing, Spark internals, CLI errors)."""
    targets = ["duckdb"] if metafunc.definition.get_closest_marker("one_target") else list(TARGETS)
    for name, scope in (("target", "function"), ("module_target", "module")):
        if name in metafunc.fixturenames:
            metafunc.parametrize(name, targets, indirect=True, scope=scope)


# The longest test files, longest first (CI's durations, then each file alone with -n 0 on a busy
# 2-core machine, 2026-11-30); the files not listed follow in name order. pytest-xdist's
# `loadfile` hands out files in collection order only with --no-loadscope-reorder (make test
# passes it; by default it hands out the files with the most tests first), so collecting these
# first keeps one long file from running alone at the end. test_slim_ci comes late on purpose:
# it reuses test_environments' runs.
LONGEST_FILES_FIRST = (
    "test_partial_sources.py",
    "test_flows.py",
    "test_environments.py",
    "test_report_html.py",
    "test_schedules.py",
    "test_faults.py",
    "test_promote_postgres.py",
    "test_vehicle_lake.py",
    "test_alerts.py",
    "test_make_run.py",
    "test_lake_engines.py",
    "test_temporary_api.py",
    "test_football_csv_load.py",
    "test_football_api.py",
    "test_deploy.py",
    "test_secrets.py",
    "test_warehouse_lock.py",
    "test_spark_cluster.py",
    "test_slim_ci.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FILES_FIRST.index(name) if name in LONGEST_FILES_FIRST else len(LONGEST_FILES_FIRST)

    items.sort(key=rank)  # stable: each file's tests keep their order


def require_postgres() -> None:
    """Skip the Postgres cases when no server is reachable; fail when one was promised (PGHOST)."""
    import psycopg2

    try:
        psycopg2.connect(postgres_credentials(), connect_timeout=5).close()
    except psycopg2.OperationalError as error:
        where = postgres_credentials().rsplit("@", 1)[-1]
        if os.environ.get("PGHOST"):
            pytest.fail(f"PGHOST is set but Postgres at {where} is unreachable: {error}")
        pytest.skip(f"no Postgres reachable at {where} (set PGHOST to run these): {error}")


@contextlib.contextmanager
def own_postgres_database(patch: pytest.MonkeyPatch) -> Iterator[str]:
    """A database of the test's own, created and dropped here; warehouse and Iceberg catalog in it."""
    import psycopg2

    require_postgres()
    name = f"elt_test_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(postgres_credentials())
    admin.autocommit = True
    try:
        admin.cursor().execute(f'create database "{name}"')
        patch.setenv("PGDATABASE", name)
        patch.setenv("ICEBERG_CATALOG_URI", postgres_credentials().replace("postgresql://", "postgresql+psycopg2://"))
        yield name
    finally:
        admin.cursor().execute(f'drop database if exists "{name}" with (force)')
        admin.close()


@contextlib.contextmanager
def on_target(target: str, patch: pytest.MonkeyPatch) -> Iterator[str]:
    patch.setenv("ELT_TARGET", target)
    patch.delenv("ICEBERG_CATALOG_URI", raising=False)
    if target == "postgres":
        with own_postgres_database(patch):
            yield target
    else:
        yield target


@pytest.fixture
def target(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    with on_target(request.param, monkeypatch):
        yield request.param


@pytest.fixture(scope="module")
def module_target(request: pytest.FixtureRequest) -> Iterator[str]:
    with pytest.MonkeyPatch.context() as patch, on_target(request.param, patch):
        yield request.param


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str) -> Path:
    """A fresh ELT_DATA_DIR (landing/, lake/, dlt state) and warehouse on `target`, for one test."""
    path = tmp_path / "data"
    path.mkdir()
    monkeypatch.setenv("ELT_DATA_DIR", str(path))
    return path


@pytest.fixture(scope="module")
def module_data_dir(tmp_path_factory: pytest.TempPathFactory, module_target: str) -> Iterator[Path]:
    """Like data_dir, shared by the tests of one module (for expensive loads)."""
    path = tmp_path_factory.mktemp("data")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ELT_DATA_DIR", str(path))
        yield path


def run_dbt(*args: str, data_dir: Path, check: bool = True) -> subprocess.CompletedProcess:
    """The real dbt CLI against the data dir's warehouse."""
    env = {
        **os.environ,
        **QUIET_TOOLS,
        "ELT_DATA_DIR": str(data_dir),
        "DBT_PROJECT_DIR": str(DBT_PROJECT_DIR),
        "DBT_PROFILES_DIR": str(DBT_PROFILES_DIR),
    }
    dbt = Path(sys.executable).parent / "dbt"
    command = [
        str(dbt),
        *args,
        "--target-path",
        str(data_dir / "dbt_target"),
        "--log-path",
        str(data_dir / "dbt_logs"),
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"dbt {' '.join(args)} failed:\n{result.stdout[-6000:]}\n{result.stderr[-2000:]}")
    return result


@pytest.fixture
def replay_api() -> Iterator:
    """A local football-data.org replaying the shared recorded responses (tests/api_replay.py)."""
    from .api_replay import ReplayApi, recorded_routes, start

    api = ReplayApi(recorded_routes())
    server, thread = start(api)
    yield api
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def lay_out_api_recordings(base: Path) -> Path:
    """The shared football_api recordings as a file:// mirror of the API under <base>/v4."""
    from loaders.http import file_for_url

    from .api_replay import recorded_routes

    for path, recording in recorded_routes().items():
        target = file_for_url(f"file://{base}{path}")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(recording, target)
    return base / "v4"


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A real, temporary Prefect API server for the flow tests (prefect's own test harness). Like
    `make run`'s temporary API it keeps its concurrency leases on disk, in a PREFECT_HOME of its
    own, where a step waiting for its warehouse turn releases expired ones (orchestration/concurrency.py)."""
    from prefect.settings import PREFECT_HOME, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    from orchestration.concurrency import LEASE_STORAGE_VARIABLE, RELEASES_EXPIRED_LEASES, keep_leases_on_disk

    with contextlib.ExitStack() as stack:
        stack.enter_context(temporary_settings({PREFECT_HOME: tmp_path_factory.mktemp("prefect-home")}))
        with environment_restored(LEASE_STORAGE_VARIABLE):  # read by the server as it starts, not by later tests
            assert keep_leases_on_disk()
            RELEASES_EXPIRED_LEASES.set()  # a temporary server: no repossessor
            stack.enter_context(prefect_test_harness(server_startup_timeout=120))
        yield


@contextlib.contextmanager
def environment_restored(name: str) -> Iterator[None]:
    before = os.environ.get(name)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def run_logs(flow_run_ids: list, enough: Callable[[list], bool], timeout: float = 60) -> list:
    """The logs the Prefect API holds for these flow runs, read again until `enough(logs)` or
    the timeout: a run ships its logs to the API in the background, after the run has returned."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=flow_run_ids)))
            if enough(logs) or time.monotonic() > deadline:
                return logs
            time.sleep(1)


def rows(sql: str, params=()) -> list[tuple]:
    """Rows of one query on the current target's warehouse (portable SQL only)."""
    from core.warehouse import query

    return query(sql, params)[1]


def tables_in(schema: str) -> set[str]:
    """Table names in a warehouse schema; empty when nothing was ever loaded there."""
    from core.settings import target, warehouse_path

    if target() == "duckdb" and not warehouse_path().exists():
        return set()
    return {
        name for (name,) in rows("select table_name from information_schema.tables where table_schema = %s", [schema])
    }


def listening_addresses(port: int) -> set[str]:
    """The local addresses of the sockets listening on a port (read from the kernel, no traffic)."""
    import psutil

    return {
        connection.laddr.ip
        for connection in psutil.net_connections(kind="inet")
        if connection.status == psutil.CONN_LISTEN and connection.laddr.port == port
    }


def listens_on_loopback_only(port: int) -> bool:
    addresses = listening_addresses(port)
    assert addresses, f"nothing listens on port {port}"
    return all(address in ("127.0.0.1", "::1") for address in addresses)
