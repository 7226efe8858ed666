"""Prefect flows: the ELT run, backfills and maintenance.

    python -m orchestration.flows            # one run of `elt` on the configured target (make run)

`elt` runs the steps in order: football CSV load → football API load → vehicle discovery →
Spark lake job → lake→warehouse load → dbt source freshness → dbt build (the gate) → publish.
Steps that can fail for a passing reason (HTTP, a Postgres connection, a killed Spark run)
retry a bounded number of times; steps that fail on bad data do not.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.logging.handlers import PrefectConsoleHandler
from prefect.settings import get_current_settings

from loaders.settings import data_dir, data_dir_or_exit, ensure_data_dir, pipeline
from orchestration import dbt_gate
from orchestration.concurrency import writes_to_warehouse
from orchestration.report import export_reports, report_dir

SOURCES = ("football_csv", "football_api", "vehicles")


@task(retries=2, retry_delay_seconds=[10, 60])
@writes_to_warehouse
def load_football_csv(seasons: list[str] | None, divisions: list[str] | None, request_delay: float = 0.0) -> dict:
    from loaders.football_csv import LoadReport, football_csv

    report = LoadReport()
    options: dict[str, Any] = {"report": report, "request_delay": request_delay}
    if seasons:
        options["seasons"] = seasons
    if divisions:
        options["divisions"] = divisions
    pipeline("football_csv", "raw_football").run(football_csv(**options))
    if report.failed:
        get_run_logger().warning("football_csv files that failed (kept in landing/): %s", report.failed)
    return {"loaded": report.loaded, "unchanged": report.unchanged, "missing": report.missing, "failed": report.failed}


@task(retries=2, retry_delay_seconds=[10, 60])
@writes_to_warehouse
def load_football_api(competitions: list[str] | None, season: int | None) -> None:
    from loaders.football_api import football_api

    options: dict[str, Any] = {}
    if competitions:
        options["competitions"] = competitions
    if season is not None:
        options["season"] = season
    pipeline("football_api", "raw_football_api").run(football_api(**options))


@task
def discover_vehicle_files(stage_sample: bool) -> dict:
    from loaders.vehicles import files

    staged = files.stage_sample() if stage_sample else []
    report = files.discover()
    return {
        "staged": len(staged),
        "processing": len(report.processing),
        "pending": len(report.pending),
        "failed": report.failed,
        "new_types": report.registered,
    }


@task(retries=1, retry_delay_seconds=5)  # a killed or crashed run is safe to repeat (ledger)
def run_lake_job() -> list[dict]:
    from spark_jobs.vehicle_lake import run

    return [report.__dict__ for report in run()]


@task(retries=2, retry_delay_seconds=[5, 30])
@writes_to_warehouse
def load_lake_to_warehouse() -> None:
    from loaders.vehicles.warehouse_load import DATASET, vehicles_lake

    pipeline("vehicles_lake", DATASET).run(vehicles_lake())


@task
@writes_to_warehouse
def check_source_freshness() -> dict[str, str]:
    """Stale sources are reported, not fatal: the build still runs on what is there."""
    # The same vars as the build and publish, which then reuse this parse (dbt re-parses fully
    # when vars change).
    dbt_gate.invoke(["source", "freshness", "--vars", dbt_gate.AUDIT_VARS])
    sources = json.loads((dbt_gate.target_dir() / "sources.json").read_text())["results"]
    statuses = {result["unique_id"].removeprefix("source.elt."): result["status"] for result in sources}
    stale = {name: status for name, status in statuses.items() if status not in ("pass",)}
    if stale:
        get_run_logger().warning("stale sources: %s", stale)
    return statuses


@writes_to_warehouse
def build_and_gate(select: Sequence[str] | None, resume: bool) -> dbt_gate.GateResult:
    """dbt build into marts_audit (or dbt retry after a failed run); raise if the gate is red."""
    if resume and dbt_gate.previous_run_failed():
        get_run_logger().info("the previous dbt build failed: resuming with dbt retry")
        command = ["retry"]
    else:
        command = ["build", "--vars", dbt_gate.AUDIT_VARS] + (["--select", *select] if select else [])
    dbt_gate.invoke(command)
    result = dbt_gate.summarise(command)
    create_markdown_artifact(key="dbt-gate", markdown=dbt_gate.markdown_report(result), description="dbt test gate")
    if not result.passed:
        raise dbt_gate.DbtGateFailed(dbt_gate.failure_message(result))
    for warning in result.warnings:
        get_run_logger().warning("dbt warning: %s on %s (%s rows)", warning.test, warning.model, warning.failures)
    return result


@task
@writes_to_warehouse
def publish() -> list[str]:
    """Audited marts → marts in one transaction, then the report from the published marts."""
    result = dbt_gate.invoke(["run-operation", "publish_marts", "--vars", dbt_gate.AUDIT_VARS])
    if not result.success:
        raise RuntimeError(f"publishing the audited marts failed: {result.exception}")
    return [str(path) for path in export_reports()]


@task
@writes_to_warehouse
def summarise_run() -> list[dict]:
    from loaders.warehouse import query

    _, tables = query(
        "select table_schema, table_name from information_schema.tables "
        "where (table_schema like 'raw_%' or table_schema = 'marts') and table_schema not like '%_staging' "
        "and table_name not like '\\_dlt%' escape '\\' "
        "order by 1, 2"
    )
    rows = []
    for schema, name in tables:
        (count,) = query(f'select count(*) from "{schema}"."{name}"')[1][0]
        rows.append({"table": f"{schema}.{name}", "rows": count})
    create_table_artifact(key="elt-tables", table=rows, description="rows per table after the run")
    return rows


@flow(name="elt", log_prints=True)
def elt(
    sources: list[str] | None = None,
    seasons: list[str] | None = None,
    divisions: list[str] | None = None,
    competitions: list[str] | None = None,
    season: int | None = None,
    target: str | None = None,
    build: bool = True,
    select: list[str] | None = None,
    resume: bool = True,
    stage_sample: bool = True,
) -> dict:
    """Load the chosen sources, build and test with dbt, and publish when the gate is green.

    Args:
        sources: any of football_csv, football_api, vehicles (default: all).
        seasons, divisions: football-data.co.uk selection (default: .dlt/config.toml).
        competitions, season: football-data.org selection (default: .dlt/config.toml).
        target: duckdb or postgres (default: ELT_TARGET).
        build: run the dbt gate and publish after loading.
        select: dbt selection for the build (default: everything).
        resume: after a failed gate, re-run only failed and skipped nodes (dbt retry).
        stage_sample: copy the bundled vehicle sample into incoming/ (offline default run).
    """
    started = time.monotonic()
    ensure_data_dir()
    if target:
        os.environ["ELT_TARGET"] = target
    sources = list(SOURCES) if sources is None else sources
    unknown = set(sources) - set(SOURCES)
    if unknown:
        raise ValueError(f"unknown sources {sorted(unknown)}; choose from {', '.join(SOURCES)}")
    outcome: dict[str, Any] = {"data_dir": str(data_dir())}
    if "football_csv" in sources:
        outcome["football_csv"] = load_football_csv(seasons, divisions)
    if "football_api" in sources:
        load_football_api(competitions, season)
    if "vehicles" in sources:
        outcome["discovery"] = discover_vehicle_files(stage_sample)
        outcome["lake"] = run_lake_job()
        load_lake_to_warehouse()
    reports: list[str] = []
    if build:
        outcome["freshness"] = check_source_freshness()
        inputs = dbt_gate.inputs_fingerprint(select)
        if dbt_gate.already_published(inputs):
            get_run_logger().info("nothing new since the last published build: gate and publish skipped")
            outcome["gate_skipped"] = True
        else:
            gate = build_and_gate(select, resume)
            reports = publish()
            # Before the first build there is no manifest to read the inputs from; the build
            # changed no source table, so they can be read now.
            dbt_gate.record_published(inputs or dbt_gate.inputs_fingerprint(select))
            outcome["tests"] = gate.counts
            outcome["dbt_command"] = gate.command
    outcome["reports"] = reports
    outcome["tables"] = summarise_run()
    outcome["seconds"] = round(time.monotonic() - started, 1)
    return outcome


def print_summary(outcome: dict) -> None:
    print("\nRows per table")
    for row in outcome["tables"]:
        print(f"  {row['table']:<52} {row['rows']:>9}")
    rejected = [row for row in outcome["tables"] if "rejected" in row["table"]]
    print("Rejected records: " + (", ".join(f"{r['table']} {r['rows']}" for r in rejected) or "none"))
    for lake in outcome.get("lake", []):
        if lake["failed_files"]:
            print(f"Failed files ({lake['file_type']}): {lake['failed_files']}")
    if outcome.get("gate_skipped"):
        print("dbt: nothing new since the last published build (same data, same project): gate and publish skipped")
    if "tests" in outcome:
        print("dbt: " + ", ".join(f"{count} {status}" for status, count in sorted(outcome["tests"].items())))
    print(f"Report: {report_dir()}")
    print("Docs:   make docs, then open http://127.0.0.1:8080")


def quiet_task_runs_on_the_console() -> None:
    """One line per step on screen: task runs' INFO lines (one per dbt node and per state change)
    stay in Prefect's run logs and UI; their warnings and errors still show."""

    def keep(record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not record.name.startswith("prefect.task_runs")

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler):
            handler.addFilter(keep)


def wait_until_task_runs_are_recorded(flow_run_id: UUID, last_task: str | None, timeout: float = 60) -> None:
    """Prefect's server records task runs from the events a run sends, one event at a time and in
    the order they were sent. The temporary API stops when this process exits; stopped in the
    middle of recording an event, it cancels that write and logs `Error flushing 1 events` with a
    traceback. So before exiting, send what is queued and wait until the task run that started last
    (`last_task`, when known) is recorded in a final state: everything sent before it is then too."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all(timeout=timeout)
    this_run = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            latest = client.read_task_runs(flow_run_filter=this_run, sort=TaskRunSort.EXPECTED_START_TIME_DESC, limit=1)
            recorded = latest and latest[0].state and latest[0].state.is_final()
            if recorded and (last_task is None or latest[0].name.startswith(f"{last_task}-")):
                return
            time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestration.flows", description="One run of the elt flow.")
    parser.add_argument("--verbose", action="store_true", help="also show every task run (one per dbt node)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    data_dir_or_exit()
    if not args.verbose:
        quiet_task_runs_on_the_console()
    temporary_api = get_current_settings().api.url is None
    state = elt(return_state=True)
    if temporary_api:
        last_task = summarise_run.name if state.is_completed() else None
        wait_until_task_runs_are_recorded(state.state_details.flow_run_id, last_task)
    if not state.is_completed():
        print(f"error: the elt run ended {state.name}. {state.message}", file=sys.stderr)
        return 1
    outcome = state.result()
    print_summary(outcome)
    print(
        f"Pipeline time: {outcome['seconds']:.1f}s in the elt flow run, "
        f"{time.monotonic() - started:.1f}s in all (with a temporary Prefect API when PREFECT_API_URL is unset)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())


@flow(name="backfill", log_prints=True)
def backfill(
    first_season: int,
    last_season: int,
    divisions: list[str] | None = None,
    competitions: list[str] | None = None,
    request_delay: float = 6.0,
    build: bool = True,
) -> dict:
    """Load seasons first_season..last_season (start years) of the chosen divisions and
    competitions, waiting `request_delay` seconds between requests. Re-running is harmless:
    files merge on their keys and unchanged files are skipped."""
    from loaders.football_csv import seasons_between

    seasons = seasons_between(first_season, last_season)
    outcome: dict[str, Any] = {"seasons": seasons, "football_csv": load_football_csv(seasons, divisions, request_delay)}
    if competitions:
        for year in range(first_season, last_season + 1):
            load_football_api(competitions, year)
            time.sleep(request_delay)
    if build:
        gate = build_and_gate(["+path:models/marts/football", "+path:models/marts/reporting"], resume=False)
        outcome["tests"] = gate.counts
        outcome["reports"] = publish()
    return outcome


@flow(name="maintenance", log_prints=True)
def maintenance(
    snapshot_max_age_days: float = 7,
    keep_last_snapshots: int = 5,
    orphan_min_age_hours: float = 24,
    landing_retention_days: float = 30,
) -> dict:
    """Expire old Iceberg snapshots, remove orphan lake files, prune old landing files."""
    from orchestration import maintenance as housekeeping

    outcome: dict[str, Any] = {"expired_snapshots": {}, "orphans_removed": {}}
    for table in housekeeping.lake_tables():
        name = table.name()[-1]
        outcome["expired_snapshots"][name] = housekeeping.expire_snapshots(
            table, snapshot_max_age_days, keep_last_snapshots
        )
        outcome["orphans_removed"][name] = len(housekeeping.remove_orphan_files(table, orphan_min_age_hours))
    outcome["landing_files_deleted"] = len(housekeeping.delete_old_landing_files(landing_retention_days))
    print(outcome)
    return outcome
