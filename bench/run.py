"""`make bench`: throughput, incremental cost and memory of the pipeline, beside references.

    python -m bench.run [--events 2000000] [--files 200] [--scales 0.25,0.5,1] [--football-copies 5]

For each scale it generates a reproducible vehicle dataset (events files plus status files, one
pair per hour), then measures on those same files, each step as its own process (wall time and
peak RSS of the whole process tree, JVM included):

- the Spark lake job (JSON → Iceberg), discovery included in the end-to-end figure;
- the lake → warehouse load on DuckDB and, when a server is reachable, Postgres;
- dbt build of the vehicle models: full, after one more hour of files (incremental), idle;
- the whole `elt` flow with no new data (the idle cost, Prefect included);
- references on the same files: DuckDB's native read_json into tables, and a naive per-row
  Python insert;
- the football-data.co.uk loader on the real season CSVs, N times.

Prints a table and writes bench/results.json. Figures are measurements, not assertions.

    python -m bench.run --crossover [--crossover-events 3000,30000,150000,600000]

times the lake job alone on each engine (LAKE_ENGINE=duckdb, then spark) on the same batches of
growing size, and writes the bytes of waiting JSON where Spark starts to win (the default of
LAKE_SMALL_BATCH_BYTES) to bench/crossover.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path

import psutil

from core.settings import PROJECT_ROOT, SHARED_REAL_DATA, postgres_credentials
from loaders.vehicles.generate import START, generate

BENCH_DIR = PROJECT_ROOT / "bench"
REAL_CSV_DIR = SHARED_REAL_DATA / "football_csv"
SAMPLE_CSV_DIR = PROJECT_ROOT / "data" / "sample" / "football_csv"
NAIVE_SAMPLE_RECORDS = 20_000
# The lake job's fixed cost: a JVM and a local SparkSession that runs one trivial job.
SPARK_START = "from spark_jobs.session import spark_session; spark_session('bench').range(1).count()"
# The job's first stage alone (read the files, parse with the registry schema, one row per
# record) and a count: what Spark needs at least before validating and writing anything.
SPARK_PARSE = (
    "import sys; from pathlib import Path; from lake.registry import Registry;"
    " from spark_jobs.session import spark_session; from spark_jobs.vehicle_lake import _parse_files;"
    " spark = spark_session('bench'); registry = Registry();"
    " print(sum(_parse_files(spark, registry.get(t), sorted(Path(sys.argv[1]).glob(t + '_*.json'))).count()"
    " for t in ('vehicles_events', 'vehicles_status')))"
)


@dataclass
class Step:
    wall_s: float
    peak_rss_mb: float


def measure(command: list[str], env: dict[str, str]) -> Step:
    """Run a command to completion; wall time and the peak summed RSS of its process tree."""
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    root = psutil.Process(process.pid)
    peak = 0
    output = bytearray()
    os.set_blocking(process.stdout.fileno(), False)
    while process.poll() is None:
        peak = max(peak, _tree_rss(root))
        output += process.stdout.read() or b""
        time.sleep(0.05)
    output += process.stdout.read() or b""
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}):\n{output.decode()[-4000:]}")
    return Step(round(wall, 2), round(peak / 2**20, 1))


def _tree_rss(root: psutil.Process) -> int:
    total = 0
    try:
        for process in [root, *root.children(recursive=True)]:
            try:
                total += process.memory_info().rss
            except psutil.Error:
                pass
    except psutil.Error:
        pass
    return total


WAREHOUSE_ROWS = (
    "from core.warehouse import query; print(query('select (select count(*) from raw_vehicles.vehicle_events)"
    " + (select count(*) from raw_vehicles.vehicle_status)')[1][0][0])"
)


def loaded_rows(env: dict[str, str]) -> int:
    """Rows the load put into the warehouse, read back (a fast load of nothing must not pass)."""
    output = subprocess.run(python("-c", WAREHOUSE_ROWS), env=env, cwd=PROJECT_ROOT, capture_output=True, text=True)
    if output.returncode != 0:
        raise RuntimeError(f"counting warehouse rows failed:\n{output.stderr[-2000:]}")
    return int(output.stdout.strip())


def check_loaded(env: dict[str, str], expected: int, where: str) -> None:
    found = loaded_rows(env)
    if found != expected:
        raise RuntimeError(f"{where}: {found} rows in raw_vehicles, expected {expected}")


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def dbt(*args: str, data_dir: Path) -> list[str]:
    executable = str(Path(sys.executable).parent / "dbt")
    return [executable, *args, "--target-path", str(data_dir / "dbt_target"), "--log-path", str(data_dir / "dbt_logs")]


def environment(data_dir: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "ELT_DATA_DIR": str(data_dir),
        "ELT_TARGET": "duckdb",
        "DBT_PROJECT_DIR": str(PROJECT_ROOT / "dbt_project"),
        "DBT_PROFILES_DIR": str(PROJECT_ROOT / "profiles"),
        "PREFECT_HOME": str(data_dir / ".prefect"),
        **extra,
    }


def generate_dataset(folder: Path, events: int, files: int, seed: int) -> dict[str, int]:
    manifest = generate(folder, files=files, events_per_file=events // files, seed=seed)
    return {"events": manifest.good["vehicles_events"], "statuses": manifest.good["vehicles_status"]}


def stage(source: Path, incoming: Path) -> None:
    incoming.mkdir(parents=True, exist_ok=True)
    for path in source.glob("*.json"):
        os.link(path, incoming / path.name)


def duckdb_read_json(source: Path, work: Path) -> float:
    """The practical single-node limit: DuckDB's native JSON reader into warehouse tables."""
    import duckdb

    database = work / "reference_read_json.duckdb"
    started = time.perf_counter()
    with duckdb.connect(str(database)) as connection:
        connection.execute(
            "create table events as select unnest(vehicles_events, recursive := true) "
            f"from read_json('{source}/vehicles_events_*.json', maximum_object_size = 536870912)"
        )
        connection.execute(
            "create table statuses as select unnest(vehicle_status, recursive := true) "
            f"from read_json('{source}/vehicles_status_*.json', maximum_object_size = 536870912)"
        )
        connection.execute("checkpoint")
    return time.perf_counter() - started


def naive_per_row_insert(source: Path, work: Path) -> tuple[int, float]:
    """The baseline everybody writes first: json.load, then one INSERT per record."""
    import duckdb

    database = work / "reference_naive.duckdb"
    records = 0
    started = time.perf_counter()
    with duckdb.connect(str(database)) as connection:
        connection.execute(
            "create table events (vehicle_id varchar, event_time varchar, event_source varchar,"
            " event_type varchar, event_value varchar, event_extra_data varchar)"
        )
        for path in sorted(source.glob("vehicles_events_*.json")):
            for event in json.loads(path.read_bytes())["vehicles_events"]:
                connection.execute(
                    "insert into events values (?, ?, ?, ?, ?, ?)",
                    [
                        event["vehicle_id"],
                        event["event_time"],
                        event["event_source"],
                        event["event_type"],
                        str(event.get("event_value")),
                        json.dumps(event.get("event_extra_data")),
                    ],
                )
                records += 1
            if records >= NAIVE_SAMPLE_RECORDS:
                break
    return records, time.perf_counter() - started


def postgres_reachable() -> bool:
    import psycopg2

    try:
        psycopg2.connect(postgres_credentials(), connect_timeout=5).close()
        return True
    except psycopg2.OperationalError:
        return False


def postgres_load(data_dir: Path, work: Path, expected: int) -> Step | None:
    """The same lake → warehouse load into a Postgres database of the benchmark's own."""
    import psycopg2

    if not postgres_reachable():
        return None
    name = f"elt_bench_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(postgres_credentials())
    admin.autocommit = True
    admin.cursor().execute(f'create database "{name}"')
    # Its own dlt state, reading the same lake (the catalog holds absolute paths).
    pg_dir = work / "postgres"
    (pg_dir / "lake").mkdir(parents=True)
    shutil.copyfile(data_dir / "lake" / "catalog.db", pg_dir / "lake" / "catalog.db")
    try:
        env = environment(pg_dir, ELT_TARGET="postgres", PGDATABASE=name)
        step = measure(python("-m", "loaders", "vehicles", "load"), env)
        check_loaded(env, expected, "Postgres")
        return step
    finally:
        admin.cursor().execute(f'drop database if exists "{name}" with (force)')
        admin.close()


def football_load(copies: int, work: Path) -> dict:
    """The football-data.co.uk loader on the real season files, `copies` times into fresh warehouses."""
    shutil.rmtree(work, ignore_errors=True)  # fresh warehouses: nothing may be skipped as unchanged
    source = REAL_CSV_DIR if REAL_CSV_DIR.is_dir() else SAMPLE_CSV_DIR
    files = sorted(source.rglob("*.csv"))
    site = work / "football_site"
    pairs = set()
    for path in files:
        if source == REAL_CSV_DIR:
            season, division = path.stem.split("_")[:2]
        else:
            season, division = path.parent.name, path.stem
        (site / season).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, site / season / f"{division}.csv")
        pairs.add((season, division))
    rows = sum(max(0, len(path.read_bytes().splitlines()) - 1) for path in files)
    walls = []
    for copy in range(copies):
        data_dir = work / f"football_{copy}"
        command = python("-m", "loaders", "football-csv", "--base-url", str(site))
        command += [
            "--seasons",
            ",".join(sorted({s for s, _ in pairs})),
            "--divisions",
            ",".join(sorted({d for _, d in pairs})),
        ]
        walls.append(measure(command, environment(data_dir)).wall_s)
    total = sum(walls)
    return {
        "files": len(files),
        "copies": copies,
        "rows_per_copy": rows,
        "wall_s": round(total, 2),
        "rows_per_s": round(rows * copies / total),
    }


def run_scale(events: int, files: int, seed: int, work: Path) -> dict:
    if work.exists():
        shutil.rmtree(work)
    data_dir = work / "data"
    source = work / "source"
    started = time.perf_counter()
    counts = generate_dataset(source, events, files, seed)
    generation = time.perf_counter() - started
    records = counts["events"] + counts["statuses"]
    stage(source, data_dir / "incoming")
    env = environment(data_dir)

    discover = measure(python("-m", "loaders", "vehicles", "discover"), env)
    lake = measure(python("-m", "spark_jobs.vehicle_lake"), {**env, "LAKE_ENGINE": "spark"})
    load = measure(python("-m", "loaders", "vehicles", "load"), env)
    check_loaded(env, records, "DuckDB")
    end_to_end = discover.wall_s + lake.wall_s + load.wall_s
    load_postgres = postgres_load(data_dir, work, records)
    spark_start = measure(python("-c", SPARK_START), env)
    spark_parse = measure(python("-c", SPARK_PARSE, str(source)), env)

    full = measure(dbt("build", "--selector", "vehicles", data_dir=data_dir), env)
    one_hour = work / "one_more_hour"
    extra = generate(  # the same fleet's next hour: it touches vehicle-days the full build made
        one_hour,
        files=1,
        events_per_file=events // files,
        seed=seed + 1,
        fleet_seed=seed,
        start=START + timedelta(hours=files),
    )
    stage(one_hour, data_dir / "incoming")
    for command in (
        ("-m", "loaders", "vehicles", "discover"),
        ("-m", "spark_jobs.vehicle_lake"),
        ("-m", "loaders", "vehicles", "load"),
    ):
        measure(python(*command), {**env, "LAKE_ENGINE": "spark"})
    incremental = measure(dbt("build", "--selector", "vehicles", data_dir=data_dir), env)
    idle_build = measure(dbt("build", "--selector", "vehicles", data_dir=data_dir), env)

    measure(python("-m", "orchestration.flows"), env)  # first run: football samples, audit marts
    idle_flow = measure(python("-m", "orchestration.flows"), env)

    read_json = duckdb_read_json(source, work)
    naive_records, naive_wall = naive_per_row_insert(source, work)

    ours = records / end_to_end
    reference = records / read_json
    naive = naive_records / naive_wall
    return {
        "events": counts["events"],
        "statuses": counts["statuses"],
        "files": files * 2,
        "input_mb": round(sum(p.stat().st_size for p in source.glob("*.json")) / 2**20, 1),
        "generation_s": round(generation, 2),
        "discover": asdict(discover),
        "lake_job": {**asdict(lake), "events_per_s": round(counts["events"] / lake.wall_s)},
        "load_duckdb": {**asdict(load), "rows_per_s": round(records / load.wall_s)},
        "load_postgres": {**asdict(load_postgres), "rows_per_s": round(records / load_postgres.wall_s)}
        if load_postgres
        else None,
        "end_to_end": {"wall_s": round(end_to_end, 2), "records_per_s": round(ours)},
        "dbt_full": asdict(full),
        "dbt_incremental_one_hour": {**asdict(incremental), "new_events": extra.good["vehicles_events"]},
        "dbt_idle": asdict(idle_build),
        "incremental_over_full": round(incremental.wall_s / full.wall_s, 3),
        # dbt's fixed cost (start, parse, tests on small tables) is the idle build; above it:
        "incremental_over_full_above_idle": round(
            max(incremental.wall_s - idle_build.wall_s, 0) / max(full.wall_s - idle_build.wall_s, 0.01), 3
        ),
        "spark_start": asdict(spark_start),
        "spark_parse_only": {**asdict(spark_parse), "records_per_s": round(records / spark_parse.wall_s)},
        "idle_flow": asdict(idle_flow),
        "reference_duckdb_read_json": {"wall_s": round(read_json, 2), "records_per_s": round(reference)},
        "reference_naive_insert": {
            "records": naive_records,
            "wall_s": round(naive_wall, 2),
            "records_per_s": round(naive),
        },
        "ours_over_read_json": round(ours / reference, 3),
        "ours_over_naive": round(ours / naive, 1),
    }


CROSSOVER_EVENTS = "3000,30000,150000,600000"
EVENTS_PER_FILE = 10_000  # the main bench's files: 2M events in 200 files


def lake_job_on_each_engine(events: int, seed: int, work: Path) -> dict:
    """The lake job alone (discovered files waiting in processing/) on each engine, same batch."""
    source = work / "source"
    generate(source, files=max(1, events // EVENTS_PER_FILE), events_per_file=min(events, EVENTS_PER_FILE), seed=seed)
    waiting = sum(path.stat().st_size for path in source.glob("*.json"))
    walls = {}
    for engine in ("duckdb", "spark"):
        env = environment(work / engine, LAKE_ENGINE=engine)
        stage(source, work / engine / "incoming")
        measure(python("-m", "loaders", "vehicles", "discover"), env)
        step = measure(python("-m", "spark_jobs.vehicle_lake"), env)
        walls[engine] = {**asdict(step)}
    return {"events": events, "waiting_bytes": waiting, **walls}


def crossover_bytes(runs: list[dict]) -> int | None:
    """Where Spark's wall time meets DuckDB's: between the two measured sizes where Spark becomes
    the faster (linear in between); the smallest size when Spark is faster at every size; past
    the largest size, on the lines through the two largest; None when DuckDB gains there too."""
    points = sorted((run["waiting_bytes"], run["duckdb"]["wall_s"] - run["spark"]["wall_s"]) for run in runs)
    if points[0][1] >= 0:
        return points[0][0]
    for (x0, gap0), (x1, gap1) in zip(points, points[1:], strict=False):
        if gap0 < 0 <= gap1:
            return round(x0 + (x1 - x0) * -gap0 / (gap1 - gap0))
    if len(points) < 2:
        return None
    (x0, gap0), (x1, gap1) = points[-2], points[-1]
    if gap1 <= gap0:
        return None
    return round(x1 + (x1 - x0) * -gap1 / (gap1 - gap0))


def small_batch_threshold(runs: list[dict]) -> tuple[int, str]:
    """The default of LAKE_SMALL_BATCH_BYTES: the crossover; when DuckDB was faster at every size,
    the largest size measured (past it, nothing says DuckDB's in-memory batch still wins)."""
    crossover = crossover_bytes(runs)
    if crossover is not None:
        return crossover, "crossover"
    return max(run["waiting_bytes"] for run in runs), "no crossover: the largest batch measured, DuckDB faster"


def run_crossover(sizes: list[int], seed: int, work: Path, out: Path) -> int:
    runs = []
    for events in sizes:
        print(f"lake job on each engine: {events:,} events ...", flush=True)
        shutil.rmtree(work / f"crossover_{events}", ignore_errors=True)
        runs.append(lake_job_on_each_engine(events, seed, work / f"crossover_{events}"))
        shutil.rmtree(work / f"crossover_{events}", ignore_errors=True)
    crossover = crossover_bytes(runs)
    threshold, basis = small_batch_threshold(runs)
    results = {
        "machine": {"cpus": os.cpu_count(), "load_average_1_5_15": os.getloadavg()},
        "runs": runs,
        "crossover_bytes": crossover,
        "small_batch_threshold_bytes": threshold,
        "threshold_basis": basis,
    }
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\n{'events':>10} {'waiting MB':>10} {'DuckDB s':>9} {'Spark s':>8} {'DuckDB MB':>10} {'Spark MB':>9}")
    for run in runs:
        print(
            f"{run['events']:>10,} {run['waiting_bytes'] / 2**20:>10.1f} {run['duckdb']['wall_s']:>9} "
            f"{run['spark']['wall_s']:>8} {run['duckdb']['peak_rss_mb']:>10} {run['spark']['peak_rss_mb']:>9}"
        )
    print(f"\ncrossover: {crossover if crossover is not None else 'none (DuckDB gains with size)'}")
    print(f"LAKE_SMALL_BATCH_BYTES default: {threshold} ({basis}); written to {out}")
    return 0


def print_table(results: dict) -> None:
    scales = results["scales"]
    rows = [
        ("events", lambda s: f"{s['events']:,}"),
        ("input MB (events + status)", lambda s: s["input_mb"]),
        ("Spark lake job: wall s", lambda s: s["lake_job"]["wall_s"]),
        ("Spark lake job: events/s", lambda s: f"{s['lake_job']['events_per_s']:,}"),
        ("Spark lake job: peak RSS MB", lambda s: s["lake_job"]["peak_rss_mb"]),
        ("lake → DuckDB: rows/s", lambda s: f"{s['load_duckdb']['rows_per_s']:,}"),
        ("lake → Postgres: rows/s", lambda s: f"{s['load_postgres']['rows_per_s']:,}" if s["load_postgres"] else "-"),
        ("end to end JSON → warehouse: s", lambda s: s["end_to_end"]["wall_s"]),
        ("end to end: records/s", lambda s: f"{s['end_to_end']['records_per_s']:,}"),
        ("DuckDB read_json: records/s", lambda s: f"{s['reference_duckdb_read_json']['records_per_s']:,}"),
        ("naive per-row insert: records/s", lambda s: f"{s['reference_naive_insert']['records_per_s']:,}"),
        ("ours / read_json", lambda s: s["ours_over_read_json"]),
        ("ours / naive", lambda s: s["ours_over_naive"]),
        ("dbt full build s", lambda s: s["dbt_full"]["wall_s"]),
        ("dbt incremental (+1 hour) s", lambda s: s["dbt_incremental_one_hour"]["wall_s"]),
        ("dbt idle build s", lambda s: s["dbt_idle"]["wall_s"]),
        ("incremental / full", lambda s: s["incremental_over_full"]),
        ("  the same, above the idle build", lambda s: s["incremental_over_full_above_idle"]),
        ("Spark session start (part of the job) s", lambda s: s["spark_start"]["wall_s"]),
        ("Spark parse only (start + read + parse) s", lambda s: s["spark_parse_only"]["wall_s"]),
        ("idle elt flow s", lambda s: s["idle_flow"]["wall_s"]),
    ]
    header = ["measure", *(f"×{scale['scale']}" for scale in scales)]
    table = [header] + [[name, *(str(render(scale)) for scale in scales)] for name, render in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print(
            "  ".join(
                cell.ljust(width) if i == 0 else cell.rjust(width)
                for i, (cell, width) in enumerate(zip(row, widths, strict=True))
            )
        )
    football = results["football_csv"]
    print(
        f"\nfootball-data.co.uk loader: {football['files']} real files × {football['copies']}: "
        f"{football['rows_per_s']:,} rows/s ({football['wall_s']} s)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2_000_000, help="events at scale 1")
    parser.add_argument("--files", type=int, default=200, help="events files at scale 1 (as many status files)")
    parser.add_argument("--scales", default="0.25,0.5,1", help="fractions of --events and --files to run")
    parser.add_argument("--football-copies", type=int, default=5)
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--work", type=Path, default=BENCH_DIR / ".work", help="scratch space (removed per scale)")
    parser.add_argument("--out", type=Path, default=None, help="default: bench/results.json (bench/crossover.json)")
    parser.add_argument("--crossover", action="store_true", help="only the lake job on each engine, growing batches")
    parser.add_argument("--crossover-events", default=CROSSOVER_EVENTS, help="batch sizes in events")
    args = parser.parse_args(argv)
    if args.crossover:
        sizes = [int(part) for part in args.crossover_events.split(",")]
        return run_crossover(sizes, args.seed, args.work, args.out or BENCH_DIR / "crossover.json")
    args.out = args.out or BENCH_DIR / "results.json"

    results = {
        "machine": {
            "cpus": os.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "arguments": {"events": args.events, "files": args.files, "scales": args.scales, "seed": args.seed},
        "scales": [],
    }
    for scale in (float(part) for part in args.scales.split(",")):
        events, files = int(args.events * scale), max(1, int(args.files * scale))
        print(f"scale ×{scale}: {events:,} events in {files} files ...", flush=True)
        measured = run_scale(events, files, args.seed, args.work / f"scale_{scale}")
        results["scales"].append({"scale": scale, **measured})
    results["football_csv"] = football_load(args.football_copies, args.work / "football")
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print()
    print_table(results)
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
