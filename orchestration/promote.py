"""The `promote` flow: staging's published marts become prod's (DESIGN §2).

It refuses unless staging's last dbt gate passed and staging was published from the dbt project
being promoted (its files' digest, recorded at publish). The marts are copied in one transaction
on prod's warehouse (DuckDB: staging's file attached beside it; Postgres: streamed from staging's
database, then swapped in), so a reader of prod, or a kill at any point, sees all old or all new
marts. The promotion is recorded in prod's `marts_meta.promotions` (when,
project version, rows per mart). Then staging's report files and manifest.json are archived
under prod's promotions/<when>/ and installed as prod's reports/ and dbt_state/manifest.json
(the state a dev build defers to); maintenance keeps the last few archives.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from prefect import flow

from core import storage
from core.cli import exit_promptly
from core.secrets import resolve_into_environment
from core.settings import data_dir, data_dir_or_exit, postgres_credentials, target, warehouse_path
from core.warehouse import when_unlocked
from lake.identifiers import validate_identifier
from orchestration import dbt_gate, temporary_api

SOURCE_ENV, DESTINATION_ENV = "staging", "prod"
MARTS = "marts"
PROMOTIONS_TABLE = "marts_meta.promotions"
PROMOTIONS_DIR = "promotions"
DEFER_STATE_DIR = "dbt_state"
KEEP_LAST_PROMOTIONS = 5


class PromotionRefused(RuntimeError):
    """Staging cannot be promoted; the message says why. Prod was not touched."""


def staging_target_dir() -> Path:
    return data_dir(SOURCE_ENV) / "dbt_target"


def check_promotable(current_version: str) -> dict:
    """Staging's last publish record, when it may be promoted; PromotionRefused otherwise."""
    if target() == "duckdb" and not warehouse_path(SOURCE_ENV).exists():
        raise PromotionRefused(f"staging has no warehouse ({warehouse_path(SOURCE_ENV)}): run staging first")
    if target() == "postgres":
        postgres_urls()
    published = dbt_gate.last_publish(staging_target_dir())
    if published is None:
        raise PromotionRefused("staging's last dbt gate did not pass (or staging never published): nothing promoted")
    built_from = published.get("project_version")
    if built_from != current_version:
        raise PromotionRefused(
            f"staging was published from dbt project version {str(built_from)[:12]}, this project is "
            f"{current_version[:12]}: rebuild staging from this version first"
        )
    return published


class DuckDBMarts:
    """Prod's DuckDB warehouse with staging's attached read-only beside it (each environment's file
    has its own stem, hence its own database name): a mart is copied by one statement."""

    def __init__(self) -> None:
        import duckdb

        prod = warehouse_path(DESTINATION_ENV)
        prod.parent.mkdir(parents=True, exist_ok=True)
        self.connection = when_unlocked(lambda: duckdb.connect(str(prod)), prod)
        staging = warehouse_path(SOURCE_ENV)
        attach = f"attach '{str(staging).replace(chr(39), chr(39) * 2)}' as staging_warehouse (read_only)"
        when_unlocked(lambda: self.connection.execute(attach), staging)  # a staging run may be writing
        self.prod_catalog = self.connection.execute("select current_database()").fetchone()[0]

    def tables(self, catalog: str) -> list[str]:
        rows = self.connection.execute(
            "select table_name from information_schema.tables "
            "where table_catalog = ? and table_schema = ? and table_type = 'BASE TABLE' order by 1",
            [catalog, MARTS],
        ).fetchall()
        return [validate_identifier(name, "mart") for (name,) in rows]

    def staging_tables(self) -> list[str]:
        return self.tables("staging_warehouse")

    def prod_tables(self) -> list[str]:
        return self.tables(self.prod_catalog)

    PARAMETER = "?"

    def execute(self, sql: str, params: Sequence = ()) -> None:
        self.connection.execute(sql, params)

    def begin(self) -> None:
        self.connection.execute("begin transaction")

    def replace(self, table: str) -> int:
        self.connection.execute(
            f'create or replace table {MARTS}."{table}" as select * from staging_warehouse.{MARTS}."{table}"'
        )
        return self.connection.execute(f'select count(*) from {MARTS}."{table}"').fetchone()[0]

    def commit(self) -> None:
        self.connection.execute("commit")

    def rollback(self) -> None:
        self.connection.execute("rollback")

    def close(self) -> None:
        self.connection.close()


class PostgresMarts:
    """Prod's and staging's Postgres databases, each as a run in that environment would reach it
    (postgres_database's rule, the environment's own secrets). Postgres cannot write across
    databases in one transaction: each mart is streamed from staging (one read-only snapshot of
    all marts) into a table of prod's `marts_promoting` with binary COPY, then swapped into `marts`
    — all inside one prod transaction, so prod's readers see all old or all new marts."""

    INCOMING = "marts_promoting"

    def __init__(self) -> None:
        import psycopg2

        staging, prod = postgres_urls()
        try:
            self.staging = psycopg2.connect(staging)
            self.prod = psycopg2.connect(prod)
        except psycopg2.OperationalError as error:
            raise PromotionRefused(f"cannot connect: {str(error).strip().splitlines()[0]}") from None
        self.staging.set_session(isolation_level="REPEATABLE READ", readonly=True)

    def tables_of(self, connection) -> list[str]:
        with connection.cursor() as cursor:
            cursor.execute(
                "select table_name from information_schema.tables "
                "where table_schema = %s and table_type = 'BASE TABLE' order by 1",
                [MARTS],
            )
            return [validate_identifier(name, "mart") for (name,) in cursor.fetchall()]

    def staging_tables(self) -> list[str]:
        return self.tables_of(self.staging)

    def prod_tables(self) -> list[str]:
        return self.tables_of(self.prod)

    PARAMETER = "%s"

    def execute(self, sql: str, params: Sequence = ()) -> None:
        with self.prod.cursor() as cursor:
            cursor.execute(sql, params)

    def begin(self) -> None:  # psycopg2 opens the transaction with the first statement
        self.execute(f"drop schema if exists {self.INCOMING} cascade")
        self.execute(f"create schema {self.INCOMING}")

    def staging_columns(self, table: str) -> str:
        with self.staging.cursor() as cursor:
            cursor.execute(
                "select attname, format_type(atttypid, atttypmod) from pg_attribute "
                "where attrelid = to_regclass(%s) and attnum > 0 and not attisdropped order by attnum",
                [f'{MARTS}."{table}"'],
            )
            return ", ".join(f'"{name}" {type_}' for name, type_ in cursor.fetchall())

    def replace(self, table: str) -> int:
        self.execute(f'create table {self.INCOMING}."{table}" ({self.staging_columns(table)})')
        with tempfile.SpooledTemporaryFile(max_size=64 * 2**20) as rows:
            with self.staging.cursor() as cursor:
                cursor.copy_expert(f'copy {MARTS}."{table}" to stdout (format binary)', rows)
            rows.seek(0)
            with self.prod.cursor() as cursor:
                cursor.copy_expert(f'copy {self.INCOMING}."{table}" from stdin (format binary)', rows)
        self.execute(f'drop table if exists {MARTS}."{table}" cascade')
        self.execute(f'alter table {self.INCOMING}."{table}" set schema {MARTS}')
        with self.prod.cursor() as cursor:
            cursor.execute(f'select count(*) from {MARTS}."{table}"')
            return cursor.fetchone()[0]

    def commit(self) -> None:
        self.execute(f"drop schema {self.INCOMING}")
        self.prod.commit()

    def rollback(self) -> None:
        self.prod.rollback()

    def close(self) -> None:
        self.staging.close()
        self.prod.close()


def database_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path.lstrip('/')} on {parts.hostname}:{parts.port}"


def postgres_urls() -> tuple[str, str]:
    """Staging's and prod's Postgres connections; refused when they are one database."""
    staging, prod = (postgres_credentials(environment_variables(env)) for env in (SOURCE_ENV, DESTINATION_ENV))
    if database_of(staging) == database_of(prod):
        raise PromotionRefused(f"staging and prod resolve to the same Postgres database ({database_of(prod)})")
    return staging, prod


def environment_variables(env: str) -> dict[str, str]:
    """The variables a run in `env` would see: this process's, with ELT_ENV=env and the secret
    chain resolved for it (its own prefix), so each side of a promotion has its own credentials."""
    environ = {**os.environ, "ELT_ENV": env}
    resolve_into_environment(environ)
    return environ


def replace_mart(warehouses: DuckDBMarts | PostgresMarts, table: str) -> int:
    """Prod's mart replaced by staging's (inside the promotion's transaction); its rows."""
    return warehouses.replace(table)


def copy_marts(version: str, promoted_at: datetime) -> dict[str, int]:
    """Staging's marts replace prod's in one transaction; rows per mart as copied."""
    warehouses = DuckDBMarts() if target() == "duckdb" else PostgresMarts()
    begun = False
    try:
        tables = warehouses.staging_tables()
        if not tables:
            raise PromotionRefused("staging has no published marts")
        warehouses.begin()
        begun = True
        warehouses.execute(f"create schema if not exists {MARTS}")
        warehouses.execute("create schema if not exists marts_meta")
        warehouses.execute(
            f"create table if not exists {PROMOTIONS_TABLE} "
            "(promoted_at timestamp, project_version varchar, mart varchar, row_count bigint)"
        )
        for stale in set(warehouses.prod_tables()) - set(tables):
            warehouses.execute(f'drop table {MARTS}."{stale}"')
        counts = {table: replace_mart(warehouses, table) for table in tables}
        values = ", ".join([warehouses.PARAMETER] * 4)
        for table, rows in counts.items():
            warehouses.execute(
                f"insert into {PROMOTIONS_TABLE} values ({values})",
                (promoted_at.replace(tzinfo=None), version, table, rows),
            )
        warehouses.commit()
        return counts
    except BaseException:
        if begun:
            warehouses.rollback()
        raise
    finally:
        warehouses.close()


def install_artifacts(promoted_at: datetime) -> Path:
    """Staging's manifest.json and report files, archived under prod's promotions/<when>/ and
    installed as prod's dbt_state/manifest.json and reports/ (each file written whole)."""
    staging, prod = data_dir(SOURCE_ENV), data_dir(DESTINATION_ENV)
    archive = prod / PROMOTIONS_DIR / promoted_at.strftime("%Y%m%dT%H%M%S%fZ")
    manifest = (staging / "dbt_target" / "manifest.json").read_bytes()
    storage.write_once(archive / "manifest.json", manifest)
    for report in sorted((staging / "reports").glob("*")):
        if report.is_file():
            storage.write_once(archive / "reports" / report.name, report.read_bytes())
            storage.write_once(prod / "reports" / report.name, report.read_bytes())
    storage.write_once(prod / DEFER_STATE_DIR / "manifest.json", manifest)
    return archive


def prune_promotion_archives(keep_last: int = KEEP_LAST_PROMOTIONS, root: Path | None = None) -> list[Path]:
    """Delete all but the newest `keep_last` promotions/<when>/ archives; the removed ones."""
    folder = (root or data_dir()) / PROMOTIONS_DIR
    archives = sorted(path for path in folder.glob("*") if path.is_dir()) if folder.is_dir() else []
    removed = archives[: max(len(archives) - keep_last, 0)]
    for archive in removed:
        shutil.rmtree(archive)
    return removed


@flow(name="promote", log_prints=True)
def promote() -> dict:
    """Staging's published marts, report files and manifest → prod, after checking staging's gate
    passed on this project version; recorded in prod's marts_meta.promotions."""
    version = dbt_gate.project_version()
    check_promotable(version)
    promoted_at = datetime.now(UTC)
    counts = copy_marts(version, promoted_at)
    archive = install_artifacts(promoted_at)
    print(f"promoted {len(counts)} marts from staging to prod (project version {version[:12]}): {counts}")
    return {"promoted_at": promoted_at.isoformat(), "project_version": version, "rows": counts, "archive": str(archive)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m orchestration.promote", description="Promote staging's published marts to prod."
    )
    parser.parse_args(argv)
    data_dir_or_exit()
    try:
        check_promotable(dbt_gate.project_version())  # a refusal is one line, before Prefect starts
    except PromotionRefused as error:
        print(f"error: promotion refused: {error}", file=sys.stderr)
        return 1
    with temporary_api.when_needed():
        state = promote(return_state=True)
    if not state.is_completed():
        print(f"error: the promote run ended {state.name}. {state.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    exit_promptly(main())
