"""The `promote` flow: staging's published marts become prod's (DESIGN §2).

It refuses unless staging's last dbt gate passed and staging was published from the dbt project
being promoted (its files' digest, recorded at publish). The marts are copied in one DuckDB
transaction on prod's warehouse, staging's attached read-only beside it (each environment's file
has its own stem, hence its own database name), so a reader of prod, or a kill at any point,
sees all old or all new marts. The promotion is recorded in prod's `marts_meta.promotions` (when,
project version, rows per mart). Then staging's report files and manifest.json are archived
under prod's promotions/<when>/ and installed as prod's reports/ and dbt_state/manifest.json
(the state a dev build defers to); maintenance keeps the last few archives.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path

from prefect import flow

from core import storage
from core.settings import data_dir, data_dir_or_exit, target, warehouse_path
from core.warehouse import when_unlocked
from lake.identifiers import validate_identifier
from orchestration import dbt_gate

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
    if target() != "duckdb":
        raise PromotionRefused("promote copies DuckDB warehouses only; Postgres environments are not promoted yet")
    if not warehouse_path(SOURCE_ENV).exists():
        raise PromotionRefused(f"staging has no warehouse ({warehouse_path(SOURCE_ENV)}): run staging first")
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


def marts_tables(connection, catalog: str) -> list[str]:
    rows = connection.execute(
        "select table_name from information_schema.tables "
        "where table_catalog = ? and table_schema = ? and table_type = 'BASE TABLE' order by 1",
        [catalog, MARTS],
    ).fetchall()
    return [validate_identifier(name, "mart") for (name,) in rows]


def replace_mart(connection, table: str) -> int:
    """Prod's mart replaced by staging's (inside the caller's transaction); its rows."""
    connection.execute(
        f'create or replace table {MARTS}."{table}" as select * from staging_warehouse.{MARTS}."{table}"'
    )
    return connection.execute(f'select count(*) from {MARTS}."{table}"').fetchone()[0]


def copy_marts(version: str, promoted_at: datetime) -> dict[str, int]:
    """Staging's marts replace prod's in one transaction; rows per mart as copied."""
    import duckdb

    prod = warehouse_path(DESTINATION_ENV)
    prod.parent.mkdir(parents=True, exist_ok=True)
    connection = when_unlocked(lambda: duckdb.connect(str(prod)), prod)
    begun = False
    try:
        staging = warehouse_path(SOURCE_ENV)
        attach = f"attach '{str(staging).replace(chr(39), chr(39) * 2)}' as staging_warehouse (read_only)"
        when_unlocked(lambda: connection.execute(attach), staging)  # a staging run may be writing
        tables = marts_tables(connection, "staging_warehouse")
        if not tables:
            raise PromotionRefused("staging has no published marts")
        prod_catalog = connection.execute("select current_database()").fetchone()[0]
        connection.execute("begin transaction")
        begun = True
        connection.execute(f"create schema if not exists {MARTS}")
        connection.execute("create schema if not exists marts_meta")
        connection.execute(
            f"create table if not exists {PROMOTIONS_TABLE} "
            "(promoted_at timestamp, project_version varchar, mart varchar, row_count bigint)"
        )
        for stale in set(marts_tables(connection, prod_catalog)) - set(tables):
            connection.execute(f'drop table {MARTS}."{stale}"')
        counts = {table: replace_mart(connection, table) for table in tables}
        connection.executemany(
            f"insert into {PROMOTIONS_TABLE} values (?, ?, ?, ?)",
            [(promoted_at.replace(tzinfo=None), version, table, rows) for table, rows in counts.items()],
        )
        connection.execute("commit")
        return counts
    except BaseException:
        if begun:
            connection.execute("rollback")
        raise
    finally:
        connection.close()


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
    state = promote(return_state=True)
    if not state.is_completed():
        print(f"error: the promote run ended {state.name}. {state.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
