"""Prefect flows: the ELT run, backfills and maintenance.

    python -m orchestration.flows            # one run of `elt` on the configured target (make run)

`elt` runs the steps in order: football CSV load → football API load → vehicle discovery →
lake job (Spark or DuckDB) → lake→warehouse load → dbt source freshness → build plan (sources never
loaded are skipped) → dbt build (the gate) → publish.
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
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from uuid import UUID

import dlt
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.logging.handlers import PrefectConsoleHandler

from core.cli import exit_promptly
from core.secrets import resolve_into_environment
from core.settings import data_dir, data_dir_or_exit, ensure_data_dir, environment
from loaders.modes import ModeError, remember_mode, run_mode, source_options
from loaders.pipelines import pipeline
from loaders.status import is_bookkeeping
from orchestration import alerts, build_plan, dbt_gate, temporary_api
from orchestration.concurrency import writes_to_warehouse
from orchestration.report import HTML_REPORT, export_reports, report_dir

SOURCES = ("football_csv", "football_api", "vehicles")
T = TypeVar("T")


def rows_loaded(load: dlt.Pipeline) -> int:
    """Rows of data (not dlt's bookkeeping) that the pipeline's last run loaded."""
    counts = load.last_trace.last_normalize_info.row_counts if load.last_trace.last_normalize_info else {}
    return sum(count for table, count in counts.items() if not is_bookkeeping(table))


@task(retries=2, retry_delay_seconds=[10, 60])
@writes_to_warehouse
def load_football_csv(
    mode: str, seasons: list[str] | None, divisions: list[str] | None, request_delay: float = 0.0
) -> dict:
    from loaders.football_csv import football_csv, last_run

    options = source_options("football_csv", mode, seasons=seasons, divisions=divisions)
    load = pipeline("football_csv", "raw_football")
    load.run(football_csv(request_delay=request_delay, **options))
    run = last_run(load)
    if run["failed"]:
        get_run_logger().warning("football_csv files that failed (kept in landing/): %s", run["failed"])
    return {**run, "rows": rows_loaded(load)}


@task(retries=2, retry_delay_seconds=[10, 60])
@writes_to_warehouse
def load_football_api(mode: str, competitions: list[str] | None, season: int | str | None) -> dict:
    from loaders.football_api import football_api, last_season

    options = source_options("football_api", mode, competitions=competitions, season=season)
    load = pipeline("football_api", "raw_football_api")
    load.run(football_api(**options))
    return {"season": last_season(load), "rows": rows_loaded(load)}


@task
def discover_vehicle_files(mode: str) -> dict:
    """In sample mode the bundled vehicle files are delivered first; in live mode only what
    arrived in incoming/ is discovered."""
    from lake import files

    staged = files.stage_sample() if mode == "sample" else []
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
def load_lake_to_warehouse() -> int:
    from loaders.vehicles.warehouse_load import lake_pipeline, vehicles_lake

    load = lake_pipeline()
    load.run(vehicles_lake())
    return rows_loaded(load)


def parsed_manifest(reuse: bool) -> dict:
    """The manifest of the last dbt command in the target dir (reuse), else of a new parse."""
    if not (reuse and (dbt_gate.target_dir() / "manifest.json").exists()):
        # The same vars as freshness, build and publish, which then reuse this parse (dbt
        # re-parses fully when vars change).
        result = dbt_gate.invoke(["parse", "--vars", dbt_gate.AUDIT_VARS])
        if not result.success:
            raise RuntimeError(f"dbt parse failed: {result.exception}")
    return dbt_gate.manifest()


@task
def plan_build(reuse_parse: bool = False) -> build_plan.Skips:
    """What the build leaves out: sources never loaded are skipped and named; a source table
    dropped after loading fails the run (SourcesVanished)."""
    skips = build_plan.skips(parsed_manifest(reuse_parse))
    for line in skips.messages:
        get_run_logger().warning(line)
    return skips


@task
@writes_to_warehouse
def check_source_freshness() -> dict[str, str]:
    """Stale sources are reported, not fatal: the build still runs on what is there. Tables
    never loaded are not checked; which tables the project declares comes from the last run's
    manifest, so no parse is added (a table declared since is checked once, and reported)."""
    exclude = build_plan.freshness_exclude_args(parsed_manifest(reuse=True))
    dbt_gate.invoke(["source", "freshness", "--vars", dbt_gate.AUDIT_VARS, *exclude])
    sources = json.loads((dbt_gate.target_dir() / "sources.json").read_text())["results"]
    statuses = {result["unique_id"].removeprefix("source.elt."): result["status"] for result in sources}
    stale = {name: status for name, status in statuses.items() if status not in ("pass",)}
    if stale:
        get_run_logger().warning("stale sources: %s", stale)
    return statuses


@writes_to_warehouse
def build_and_gate(selector: str | None, resume: bool, exclude: Sequence[str] = ()) -> dbt_gate.GateResult:
    """dbt build into marts_audit (or dbt retry after a failed run); raise if the gate is red."""
    # dbt retry repeats the failed build's selection: if a source loaded since then changed what
    # the plan leaves out, that build is stale and a new one runs.
    previous = dbt_gate.run_results() if resume else None
    if resume and dbt_gate.build_failed(previous) and dbt_gate.excluded(previous) == list(exclude):
        get_run_logger().info("the previous dbt build failed: resuming with dbt retry")
        command = ["retry"]
    else:
        selection = build_plan.selection_args(selector, list(exclude), dbt_gate.listed)
        command = ["build", "--vars", dbt_gate.AUDIT_VARS, *selection]
    dbt_gate.invoke(command)
    document = dbt_gate.run_results(required=True)
    result = dbt_gate.summarise(command, document)
    create_markdown_artifact(key="dbt-gate", markdown=dbt_gate.markdown_report(result), description="dbt test gate")
    create_table_artifact(
        key="dbt-nodes", table=dbt_gate.node_results(document), description="each node of the gate's dbt run"
    )
    if not result.passed:
        raise dbt_gate.DbtGateFailed(dbt_gate.failure_message(result), result)
    for warning in result.warnings:
        get_run_logger().warning("dbt warning: %s on %s (%s rows)", warning.test, warning.model, warning.failures)
    return result


@task
@writes_to_warehouse
def publish(skipped_marts: Sequence[str] = ()) -> list[str]:
    """Audited marts → marts in one transaction, then the report from the published marts.
    Marts the build skipped stay as they are."""
    arguments = ["--args", json.dumps({"skipped": list(skipped_marts)})] if skipped_marts else []
    result = dbt_gate.invoke(["run-operation", "publish_marts", "--vars", dbt_gate.AUDIT_VARS, *arguments])
    if not result.success:
        raise RuntimeError(f"publishing the audited marts failed: {result.exception}")
    return [str(path) for path in export_reports()]


@task
@writes_to_warehouse
def summarise_run() -> list[dict]:
    from core.warehouse import query

    _, tables = query(
        "select table_schema, table_name from information_schema.tables "
        "where (table_schema like 'raw_%' or table_schema = 'marts') and table_schema not like '%_staging' "
        "order by 1, 2"
    )
    rows = []
    for schema, name in tables:
        if is_bookkeeping(name):
            continue
        (count,) = query(f'select count(*) from "{schema}"."{name}"')[1][0]
        rows.append({"table": f"{schema}.{name}", "rows": count})
    create_table_artifact(key="elt-tables", table=rows, description="rows per table after the run")
    return rows


def step(name: str, run: Callable[[], T], describe: Callable[[T], str] = lambda _: "") -> T:
    """One line when a step starts and one when it ends, with what it did: what a person follows
    on screen (the tasks' own lines stay in Prefect's logs)."""
    logger = get_run_logger()
    logger.info("%s ...", name)
    started = time.monotonic()
    result = run()
    detail = describe(result)
    logger.info("%s: done in %.1fs%s", name, time.monotonic() - started, f" - {detail}" if detail else "")
    return result


def describe_csv_load(load: dict) -> str:
    return (
        f"seasons {', '.join(load['seasons'])}: {len(load['loaded'])} files loaded, {len(load['unchanged'])} "
        f"unchanged, {len(load['missing'])} not found, {len(load['failed'])} failed; {load['rows']} rows"
    )


def describe_discovery(found: dict) -> str:
    staged = f"{found['staged']} sample files staged, " if found["staged"] else ""
    return f"{staged}{found['processing']} files to process, {found['pending']} pending, {len(found['failed'])} failed"


def describe_lake(batches: list[dict]) -> str:
    return "; ".join(
        f"{batch['file_type']} on {batch['engine']}: {len(batch['committed_files'])} files, {batch['rows']} rows, "
        f"{batch['rejected']} rejected, {len(batch['failed_files'])} failed"
        for batch in batches
    )


def describe_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))


@flow(name="elt", log_prints=True, **alerts.FLOW_HOOKS)
def elt(
    sources: list[str] | None = None,
    seasons: list[str] | None = None,
    divisions: list[str] | None = None,
    competitions: list[str] | None = None,
    season: int | str | None = None,
    target: str | None = None,
    build: bool = True,
    selector: str | None = None,
    resume: bool = True,
    mode: str | None = None,
) -> dict:
    """Load the chosen sources, build and test with dbt, and publish when the gate is green.

    Args:
        sources: any of football_csv, football_api, vehicles (default: all).
        seasons, divisions: football-data.co.uk selection (default: .dlt/config.toml); seasons
            are codes (2425) or current / previous, resolved from today's UTC date.
        competitions, season: football-data.org selection (default: .dlt/config.toml); season is
            a start year (2024) or current / previous.
        target: duckdb or postgres (default: ELT_TARGET).
        build: run the dbt gate and publish after loading.
        selector: the dbt selector to build, from dbt_project/selectors.yml: vehicles or
            football (default: everything).
        resume: after a failed gate, re-run only failed and skipped nodes (dbt retry).
        mode: sample (the bundled inputs, offline) or live (.dlt/config.toml, files arriving in
            incoming/); default: ELT_MODE, else the mode the data dir remembers, else sample.
    """
    started = time.monotonic()
    resolve_into_environment()  # served and worker runs start here, not in main()
    ensure_data_dir()
    if target:
        os.environ["ELT_TARGET"] = target
    sources = list(SOURCES) if sources is None else sources
    unknown = set(sources) - set(SOURCES)
    if unknown:
        raise ValueError(f"unknown sources {sorted(unknown)}; choose from {', '.join(SOURCES)}")
    mode = run_mode(mode)
    outcome: dict[str, Any] = {"data_dir": str(data_dir()), "environment": environment(), "mode": mode}
    alerts.outcome_so_far(outcome)
    if sources:
        remember_mode(mode)
    if "football_csv" in sources:
        outcome["football_csv"] = step(
            "football-data.co.uk load", lambda: load_football_csv(mode, seasons, divisions), describe_csv_load
        )
    if "football_api" in sources:
        outcome["football_api"] = step(
            "football-data.org load",
            lambda: load_football_api(mode, competitions, season),
            lambda load: f"season {load['season']}: {load['rows']} rows",
        )
    if "vehicles" in sources:
        outcome["discovery"] = step("vehicle file discovery", lambda: discover_vehicle_files(mode), describe_discovery)
        outcome["lake"] = step("lake job", run_lake_job, describe_lake)
        step("lake → warehouse load", load_lake_to_warehouse, lambda rows: f"{rows} rows")
    reports: list[str] = []
    if build:
        freshness = step("dbt source freshness", check_source_freshness, lambda s: describe_counts(Counter(s.values())))
        outcome["freshness"] = freshness
        skips = plan_build(reuse_parse=True)  # freshness has just parsed the project
        outcome["skipped"] = skips.messages
        version = dbt_gate.project_version()
        inputs = dbt_gate.inputs_fingerprint(selector, version)
        if dbt_gate.already_published(inputs):
            get_run_logger().info("nothing new since the last published build: gate and publish skipped")
            outcome["gate_skipped"] = True
        else:
            gate = step(
                "dbt build (the gate)",
                lambda: build_and_gate(selector, resume, skips.excluded),
                lambda gate: describe_counts(gate.counts),
            )
            reports = step("publish", lambda: publish(skips.marts), lambda files: f"{len(files)} report files")
            # Before the first build there is no manifest to read the inputs from; the build
            # changed no source table, so they can be read now.
            dbt_gate.record_published(inputs or dbt_gate.inputs_fingerprint(selector, version), version)
            outcome["tests"] = gate.counts
            outcome["dbt_command"] = gate.command
    outcome["reports"] = reports
    outcome["tables"] = summarise_run()
    outcome["seconds"] = round(time.monotonic() - started, 1)
    return outcome


def resolved_seasons(outcome: dict) -> str | None:
    """'football_csv 2526, 2425; football_api 2025': what `current` / `previous` became."""
    parts = []
    if "football_csv" in outcome:
        parts.append("football_csv " + ", ".join(outcome["football_csv"]["seasons"]))
    if "football_api" in outcome:
        parts.append(f"football_api {outcome['football_api']['season']}")
    return "; ".join(parts) or None


def print_summary(outcome: dict) -> None:
    environment_name = outcome.get("environment", "dev")
    named = "" if environment_name == "dev" else f"environment {environment_name}, "
    print(f"\nMode: {outcome['mode']} ({named}data dir {outcome['data_dir']})")
    if seasons := resolved_seasons(outcome):
        print(f"Seasons: {seasons}")
    print("\nRows per table")
    for row in outcome["tables"]:
        print(f"  {row['table']:<52} {row['rows']:>9}")
    rejected = [row for row in outcome["tables"] if "rejected" in row["table"]]
    print("Rejected records: " + (", ".join(f"{r['table']} {r['rows']}" for r in rejected) or "none"))
    for lake in outcome.get("lake", []):
        if lake["failed_files"]:
            print(f"Failed files ({lake['file_type']}): {lake['failed_files']}")
    for line in outcome.get("skipped", []):
        print(f"dbt: {line}")
    if outcome.get("gate_skipped"):
        print("dbt: nothing new since the last published build (same data, same project): gate and publish skipped")
    if "tests" in outcome:
        print(f"dbt: {describe_counts(outcome['tests'])}")
    print(f"Report: {report_dir() / HTML_REPORT} (open it in a browser; the CSV files are beside it)")
    print("Docs:   make docs, then open http://127.0.0.1:8080")


def quiet_task_runs_on_the_console() -> None:
    """One line per step on screen: task runs' INFO lines (one per state change, and one per dbt
    node with ELT_DBT_NODE_TASKS=true) stay in Prefect's run logs and UI; their warnings and
    errors still show."""

    def keep(record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not record.name.startswith("prefect.task_runs")

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler):
            handler.addFilter(keep)


def wait_until_task_runs_are_recorded(flow_run_id: UUID, last_task: str | None, timeout: float = 60) -> None:
    """Prefect's server records task runs from the events a run sends, one event at a time and in
    the order they were sent. The temporary API stops when the run ends; stopped in the middle of
    recording an event, it cancels that write (`Error flushing 1 events`). So before it stops, send
    what is queued and wait until the task run that started last (`last_task`, when known) is
    recorded in a final state: everything sent before it is then too, and the summary reads it."""
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
    parser.add_argument("--verbose", action="store_true", help="also show every task run's lines")
    args = parser.parse_args(argv)
    started = time.monotonic()
    data_dir_or_exit()
    try:
        run_mode()  # a data dir of the other mode is refused in one line, before Prefect starts
    except ModeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not args.verbose:
        quiet_task_runs_on_the_console()
    with temporary_api.when_needed() as temporary:
        return run_and_summarise(started, temporary)


def run_and_summarise(started: float, temporary: bool = False) -> int:
    """One elt run and its summary; on a temporary API, once the run's task runs are recorded."""
    state = elt(return_state=True)
    if temporary:
        last_task = summarise_run.name if state.is_completed() else None
        wait_until_task_runs_are_recorded(state.state_details.flow_run_id, last_task)
    if not state.is_completed():
        print(f"error: the elt run ended {state.name}. {state.message}", file=sys.stderr)
        return 1
    outcome = alerts.run_outcome(state.state_details.flow_run_id, state)
    print_summary(outcome)
    print(
        f"Pipeline time: {outcome['seconds']:.1f}s in the elt flow run, "
        f"{time.monotonic() - started:.1f}s in all (with a temporary Prefect API when PREFECT_API_URL is unset)"
    )
    return 0


if __name__ == "__main__":
    exit_promptly(main())


@flow(name="backfill", log_prints=True, **alerts.FLOW_HOOKS)
def backfill(
    first_season: int | str,
    last_season: int | str,
    divisions: list[str] | None = None,
    competitions: list[str] | None = None,
    request_delay: float = 6.0,
    build: bool = True,
) -> dict:
    """Load seasons first_season..last_season (start years, or current / previous) of the chosen
    divisions and competitions from the live sources (live mode), waiting `request_delay` seconds
    between requests. Re-running is harmless: files merge on their keys and unchanged files are
    skipped."""
    from loaders.seasons import parse_season, resolve_season_range

    resolve_into_environment()  # like elt: served and worker runs start here
    seasons = resolve_season_range(first_season, last_season)
    remember_mode(run_mode("live"))
    outcome: dict[str, Any] = {
        "mode": "live",
        "seasons": seasons,
        "football_csv": load_football_csv("live", seasons, divisions, request_delay),
    }
    if competitions:
        for season in seasons:
            load_football_api("live", competitions, parse_season(season).start_year)
            time.sleep(request_delay)
    if build:
        skips = plan_build()
        gate = build_and_gate("football", resume=False, exclude=skips.excluded)
        outcome["tests"] = gate.counts
        outcome["reports"] = publish(skips.marts)
    return outcome


@flow(name="maintenance", log_prints=True, **alerts.FLOW_HOOKS)
def maintenance(
    snapshot_max_age_days: float = 7,
    keep_last_snapshots: int = 5,
    orphan_min_age_hours: float = 24,
    landing_retention_days: float = 30,
    keep_last_promotions: int = 5,
) -> dict:
    """Expire old Iceberg snapshots, remove orphan lake files, prune old landing files and all
    but the last few promotion archives (prod's promotions/)."""
    from orchestration import maintenance as housekeeping
    from orchestration.promote import prune_promotion_archives

    resolve_into_environment()  # the catalog's and the lake's credentials, like elt
    outcome: dict[str, Any] = {"expired_snapshots": {}, "orphans_removed": {}}
    for table in housekeeping.lake_tables():
        name = table.name()[-1]
        outcome["expired_snapshots"][name] = housekeeping.expire_snapshots(
            table, snapshot_max_age_days, keep_last_snapshots
        )
        outcome["orphans_removed"][name] = len(housekeeping.remove_orphan_files(table, orphan_min_age_hours))
    outcome["landing_files_deleted"] = len(housekeeping.delete_old_landing_files(landing_retention_days))
    outcome["promotion_archives_removed"] = len(prune_promotion_archives(keep_last_promotions))
    print(outcome)
    return outcome
