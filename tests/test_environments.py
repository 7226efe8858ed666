"""ELT_ENV: dev keeps today's layout exactly; staging and prod each write only their own
warehouse, lake, landing, file states, dlt state and dbt target (DESIGN §2, §8)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.settings import DBT_PROFILES_DIR, PROJECT_ROOT

from .conftest import QUIET_TOOLS
from .processes import stop_group
from .promote_faults import KILLED_AT
from .test_entry_points import PYTHON_ENTRY_POINTS

pytestmark = pytest.mark.one_target


def layout(env: dict[str, str]) -> dict[str, str]:
    """Every environment-dependent path and name, as the code derives it, in a fresh process
    with exactly `env` (so nothing cached from this test process leaks in)."""
    probe = """
import json
from core.settings import data_dir, landing_location, postgres_database, warehouse_path
from lake.catalog_database import catalog_schema, catalog_uri, lake_dir
from lake.files import state_dir, STATES
from loaders.modes import marker_path
from orchestration.concurrency import warehouse_limit
from orchestration.dbt_gate import target_dir
from orchestration.report import report_dir
print(json.dumps({
    "data_dir": str(data_dir()),
    "warehouse": str(warehouse_path()),
    "postgres_database": postgres_database(),
    "landing": landing_location(),
    "lake": str(lake_dir()),
    "catalog": catalog_uri(),
    "catalog_schema": catalog_schema(),
    **{state: str(state_dir(state)) for state in STATES},
    "mode_marker": str(marker_path()),
    "dbt_target": str(target_dir()),
    "reports": str(report_dir()),
    "warehouse_limit": warehouse_limit(),
}))
"""
    result = subprocess.run(
        [sys.executable, "-c", probe], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return {**json.loads(result.stdout), **pools_make_uses(env)}


def pools_make_uses(env: dict[str, str]) -> dict[str, str]:
    """The work pools `make deploy` and `make work-pool` would use (read from make's dry run)."""
    env = {**env, "PREFECT_API_URL": "http://127.0.0.1:9/api", "ELT_IMAGE": "registry.example/elt:1"}
    env.pop("ELT_WORK_POOL", None), env.pop("K8S_WORK_POOL", None)
    commands = {
        target: subprocess.run(
            ["make", "-n", "--no-print-directory", target], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True
        ).stdout
        for target in ("deploy", "work-pool")
    }
    return {
        "work_pool": re.search(r"ELT_WORK_POOL=(\S+) .*prefect --no-prompt deploy", commands["deploy"]).group(1),
        "k8s_pool": re.search(r"prefect work-pool create (\S+) --type kubernetes", commands["work-pool"]).group(1),
    }


def base_env(root: Path, **extra: str) -> dict[str, str]:
    """This process's environment without its ELT_, ICEBERG_ and PGDATABASE settings (the server's
    address and user stay), the data dir at `root`, then `extra`."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("ELT_", "ICEBERG_")) and name != "PGDATABASE"
    }
    return {**env, **QUIET_TOOLS, "ELT_DATA_DIR": str(root), **extra}


def test_without_elt_env_every_path_and_name_is_today_s(tmp_path):
    root = tmp_path / "data"
    expected = {
        "data_dir": str(root),
        "warehouse": str(root / "warehouse.duckdb"),
        "postgres_database": "postgres",
        "landing": str(root / "landing"),
        "lake": str(root / "lake"),
        "catalog": f"sqlite:///{root / 'lake' / 'catalog.db'}",
        "catalog_schema": "iceberg_catalog",
        "incoming": str(root / "incoming"),
        "pending": str(root / "pending"),
        "processing": str(root / "processing"),
        "processed": str(root / "processed"),
        "failed": str(root / "failed"),
        "mode_marker": str(root / ".elt-mode"),
        "dbt_target": str(root / "dbt_target"),
        "reports": str(root / "reports"),
        "warehouse_limit": "elt-warehouse",
        "work_pool": "elt",
        "k8s_pool": "elt-k8s",
    }
    assert layout(base_env(root)) == expected
    assert layout(base_env(root, ELT_ENV="dev")) == expected
    assert layout(base_env(root, ELT_ENV="")) == expected
    assert layout(base_env(root, PGDATABASE="analytics"))["postgres_database"] == "analytics"


@pytest.mark.parametrize("env", ["staging", "prod"])
def test_staging_and_prod_live_below_the_data_dir_with_their_own_names(tmp_path, env):
    root = tmp_path / "data"
    own = root / env
    paths = layout(base_env(root, ELT_ENV=env))
    assert paths["warehouse"] == str(own / f"warehouse_{env}.duckdb")
    assert paths["postgres_database"] == f"postgres_{env}"
    assert layout(base_env(root, ELT_ENV=env, PGDATABASE="analytics"))["postgres_database"] == f"analytics_{env}"
    from_own_secret = base_env(root, ELT_ENV=env, PGDATABASE="analytics", ELT_SECRETS_FILLED="PGDATABASE,PGUSER")
    assert layout(from_own_secret)["postgres_database"] == "analytics"
    assert paths["work_pool"] == f"elt-{env}" and paths["k8s_pool"] == f"elt-k8s-{env}"
    assert paths["warehouse_limit"] == f"elt-warehouse-{env}"
    assert paths["catalog_schema"] == f"iceberg_catalog_{env}"
    owned = ("landing", "lake", "incoming", "pending", "processing", "processed", "failed", "dbt_target", "reports")
    for name in owned:
        assert Path(paths[name]).is_relative_to(own), (name, paths[name])
    shared = layout(base_env(root, ELT_ENV=env, ELT_LANDING_DIR="s3://bucket/landing"))
    assert shared["landing"] == f"s3://bucket/landing/{env}"


PROFILE_SETTINGS = {  # dbt target -> (profile setting, its name in layout())
    "duckdb": ("path", "warehouse"),
    "postgres": ("dbname", "postgres_database"),
}


@pytest.mark.parametrize(
    "env, extra",
    [
        ("dev", {}),
        ("dev", {"PGDATABASE": "analytics"}),
        ("staging", {}),
        ("prod", {"PGDATABASE": "analytics"}),
        ("prod", {"PGDATABASE": "analytics", "ELT_SECRETS_FILLED": "PGDATABASE"}),
    ],
)
def test_dbt_s_profile_opens_the_same_warehouse_as_the_code(tmp_path, env, extra):
    """profiles.yml repeats warehouse_path's and postgres_database's rules in Jinja (dbt cannot
    call Python): held equal here, for both targets."""
    root = tmp_path / "data"
    render = """
import json, os, sys
from dbt.config.profile import Profile, read_profile
from dbt.config.renderer import ProfileRenderer
from dbt_common.context import set_invocation_context
set_invocation_context(os.environ)
raw = read_profile(os.environ["DBT_PROFILES_DIR"])
print(json.dumps({
    target: Profile.render_profile(raw["elt"], "elt", target, ProfileRenderer({}))[1][setting]
    for target, (setting, _) in json.loads(sys.argv[1]).items()
}))
"""
    env_vars = base_env(root, ELT_ENV=env, DBT_PROFILES_DIR=str(DBT_PROFILES_DIR), **extra)
    rendered = subprocess.run(
        [sys.executable, "-c", render, json.dumps(PROFILE_SETTINGS)],
        env=env_vars,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert rendered.returncode == 0, rendered.stderr
    profile = json.loads(rendered.stdout.strip().splitlines()[-1])
    code = layout(env_vars)
    assert Path(profile["duckdb"]) == Path(code["warehouse"])
    assert profile["postgres"] == code["postgres_database"]


ENVIRONMENT_ENTRY_POINTS = {"promote": ["-m", "orchestration.promote"], "slim-ci": ["-m", "orchestration.slim_ci"]}


@pytest.mark.parametrize("entry_point", [*PYTHON_ENTRY_POINTS, *ENVIRONMENT_ENTRY_POINTS])
def test_an_unknown_elt_env_is_one_line_and_exit_2(tmp_path, entry_point):
    arguments = {**PYTHON_ENTRY_POINTS, **ENVIRONMENT_ENTRY_POINTS}[entry_point]
    result = subprocess.run(
        [sys.executable, *arguments],
        env=base_env(tmp_path / "data", ELT_ENV="production"),
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == "error: ELT_ENV='production' is not one of dev, staging, prod"
    assert not (tmp_path / "data").exists()


# --- real runs: staging and prod side by side, then promotion -----------------------------------

MARTS_OF = (
    "select table_name from information_schema.tables where table_catalog = ? and table_schema = 'marts' order by 1"
)


def files_with_times(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file below a folder with its size and modification time: what "untouched" means."""
    return {
        str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def run_module(module: str, root: Path, env: str, timeout: float = 600, **extra: str) -> subprocess.CompletedProcess:
    """`python -m <module>` as a user runs it in one environment; its process group (a temporary
    Prefect server included) is gone when this returns. Output goes through files: a server left
    by a killed run would hold a pipe open."""
    output = root.parent / "output"
    output.mkdir(exist_ok=True)
    with open(output / "stdout", "w+") as stdout, open(output / "stderr", "w+") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", module],
            env=base_env(root, ELT_ENV=env, PREFECT_HOME=str(root.parent / "prefect"), **extra),
            cwd=PROJECT_ROOT,
            stdout=stdout,
            stderr=stderr,
            text=True,
            start_new_session=True,
        )
        try:
            process.wait(timeout=timeout)
        finally:
            stop_group(process)
        stdout.seek(0)
        stderr.seek(0)
        return subprocess.CompletedProcess(process.args, process.returncode, stdout.read(), stderr.read())


def marts_fingerprints(warehouse: Path) -> dict[str, tuple[int, str]]:
    """Per mart: row count and an order-independent hash of its rows (sorted row digests)."""
    import duckdb

    with duckdb.connect(str(warehouse), read_only=True) as connection:
        catalog = connection.execute("select current_database()").fetchone()[0]
        tables = [name for (name,) in connection.execute(MARTS_OF, [catalog]).fetchall()]
        return {
            table: connection.execute(
                "select count(*), coalesce(md5(string_agg(h, ',' order by h)), '') "
                f'from (select md5(cast(t as varchar)) as h from marts."{table}" as t)'
            ).fetchone()
            for table in tables
        }


@contextlib.contextmanager
def exclusive(lock: Path) -> Iterator[None]:
    """One process at a time, across pytest-xdist's workers."""
    with open(lock, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


@pytest.fixture(scope="module")
def staging_and_prod(tmp_path_factory, worker_id) -> dict:
    """One sample run in staging, then one in prod, in the same ELT_DATA_DIR; staging's files
    before and after prod's run. Made once per test session, shared by this module and
    tests/test_slim_ci.py whichever xdist workers they run on (the first to ask makes it); the
    tests change only copies of it."""
    base = tmp_path_factory.getbasetemp()
    shared = (base if worker_id == "master" else base.parent) / "staging-and-prod"
    shared.mkdir(exist_ok=True)
    root, record = shared / "data", shared / "staging_files_before_prod.json"
    with exclusive(shared / ".lock"):
        if not record.exists():
            shutil.rmtree(root, ignore_errors=True)  # a failed attempt's
            staging = run_module("orchestration.flows", root, "staging")
            assert staging.returncode == 0, staging.stderr[-3000:]
            staging_files = files_with_times(root / "staging")
            prod = run_module("orchestration.flows", root, "prod")
            assert prod.returncode == 0, prod.stderr[-3000:]
            record.write_text(json.dumps(staging_files))
    staging_files = {name: tuple(size_and_time) for name, size_and_time in json.loads(record.read_text()).items()}
    return {"root": root, "staging_files_before_prod": staging_files}


@pytest.fixture
def environments(staging_and_prod, tmp_path) -> Path:
    """A copy of the staging-and-prod data dir, for a test to change."""
    root = tmp_path / "data"
    shutil.copytree(staging_and_prod["root"], root, symlinks=True)
    return root


def test_staging_and_prod_runs_write_only_their_own_files(staging_and_prod):
    root = staging_and_prod["root"]
    assert {path.name for path in root.iterdir()} == {"staging", "prod"}  # dev's layout untouched
    assert files_with_times(root / "staging") == staging_and_prod["staging_files_before_prod"]
    for env in ("staging", "prod"):
        own = root / env
        assert (own / f"warehouse_{env}.duckdb").is_file() and not (own / "warehouse.duckdb").exists()
        assert (own / "lake" / "catalog.db").is_file()
        for folder in ("landing", "processed", "dbt_target", "reports", ".dlt_pipelines"):
            assert any(path.is_file() for path in (own / folder).rglob("*")), (env, folder)
        assert not any((own / "incoming").rglob("*.json"))  # its own deliveries were all processed
        assert marts_fingerprints(own / f"warehouse_{env}.duckdb")


def test_promote_makes_prod_s_marts_reports_and_defer_state_equal_staging_s(environments):
    staging, prod = environments / "staging", environments / "prod"
    staging_files = files_with_times(staging)
    result = run_module("orchestration.promote", environments, "prod")
    assert result.returncode == 0, result.stderr[-3000:]
    expected = marts_fingerprints(staging / "warehouse_staging.duckdb")
    promoted = marts_fingerprints(prod / "warehouse_prod.duckdb")
    assert promoted == expected
    for report in (staging / "reports").iterdir():
        assert (prod / "reports" / report.name).read_bytes() == report.read_bytes()
    manifest = (staging / "dbt_target" / "manifest.json").read_bytes()
    assert (prod / "dbt_state" / "manifest.json").read_bytes() == manifest
    assert files_with_times(staging) == staging_files
    import duckdb

    with duckdb.connect(str(prod / "warehouse_prod.duckdb"), read_only=True) as connection:
        recorded = connection.execute("select mart, row_count from marts_meta.promotions").fetchall()
    assert dict(recorded) == {table: rows for table, (rows, _) in expected.items()}


def make_prod_distinct(warehouse: Path) -> None:
    """Prod's "old" marts: every other row removed, so old and new differ in every mart with rows."""
    import duckdb

    with duckdb.connect(str(warehouse)) as connection:
        catalog = connection.execute("select current_database()").fetchone()[0]
        for (table,) in connection.execute(MARTS_OF, [catalog]).fetchall():
            connection.execute(f'delete from marts."{table}" where rowid % 2 = 0')


def test_a_kill_inside_the_promote_transaction_leaves_prod_all_old_and_a_rerun_all_new(environments):
    warehouse = environments / "prod" / "warehouse_prod.duckdb"
    make_prod_distinct(warehouse)
    old = marts_fingerprints(warehouse)
    new = marts_fingerprints(environments / "staging" / "warehouse_staging.duckdb")
    assert len([table for table in new if old.get(table) != new[table]]) > 1
    killed = run_module("tests.promote_faults", environments, "prod")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert KILLED_AT in killed.stderr
    assert marts_fingerprints(warehouse) == old
    rerun = run_module("orchestration.promote", environments, "prod")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert marts_fingerprints(warehouse) == new


def test_a_red_staging_gate_is_refused_and_prod_is_untouched(environments):
    import duckdb

    from orchestration.dbt_gate import AUDIT_VARS

    staging = environments / "staging"
    with duckdb.connect(str(staging / "warehouse_staging.duckdb")) as connection:
        connection.execute("update raw_vehicles.vehicle_events set vehicle_id = null where rowid < 3")
    dbt = str(Path(sys.executable).parent / "dbt")
    red = subprocess.run(
        [dbt, "build", "--selector", "vehicles", "--vars", AUDIT_VARS, "--target-path", str(staging / "dbt_target")],
        env=base_env(environments, ELT_ENV="staging", DBT_PROFILES_DIR=str(DBT_PROFILES_DIR)),
        cwd=PROJECT_ROOT / "dbt_project",
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert red.returncode != 0, red.stdout[-3000:]
    assert "source_not_null_vehicles_vehicle_events_vehicle_id" in red.stdout
    prod_files = files_with_times(environments / "prod")
    refused = run_module("orchestration.promote", environments, "prod")
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        "error: promotion refused: staging's last dbt gate did not pass (or staging never published): nothing promoted"
    )
    assert files_with_times(environments / "prod") == prod_files


def test_maintenance_keeps_only_the_newest_promotion_archives(tmp_path):
    from orchestration.promote import prune_promotion_archives

    stamps = [f"20260101T00000{second}000000Z" for second in range(7)]
    for stamp in stamps:
        (tmp_path / "promotions" / stamp).mkdir(parents=True)
        (tmp_path / "promotions" / stamp / "manifest.json").write_text("{}")
    removed = prune_promotion_archives(keep_last=3, root=tmp_path)
    assert [path.name for path in removed] == stamps[:4]
    assert sorted(path.name for path in (tmp_path / "promotions").iterdir()) == stamps[4:]


def test_staging_published_from_another_project_version_is_refused(environments):
    """As when the dbt project changed after staging's last publish: its recorded version differs."""
    record = environments / "staging" / "dbt_target" / "published_inputs.json"
    published = json.loads(record.read_text())
    record.write_text(json.dumps({**published, "project_version": "0" * 64}))
    prod_files = files_with_times(environments / "prod")
    refused = run_module("orchestration.promote", environments, "prod")
    assert refused.returncode == 1
    assert refused.stderr.strip().startswith(
        "error: promotion refused: staging was published from dbt project version 000000000000, this project is "
    )
    assert files_with_times(environments / "prod") == prod_files


def test_make_reset_empties_only_its_own_environment(tmp_path):
    root = tmp_path / "data"
    for env_dir in (root, root / "staging", root / "prod"):
        (env_dir / "landing").mkdir(parents=True)
        (env_dir / "landing" / "file.csv").write_text("x")
    (root / "staging" / "warehouse_staging.duckdb").write_text("x")

    def reset(**extra: str) -> None:
        environment = {**base_env(root), **extra}
        result = subprocess.run(["make", "--no-print-directory", "reset"], env=environment, cwd=PROJECT_ROOT)
        assert result.returncode == 0

    reset()
    assert sorted(path.name for path in root.iterdir()) == ["prod", "staging"]
    reset(ELT_ENV="staging")
    assert not any((root / "staging").iterdir())
    assert (root / "prod" / "landing" / "file.csv").is_file()
