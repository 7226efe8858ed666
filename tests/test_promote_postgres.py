"""Environments and promotion on Postgres: each environment writes its own database (a shared
PGDATABASE gets `_<env>`), and `promote` streams staging's marts into prod's database inside one
prod transaction (DESIGN §2, §8)."""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from contextlib import closing

import pytest

from core.settings import postgres_credentials

from .conftest import require_postgres
from .promote_faults import KILLED_AT
from .test_environments import files_with_times, run_module

pytestmark = pytest.mark.one_target

ON_POSTGRES = {"ELT_TARGET": "postgres"}


def connect(database: str):
    import psycopg2

    return psycopg2.connect(postgres_credentials().rsplit("/", 1)[0] + f"/{database}")


def marts_fingerprints(database: str) -> dict[str, tuple[int, str]]:
    """Per mart: row count and an order-independent hash of its rows (sorted row digests)."""
    with closing(connect(database)) as connection, connection.cursor() as cursor:
        cursor.execute(
            "select table_name from information_schema.tables "
            "where table_schema = 'marts' and table_type = 'BASE TABLE' order by 1"
        )
        tables = [name for (name,) in cursor.fetchall()]
        fingerprints = {}
        for table in tables:
            cursor.execute(
                "select count(*), coalesce(md5(string_agg(h, ',' order by h)), '') "
                f'from (select md5(t::text) as h from marts."{table}" as t) as digests'
            )
            fingerprints[table] = cursor.fetchone()
        return fingerprints


def schemas(database: str) -> set[str]:
    with closing(connect(database)) as connection, connection.cursor() as cursor:
        cursor.execute("select schema_name from information_schema.schemata")
        return {name for (name,) in cursor.fetchall()}


def make_prod_distinct(database: str) -> None:
    """Prod's "old" marts: every other row removed, so old and new differ in every mart with rows."""
    with closing(connect(database)) as connection, connection.cursor() as cursor:
        for table in marts_fingerprints(database):
            cursor.execute(
                f'delete from marts."{table}" where ctid in (select ctid from '
                f'(select ctid, row_number() over () as n from marts."{table}") as numbered where n % 2 = 0)'
            )
        connection.commit()


@pytest.fixture(scope="module")
def staging_on_postgres(tmp_path_factory) -> Iterator[dict]:
    """One sample run in staging on Postgres with PGDATABASE=<shared>: it must write <shared>_staging
    (created here with <shared>_prod; <shared> itself is never created, so a run using it fails)."""
    import psycopg2

    require_postgres()
    shared = f"elt_test_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(postgres_credentials())
    admin.autocommit = True
    try:
        for env in ("staging", "prod"):
            admin.cursor().execute(f'create database "{shared}_{env}"')
        root = tmp_path_factory.mktemp("postgres-environments") / "data"
        staging = run_module("orchestration.flows", root, "staging", PGDATABASE=shared, **ON_POSTGRES)
        assert staging.returncode == 0, staging.stderr[-3000:]
        yield {"root": root, "shared": shared, "staging": f"{shared}_staging", "prod": f"{shared}_prod"}
    finally:
        for env in ("staging", "prod"):
            admin.cursor().execute(f'drop database if exists "{shared}_{env}" with (force)')
        admin.close()


def promote(environments: dict, module: str = "orchestration.promote", **extra: str):
    return run_module(module, environments["root"], "prod", PGDATABASE=environments["shared"], **ON_POSTGRES, **extra)


@pytest.fixture(scope="module")
def promoted(staging_on_postgres) -> dict:
    """One promote of the staging run, with staging's marts and files as they were before it. Made
    once for the module: the promote test checks its result, and the kill test starts from it (a
    prod holding marts, which it then makes old)."""
    staging_files = files_with_times(staging_on_postgres["root"] / "staging")
    expected = marts_fingerprints(staging_on_postgres["staging"])
    result = promote(staging_on_postgres)
    assert result.returncode == 0, result.stderr[-3000:]
    return {"staging_files_before": staging_files, "staging_marts_before": expected}


def test_a_staging_run_writes_its_own_database(staging_on_postgres):
    published = marts_fingerprints(staging_on_postgres["staging"])
    assert published and all(rows for rows, _ in published.values())
    assert "marts" not in schemas(staging_on_postgres["prod"])


def test_promote_makes_prod_s_marts_equal_staging_s_in_prod_s_own_database(staging_on_postgres, promoted):
    staging_files, expected = promoted["staging_files_before"], promoted["staging_marts_before"]
    assert marts_fingerprints(staging_on_postgres["prod"]) == expected
    assert marts_fingerprints(staging_on_postgres["staging"]) == expected
    assert files_with_times(staging_on_postgres["root"] / "staging") == staging_files
    assert "marts_promoting" not in schemas(staging_on_postgres["prod"])
    with closing(connect(staging_on_postgres["prod"])) as connection, connection.cursor() as cursor:
        cursor.execute("select mart, row_count from marts_meta.promotions")
        assert dict(cursor.fetchall()) == {table: rows for table, (rows, _) in expected.items()}
    root = staging_on_postgres["root"]
    for report in (root / "staging" / "reports").iterdir():
        assert (root / "prod" / "reports" / report.name).read_bytes() == report.read_bytes()
    manifest = (root / "staging" / "dbt_target" / "manifest.json").read_bytes()
    assert (root / "prod" / "dbt_state" / "manifest.json").read_bytes() == manifest


def test_a_kill_inside_the_promote_transaction_leaves_prod_all_old_and_a_rerun_all_new(staging_on_postgres, promoted):
    prod = staging_on_postgres["prod"]
    make_prod_distinct(prod)
    old = marts_fingerprints(prod)
    new = marts_fingerprints(staging_on_postgres["staging"])
    assert len([table for table in new if old.get(table) != new[table]]) > 1
    killed = promote(staging_on_postgres, module="tests.promote_faults")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert KILLED_AT in killed.stderr
    assert marts_fingerprints(prod) == old
    assert "marts_promoting" not in schemas(prod)  # the aborted transaction's tables went with it
    rerun = promote(staging_on_postgres)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert marts_fingerprints(prod) == new


def test_staging_and_prod_resolving_to_one_database_is_refused(staging_on_postgres):
    """A database named by a secret is used as it is: the same name from both secrets (here, one
    name marked as the manager's) would make promotion copy a database onto itself."""
    before = marts_fingerprints(staging_on_postgres["staging"])
    same = run_module(
        "orchestration.promote",
        staging_on_postgres["root"],
        "prod",
        PGDATABASE=staging_on_postgres["staging"],
        ELT_SECRETS_FILLED="PGDATABASE",
        **ON_POSTGRES,
    )
    assert same.returncode == 1
    assert f"same Postgres database ({staging_on_postgres['staging']} on" in same.stderr
    assert marts_fingerprints(staging_on_postgres["staging"]) == before
