"""`make bench`: throughput, incremental cost and memory of the pipeline, beside references.

    python -m bench.run [--events 2000000] [--files 200] [--scales 0.25,0.5,1] [--football-copies 5]

For each scale it generates a reproducible vehicle dataset (events files plus status files, one
pair per hour), then measures on those same files, each step as its own process (wall time and
peak RSS of the whole process tree, JVM included), each path into a warehouse of its own:

- JSON → warehouse as the flow runs it (discover, lake job, lake → warehouse load), with
  LAKE_ENGINE=auto (the engine it picks is reported) and with LAKE_ENGINE=spark; the load into
  Postgres too when a server is reachable; Spark's start-up; the Spark lake job alone beside
  Spark's start + read + parse alone (RATIO_PAIRS pairs, the median ratio reported);
- peers on the same files: DuckDB's native read_json into tables (the single-node limit), dlt
  alone (records through dlt's normaliser into DuckDB, the path a dlt user takes without Spark;
  on the first files holding DLT_ONLY_RECORDS events) and a reasonable row-at-a-time Python load;
- dbt build of the vehicle models: full, after a late hour of events for vehicles and days that
  exist (incremental: daily_summary must replace rows), idle;
- the whole `elt` flow on another late hour (each step's time, publish included) and with
  nothing new (the idle cost, Prefect included);
- once: the bundled hourly sample through discover + lake + load in one process, and the
  football-data.co.uk loader on the real season CSVs, N times.

Prints a table and writes bench/results.json. Figures are measurements, not assertions.

    python -m bench.run --crossover [--crossover-events 3000,200000,1000000,2000000,4000000]

times the lake job alone on each engine (LAKE_ENGINE=duckdb, then spark) on the same batches of
growing size, and writes the bytes of waiting JSON where Spark starts to win (the default of
LAKE_SMALL_BATCH_BYTES) to bench/crossover.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from statistics import median

import psutil

from core.settings import PROJECT_ROOT, SHARED_REAL_DATA, postgres_credentials
from loaders.vehicles.generate import START, generate

BENCH_DIR = PROJECT_ROOT / "bench"
REAL_CSV_DIR = SHARED_REAL_DATA / "football_csv"
SAMPLE_CSV_DIR = PROJECT_ROOT / "data" / "sample" / "football_csv"
SAMPLE_VEHICLES = PROJECT_ROOT / "data" / "sample" / "vehicles"
# dlt's normaliser handles a few thousand records a second here: it runs on the first hourly
# file pairs holding this many events (the same files as the others), and its rate is compared.
DLT_ONLY_RECORDS = 200_000
# One pair of runs (the Spark lake job, then its parse-only probe) spreads by about ±10% in its
# ratio on a 2-core machine (1.51-1.84 in one afternoon): the bench reports the median of several.
RATIO_PAIRS = 3
# Discovery, the lake job and the lake → warehouse load in one process, as the elt flow runs
# them, ended as the commands end (core.cli); prints the engines the lake job used and each
# step's seconds. The first step imports what discovery and the lake job need, as the lake job's
# own process would; the load imports dlt.
VEHICLE_PATH = """
import sys, time
started = time.perf_counter()
from core.cli import exit_promptly
from lake import files
from spark_jobs.vehicle_lake import run
marks = [time.perf_counter()]
if "--stage-sample" in sys.argv:
    files.stage_sample()
files.discover()
marks.append(time.perf_counter())
engines = {report.engine for report in run()}
marks.append(time.perf_counter())
from loaders.vehicles.warehouse_load import lake_pipeline, vehicles_lake
lake_pipeline().run(vehicles_lake())
marks.append(time.perf_counter())
print("engines", *sorted(engines))
print("seconds", *(end - begin for begin, end in zip([started, *marks], marks)))
exit_promptly(0)
"""
VEHICLE_STEPS = ("imports", "discover", "lake", "load")
# The columns each peer reads: the registry's fields of the two bundled types (DESIGN §6).
PEER_COLUMNS = {
    "vehicles_events": ("vehicle_id", "event_time", "event_source", "event_type", "event_value", "event_extra_data"),
    "vehicles_status": ("vehicle_id", "report_time", "status_source", "status"),
}
# The lake job's fixed cost: a JVM and a local SparkSession that runs one trivial job.
SPARK_START = (
    "from core.cli import exit_promptly; from spark_jobs.session import spark_session;"
    " spark_session('bench').range(1).count(); exit_promptly(0)"
)
# The job's first stage alone (read the files, parse with the registry schema, one row per
# record): what Spark needs at least before validating and writing anything. Each parsed record
# is hashed, so that Spark builds every field (a bare count lets it prune the fields it parses).
# Both end as the lake job's command ends (core.cli), so neither pays Python's exit collections.
SPARK_PARSE = (
    "import sys; from pathlib import Path; from core.cli import exit_promptly; from lake.registry import Registry;"
    " from spark_jobs.session import spark_session; from spark_jobs.vehicle_lake import _parse_files;"
    " spark = spark_session('bench'); registry = Registry();"
    " print(sum(_parse_files(spark, registry.get(t), sorted(Path(sys.argv[1]).glob(t + '_*.json')))"
    ".selectExpr('count(*)', 'sum(hash(record))').first()[0] for t in ('vehicles_events', 'vehicles_status')));"
    " exit_promptly(0)"
)


@dataclass
class Step:
    wall_s: float
    peak_rss_mb: float


def run_measured(command: list[str], env: dict[str, str]) -> tuple[Step, str]:
    """Run a command to completion; wall time and the peak summed RSS of its process tree, and
    its output."""
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
    return Step(round(wall, 2), round(peak / 2**20, 1)), output.decode(errors="replace")


def measure(command: list[str], env: dict[str, str]) -> Step:
    return run_measured(command, env)[0]


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
    "select (select count(*) from raw_vehicles.vehicle_events) + (select count(*) from raw_vehicles.vehicle_status)"
)


def warehouse_value(env: dict[str, str], sql: str) -> str:
    """The first row of a query on the run's warehouse, read back by a process of its own."""
    code = f"from core.warehouse import query; print(*query({sql!r})[1][0])"
    output = subprocess.run(python("-c", code), env=env, cwd=PROJECT_ROOT, capture_output=True, text=True)
    if output.returncode != 0:
        raise RuntimeError(f"{sql} failed:\n{output.stderr[-2000:]}")
    return output.stdout.strip()


def loaded_rows(env: dict[str, str]) -> int:
    """Rows the load put into the warehouse, read back (a fast load of nothing must not pass)."""
    return int(warehouse_value(env, WAREHOUSE_ROWS))


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


def records_of(path: Path) -> list:
    """A bench file's records (the generator writes them under the type's records key)."""
    document = json.loads(path.read_bytes())
    return next(iter(document.values())) if isinstance(document, dict) else document


def dlt_only(source: Path, work: Path, at_least: int) -> tuple[int, float]:
    """The path a dlt user takes without Spark: each file's records, as Python objects, through
    dlt's own extract → normalise → load into a DuckDB warehouse, on the first file pairs
    holding `at_least` events. Returns the records loaded (read back from dlt's trace)."""
    import dlt

    events = sorted(source.glob("vehicles_events_*.json"))
    taken, total = [], 0
    for path in events:
        if total >= at_least:
            break
        taken.append(path.name.removeprefix("vehicles_events_"))
        total += len(records_of(path))

    def resource(file_type: str):
        def rows():
            for stamp in taken:
                yield records_of(source / f"{file_type}_{stamp}")

        return dlt.resource(rows, name=file_type)

    load = dlt.pipeline(
        pipeline_name="bench_dlt_only",
        pipelines_dir=str(work / "dlt_only_pipelines"),
        destination=dlt.destinations.duckdb(str(work / "dlt_only.duckdb")),
        dataset_name="raw_vehicles",
    )
    started = time.perf_counter()
    load.run([resource(file_type) for file_type in PEER_COLUMNS])
    wall = time.perf_counter() - started
    counts = load.last_trace.last_normalize_info.row_counts
    return sum(counts.get(file_type, 0) for file_type in PEER_COLUMNS), wall


def row_at_a_time(source: Path, work: Path, chunk: int = 10_000) -> tuple[int, float]:
    """A reasonable row-at-a-time Python path, what one writes without a framework: json per
    file, one Python row per record with the registry's columns (nested values as JSON text),
    handed to DuckDB 10,000 rows at a time as Arrow. (One INSERT per row, the slowest way, runs
    at ~1,000 rows/s here and is not the baseline.)"""
    import duckdb
    import pyarrow as pa

    def chunks(file_type: str, columns: tuple[str, ...]):
        rows = []
        for path in sorted(source.glob(f"{file_type}_*.json")):
            for record in records_of(path):
                rows.append({column: as_text(record.get(column)) for column in columns})
                if len(rows) == chunk:
                    yield pa.Table.from_pylist(rows)
                    rows = []
        if rows:
            yield pa.Table.from_pylist(rows)

    records = 0
    started = time.perf_counter()
    with duckdb.connect(str(work / "reference_row_at_a_time.duckdb")) as connection:
        for file_type, columns in PEER_COLUMNS.items():
            connection.execute(f"create table {file_type} ({', '.join(f'{c} varchar' for c in columns)})")
            for rows in chunks(file_type, columns):
                connection.register("rows_chunk", rows)
                connection.execute(f"insert into {file_type} select * from rows_chunk")
                connection.unregister("rows_chunk")
            records += connection.execute(f"select count(*) from {file_type}").fetchone()[0]
    return records, time.perf_counter() - started


def as_text(value) -> str | None:
    return value if value is None or isinstance(value, str) else json.dumps(value)


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


def json_to_warehouse(data_dir: Path, engine: str, *options: str) -> dict:
    """The vehicle path in one process, as the flow runs it: discovery of what waits in incoming/,
    the lake job with LAKE_ENGINE=`engine`, the lake → warehouse load. Returns the process's wall
    time and peak RSS, each step's seconds and the engine(s) the lake job used."""
    step, output = run_measured(python("-c", VEHICLE_PATH, *options), environment(data_dir, LAKE_ENGINE=engine))
    engines = re.search(r"^engines ?(.*)$", output, re.MULTILINE).group(1)
    seconds = re.search(r"^seconds (.*)$", output, re.MULTILINE).group(1).split()
    return {
        **asdict(step),
        "engine": engines.replace(" ", ","),
        "steps_s": {name: round(float(value), 2) for name, value in zip(VEHICLE_STEPS, seconds, strict=True)},
    }


def late_hour(folder: Path, events: int, files: int, seed: int, fleet_seed: int, hour: int) -> int:
    """One more file pair of the same fleet's events, over the hour from half past `hour` (inside
    the data set, under names of its own): late events for vehicles and days that already exist,
    so daily_summary's delete+insert replaces rows instead of only adding them. Returns the good
    records per type."""
    manifest = generate(
        folder,
        files=1,
        events_per_file=events // files,
        seed=seed,
        fleet_seed=fleet_seed,
        start=START + timedelta(hours=hour, minutes=30),
    )
    return manifest.good


DAILY_SUMMARY_STATE = (
    "select count(*), max(last_batch_id), count(*) filter (where last_batch_id ="
    " (select max(last_batch_id) from marts.daily_summary)) from marts.daily_summary"
)


def daily_summary_state(env: dict[str, str]) -> tuple[int, str, int]:
    """Rows of the dbt-built daily_summary, the newest batch any of them comes from, and the rows
    that newest batch last wrote (one query)."""
    rows, newest, of_newest = warehouse_value(env, DAILY_SUMMARY_STATE).split()
    return int(rows), newest, int(of_newest)


def flow_steps(output: str) -> dict[str, float]:
    """Each step's time as the elt flow logs it ("<step>: done in 1.2s")."""
    return {
        name: float(seconds) for name, seconds in re.findall(r"Flow run '[^']*' - (.+?): done in ([0-9.]+)s", output)
    }


def run_scale(events: int, files: int, seed: int, work: Path) -> dict:
    if work.exists():
        shutil.rmtree(work)
    source = work / "source"
    started = time.perf_counter()
    counts = generate_dataset(source, events, files, seed)
    generation = time.perf_counter() - started
    records = counts["events"] + counts["statuses"]

    # The same files down each path, each into a warehouse of its own.
    paths = {}
    for engine in ("auto", "spark"):
        stage(source, work / engine / "incoming")
        paths[engine] = json_to_warehouse(work / engine, engine)
        check_loaded(environment(work / engine), records, f"DuckDB after LAKE_ENGINE={engine}")
    data_dir = work / "auto"
    env = environment(data_dir)
    load_postgres = postgres_load(data_dir, work, records)
    spark_start = measure(python("-c", SPARK_START), env)
    pairs = lake_job_and_probe_pairs(source, work / "pairs")
    parse_only = median(pair["parse_only_s"] for pair in pairs)

    read_json = duckdb_read_json(source, work)
    dlt_records, dlt_wall = dlt_only(source, work, DLT_ONLY_RECORDS)
    row_records, row_wall = row_at_a_time(source, work)

    full = measure(dbt("build", "--selector", "vehicles", data_dir=data_dir), env)
    summary_rows, newest_before, _ = daily_summary_state(env)
    late_records = late_hour(work / "late_hour", events, files, seed + 1, seed, hour=files // 2)
    stage(work / "late_hour", data_dir / "incoming")
    late = json_to_warehouse(data_dir, "auto")
    check_loaded(env, records + sum(late_records.values()), "DuckDB after the late hour")
    incremental = measure(dbt("build", "--selector", "vehicles", data_dir=data_dir), env)
    rows_after, newest, replaced = daily_summary_state(env)
    if rows_after != summary_rows or newest == newest_before or not replaced:
        raise RuntimeError(
            f"the late hour must replace existing vehicle-days: {summary_rows} → {rows_after} rows, {replaced} replaced"
        )
    idle_build = measure(dbt("build", "--selector", "vehicles", data_dir=data_dir), env)

    measure(python("-m", "orchestration.flows"), env)  # first run: football samples, audit marts, publish
    late_hour(work / "flow_hour", events, files, seed + 2, seed, hour=files // 2 - 1)
    stage(work / "flow_hour", data_dir / "incoming")
    flow_late, flow_output = run_measured(python("-m", "orchestration.flows"), env)
    if "publish" not in flow_steps(flow_output):
        raise RuntimeError(f"the elt flow did not build and publish the late hour:\n{flow_output[-3000:]}")
    idle_flow = measure(python("-m", "orchestration.flows"), env)

    auto = records / paths["auto"]["wall_s"]
    reference = records / read_json
    dlt_rate = dlt_records / dlt_wall
    return {
        "events": counts["events"],
        "statuses": counts["statuses"],
        "files": files * 2,
        "input_mb": round(sum(p.stat().st_size for p in source.glob("*.json")) / 2**20, 1),
        "generation_s": round(generation, 2),
        "auto_path": {**paths["auto"], "records_per_s": round(auto)},
        "spark_path": {**paths["spark"], "records_per_s": round(records / paths["spark"]["wall_s"])},
        "load_postgres": {**asdict(load_postgres), "rows_per_s": round(records / load_postgres.wall_s)}
        if load_postgres
        else None,
        "spark_start": asdict(spark_start),
        "spark_parse_only": {"wall_s": parse_only, "records_per_s": round(records / parse_only)},
        "spark_lake_and_parse_only_pairs": pairs,
        "spark_lake_over_parse_only": median(pair["ratio"] for pair in pairs),
        "reference_duckdb_read_json": {"wall_s": round(read_json, 2), "records_per_s": round(reference)},
        "peer_dlt_only": {"records": dlt_records, "wall_s": round(dlt_wall, 2), "records_per_s": round(dlt_rate)},
        "peer_row_at_a_time": {
            "records": row_records,
            "wall_s": round(row_wall, 2),
            "records_per_s": round(row_records / row_wall),
        },
        "auto_over_read_json": round(auto / reference, 3),
        "auto_over_dlt_only": round(auto / dlt_rate, 1),
        "dbt_full": asdict(full),
        "late_hour": {"new_events": late_records["vehicles_events"], "vehicle_days_replaced": replaced, "path": late},
        "dbt_incremental_late_hour": asdict(incremental),
        "dbt_idle": asdict(idle_build),
        "incremental_over_full": round(incremental.wall_s / full.wall_s, 3),
        # dbt's fixed cost (start, parse, tests on small tables) is the idle build; above it:
        "incremental_over_full_above_idle": round(
            max(incremental.wall_s - idle_build.wall_s, 0) / max(full.wall_s - idle_build.wall_s, 0.01), 3
        ),
        "flow_late_hour": {**asdict(flow_late), "steps_s": flow_steps(flow_output)},
        "idle_flow": asdict(idle_flow),
    }


def lake_job_and_probe_pairs(source: Path, work: Path, pairs: int = RATIO_PAIRS) -> list[dict]:
    """The Spark lake job alone, as its own process on the discovered batch, then the start +
    read + parse probe on the same files, `pairs` times: each process's wall time and their ratio."""
    runs = []
    for pair in range(pairs):
        data_dir = work / f"pair{pair}"
        env = environment(data_dir, LAKE_ENGINE="spark")
        stage(source, data_dir / "incoming")
        measure(python("-m", "loaders", "vehicles", "discover"), env)
        job = measure(python("-m", "spark_jobs.vehicle_lake"), env)
        probe = measure(python("-c", SPARK_PARSE, str(source)), env)
        runs.append(
            {"lake_job_s": job.wall_s, "parse_only_s": probe.wall_s, "ratio": round(job.wall_s / probe.wall_s, 2)}
        )
        shutil.rmtree(data_dir)
    return runs


CROSSOVER_EVENTS = "3000,200000,1000000,2000000,4000000"
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


def steps_text(path: dict) -> str:
    return " · ".join(str(path["steps_s"][name]) for name in VEHICLE_STEPS)


def rate_text(path: dict) -> str:
    return f"{path['wall_s']} · {path['records_per_s']:,}"


def pair_ratios_text(scale: dict) -> str:
    return ", ".join(str(pair["ratio"]) for pair in scale["spark_lake_and_parse_only_pairs"])


def sample_in_one_process(work: Path) -> dict:
    """The bundled hourly sample through discover + lake (LAKE_ENGINE=auto) + load, one process."""
    shutil.rmtree(work, ignore_errors=True)
    path = json_to_warehouse(work, "auto", "--stage-sample")
    expected = sum(len(records_of(sample)) for sample in SAMPLE_VEHICLES.glob("*.json"))
    check_loaded(environment(work), expected, "the bundled sample")  # it holds no bad record
    return {**path, "records": expected}


def print_table(results: dict) -> None:
    scales = results["scales"]

    def path_row(path: str, key: str):
        return lambda s: s[path][key]

    rows = [
        ("events", lambda s: f"{s['events']:,}"),
        ("input MB (events + status)", lambda s: s["input_mb"]),
        ("auto path: engine chosen", path_row("auto_path", "engine")),
        ("auto path: imports · discover · lake · load s", lambda s: steps_text(s["auto_path"])),
        ("auto path end to end: s · records/s", lambda s: rate_text(s["auto_path"])),
        ("auto path: peak RSS MB", path_row("auto_path", "peak_rss_mb")),
        ("Spark path: imports · discover · lake · load s", lambda s: steps_text(s["spark_path"])),
        ("Spark path end to end: s · records/s", lambda s: rate_text(s["spark_path"])),
        ("Spark path: peak RSS MB", path_row("spark_path", "peak_rss_mb")),
        (
            "Spark start-up · start + read + parse only s",
            lambda s: f"{s['spark_start']['wall_s']} · {s['spark_parse_only']['wall_s']}",
        ),
        (
            f"Spark lake job / parse only: median ({RATIO_PAIRS} pairs)",
            lambda s: f"{s['spark_lake_over_parse_only']} ({pair_ratios_text(s)})",
        ),
        (
            "lake → Postgres load: rows/s",
            lambda s: f"{s['load_postgres']['rows_per_s']:,}" if s["load_postgres"] else "-",
        ),
        ("limit: DuckDB read_json, records/s", lambda s: f"{s['reference_duckdb_read_json']['records_per_s']:,}"),
        (
            "peer: dlt alone, records/s (records)",
            lambda s: f"{s['peer_dlt_only']['records_per_s']:,} ({s['peer_dlt_only']['records']:,})",
        ),
        ("peer: row at a time, records/s", lambda s: f"{s['peer_row_at_a_time']['records_per_s']:,}"),
        ("auto / read_json · auto / dlt alone", lambda s: f"{s['auto_over_read_json']} · {s['auto_over_dlt_only']}×"),
        (
            "dbt build: full · late hour · nothing new s",
            lambda s: (
                f"{s['dbt_full']['wall_s']} · {s['dbt_incremental_late_hour']['wall_s']} · {s['dbt_idle']['wall_s']}"
            ),
        ),
        (
            "late hour: events · vehicle-days replaced",
            lambda s: f"{s['late_hour']['new_events']:,} · {s['late_hour']['vehicle_days_replaced']}",
        ),
        (
            "incremental / full · above the idle build",
            lambda s: f"{s['incremental_over_full']} · {s['incremental_over_full_above_idle']}",
        ),
        ("elt flow, a late hour: s", lambda s: s["flow_late_hour"]["wall_s"]),
        ("  of which publish s", lambda s: s["flow_late_hour"]["steps_s"].get("publish", "-")),
        ("elt flow, nothing new: s", lambda s: s["idle_flow"]["wall_s"]),
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
    sample = results["sample_in_one_process"]
    print(
        f"\nbundled hourly sample ({sample['records']:,} records), discover + lake + load in one process: "
        f"{sample['wall_s']} s (imports · discover · lake · load: {steps_text(sample)} s), "
        f"peak RSS {sample['peak_rss_mb']} MB"
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
        events, files = int(args.events * scale), int(args.files * scale)
        if files < 2:
            parser.error("each scale needs at least 2 hourly files (two late hours are placed inside them)")
        print(f"scale ×{scale}: {events:,} events in {files} files ...", flush=True)
        measured = run_scale(events, files, args.seed, args.work / f"scale_{scale}")
        results["scales"].append({"scale": scale, **measured})
    results["sample_in_one_process"] = sample_in_one_process(args.work / "sample")
    results["football_csv"] = football_load(args.football_copies, args.work / "football")
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print()
    print_table(results)
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
