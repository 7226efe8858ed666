"""Command line for the loaders.

python -m loaders football-csv --seasons 2425 --divisions E0,E1
python -m loaders football-api --competitions PL,BL1 --season 2024
python -m loaders football-csv --seasons previous,current   # resolved from today's UTC date
python -m loaders status

The run mode (ELT_MODE=sample|live, loaders/modes.py) decides the inputs: in sample mode the
bundled sample, in live mode .dlt/config.toml; --live and --base-url ask for live mode.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys

from dlt.pipeline.exceptions import PipelineStepFailed

from core.cli import exit_promptly
from core.secrets import SecretsError
from core.settings import data_dir, data_dir_or_exit, environment, target
from core.storage import StorageError
from core.warehouse import WarehouseBusy, held_for_writing
from lake import files as vehicle_files
from lake.registry import Registry, RegistryError
from loaders import football_api, football_csv
from loaders.modes import ModeError, remember_mode, run_mode, source_options
from loaders.pipelines import pipeline
from loaders.seasons import SeasonError, resolve_season_range


def _asked_mode(args: argparse.Namespace) -> str | None:
    """--live and --base-url read real data (the live site, or a mirror laid out like it)."""
    return "live" if args.live or args.base_url else None


def _football_csv(args: argparse.Namespace) -> int:
    mode = run_mode(_asked_mode(args))
    seasons = args.seasons
    if args.start_year is not None or args.end_year is not None:
        if args.start_year is None or args.end_year is None:
            raise football_csv.FootballCsvError("a season range needs both --from and --to")
        seasons = resolve_season_range(args.start_year, args.end_year)
    base_url = football_csv.LIVE_BASE_URL if args.live else args.base_url
    options = source_options("football_csv", mode, seasons=seasons, divisions=args.divisions, base_url=base_url)
    source = football_csv.football_csv(force=args.force, **options)
    remember_mode(mode)
    load = pipeline("football_csv", "raw_football")
    print(load.run(source))
    run = football_csv.last_run(load)
    print(
        f"football_csv ({', '.join(run['seasons'])}): {len(run['loaded'])} loaded, {len(run['unchanged'])} unchanged, "
        f"{len(run['missing'])} not found, {len(run['failed'])} failed"
    )
    for name, reason in run["failed"].items():
        print(f"  failed {name}: {reason}", file=sys.stderr)
    return 1 if run["failed"] else 0


def _football_api(args: argparse.Namespace) -> int:
    mode = run_mode(_asked_mode(args))
    base_url = football_api.LIVE_BASE_URL if args.live else args.base_url
    options = source_options(
        "football_api",
        mode,
        competitions=args.competitions,
        season=args.season,
        base_url=base_url,
        calls_per_minute=args.calls_per_minute,
    )
    source = football_api.football_api(**options)
    remember_mode(mode)
    load = pipeline("football_api", "raw_football_api")
    print(load.run(source))
    print(f"football_api: season {football_api.last_season(load)}")
    return 0


def _vehicles(args: argparse.Namespace) -> int:
    mode = run_mode()
    if args.step == "stage-sample" and mode != "sample":
        raise ModeError("vehicles stage-sample copies the bundled sample: it runs in sample mode only")
    remember_mode(mode)
    if args.step in ("stage-sample", "discover") and mode == "sample":
        staged = vehicle_files.stage_sample()
        print(f"vehicles: {len(staged)} sample files copied to {vehicle_files.state_dir('incoming')}")
    if args.step == "discover":
        report = vehicle_files.discover()
        print(
            f"vehicles: {len(report.processing)} to process, {len(report.pending)} pending, "
            f"{len(report.failed)} failed, new types: {', '.join(report.registered) or 'none'}"
        )
    elif args.step == "load":
        from loaders.vehicles.warehouse_load import lake_pipeline, vehicles_lake

        print(lake_pipeline().run(vehicles_lake()))
    return 0


def _registry(args: argparse.Namespace) -> int:
    registry = Registry()
    registry.sync_seed()
    if args.action == "list":
        print(f"{'file_type':<24} {'table':<24} {'status':<9} time column")
        for item in registry.list():
            print(f"{item.file_type:<24} {item.table_name:<24} {item.status:<9} {item.time_column or '-'}")
    elif args.action == "show":
        item = registry.get(args.file_type)
        print(
            json.dumps(
                {
                    "file_type": item.file_type,
                    "table_name": item.table_name,
                    "status": item.status,
                    **item.definition(),
                },
                indent=2,
            )
        )
    elif args.action == "import-from-warehouse":
        from lake.registry_upgrade import OLD_TABLE, take_over_warehouse_registry

        taken = take_over_warehouse_registry(registry)
        print(f"registry: taken over from the warehouse's {OLD_TABLE}: {', '.join(taken) or 'nothing to change'}")
    else:
        item = registry.set_status(args.file_type, "active" if args.action == "activate" else "inactive")
        print(f"{item.file_type} is now {item.status}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from loaders.status import report

    print(report())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m loaders", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    csv_cmd = commands.add_parser("football-csv", help="load football-data.co.uk season CSVs")
    csv_cmd.add_argument("--seasons", help="comma-separated season codes, e.g. 2324,2425, or current, previous")
    csv_cmd.add_argument("--from", dest="start_year", help="first season's start year, e.g. 2019, or previous")
    csv_cmd.add_argument("--to", dest="end_year", help="last season's start year, e.g. 2024, or current")
    csv_cmd.add_argument("--divisions", help="comma-separated division codes, e.g. E0,E1")
    source = csv_cmd.add_mutually_exclusive_group()
    source.add_argument("--base-url", help="where <season>/<division>.csv files live (URL or folder); a live-mode run")
    source.add_argument("--live", action="store_true", help=f"live mode, reading {football_csv.LIVE_BASE_URL}")
    csv_cmd.add_argument("--force", action="store_true", help="re-load files even if unchanged")
    csv_cmd.set_defaults(handler=_football_csv)

    api_cmd = commands.add_parser("football-api", help="load football-data.org v4 competitions, teams, matches")
    api_cmd.add_argument("--competitions", help="comma-separated codes or ids, e.g. PL,BL1")
    api_cmd.add_argument("--season", help="start year of the season, e.g. 2024, or current, previous")
    api_source = api_cmd.add_mutually_exclusive_group()
    api_source.add_argument("--base-url", help="API base URL, or a folder of recorded responses; a live-mode run")
    api_source.add_argument(
        "--live", action="store_true", help=f"live mode, calling {football_api.LIVE_BASE_URL} (needs a token)"
    )
    api_cmd.add_argument("--calls-per-minute", type=int, help="client-side rate limit for live calls (default 10)")
    api_cmd.set_defaults(handler=_football_api)

    vehicles_cmd = commands.add_parser("vehicles", help="vehicle files: discover, or load the lake into the warehouse")
    vehicles_cmd.add_argument(
        "step",
        choices=["stage-sample", "discover", "load"],
        help="stage-sample: copy data/sample/vehicles to incoming/ (sample mode only); discover: sort incoming/ "
        "by registry, in sample mode after staging the sample; "
        "load: new lake rows into raw_vehicles (the lake itself is written by python -m spark_jobs.vehicle_lake)",
    )
    vehicles_cmd.set_defaults(handler=_vehicles)

    registry_cmd = commands.add_parser("registry", help="the vehicle file-type registry (beside the Iceberg catalog)")
    registry_cmd.add_argument("action", choices=["list", "show", "activate", "deactivate", "import-from-warehouse"])
    registry_cmd.add_argument("file_type", nargs="?")
    registry_cmd.set_defaults(handler=_registry)

    status_cmd = commands.add_parser("status", help="rows per raw table, last loads, files per state, freshness")
    status_cmd.set_defaults(handler=_status)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "action", "list") in ("show", "activate", "deactivate") and not args.file_type:
        parser.error(f"registry {args.action} needs a file type")
    data_dir_or_exit()
    print(f"target={target()} env={environment()} data_dir={data_dir()}")
    try:
        with held_for_writing() if writes_to_warehouse(args) else contextlib.nullcontext():
            return args.handler(args)
    except PipelineStepFailed as failure:
        cause = _known_cause(failure)
        if cause is None:
            raise
        print(f"error: {cause} (nothing from this run was loaded)", file=sys.stderr)
        return 1
    except KNOWN_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


KNOWN_ERRORS = (
    football_csv.FootballCsvError,
    football_api.FootballApiError,
    SeasonError,
    ModeError,
    RegistryError,
    SecretsError,
    StorageError,
    WarehouseBusy,
)


def writes_to_warehouse(args: argparse.Namespace) -> bool:
    """Commands that load into the warehouse, and so wait for DuckDB's one writer slot."""
    return args.command in ("football-csv", "football-api") or (args.command == "vehicles" and args.step == "load")


def _known_cause(error: BaseException) -> BaseException | None:
    """dlt wraps what a resource raised; find our own error in the chain."""
    while error is not None:
        if isinstance(error, KNOWN_ERRORS):
            return error
        error = error.__cause__ or error.__context__
    return None


if __name__ == "__main__":
    exit_promptly(main())
