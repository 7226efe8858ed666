"""The lake job's two engines, Spark and in-process DuckDB, against each other (issue 17).

Both run on the same corpus in data dirs of their own; their lake tables must be identical:
rows (in any order), column types, rejected reasons byte for byte, raw records, failed files and
their reasons, source positions, one Parquet file per day. The corpus breaks every rule kind the
registry can express, as the generator and this file state it, and holds every file defect."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from core.settings import DEFAULT_LAKE_SMALL_BATCH_BYTES
from lake.catalog import NAMESPACE, catalog
from lake.files import discover, state_dir
from lake.registry import Field, FileType, Registry
from loaders.vehicles.generate import generate
from spark_jobs.duckdb_engine import NO_DOWNLOADS
from spark_jobs.record_rules import DUCKDB, SPARK, raw_record_sql, typed_sql
from spark_jobs.vehicle_lake import TypeReport, choose_engine

from .test_vehicle_lake import RULE_KINDS

pytestmark = pytest.mark.integration
ENGINES = ("spark", "duckdb")
LINEAGE_OF_THE_RUN = ("batch_id", "ingested_at", "rejected_at")  # differ by run, not by engine

# A type of the test's own: the typed rules the vehicle types lack (long, double, boolean, json),
# a small max_file_bytes, and records whose reasons are written here, not read from the registry.
TRIPS = FileType(
    file_type="vehicles_trips",
    table_name="vehicles_trips",
    fields=(
        Field(name="vehicle_id", nullable=False, pattern="^[0-9a-f]+$"),
        Field(name="trip_start", type="timestamp", nullable=False),
        Field(name="passengers", type="long"),
        Field(name="distance_km", type="double"),
        Field(name="shared", type="boolean"),
        Field(name="route", type="json", aliases=("route:",)),
        Field(name="kind", allowed=("city", "long haul")),
    ),
    time_column="trip_start",
    record_keys=("vehicles_trips",),
    processing={"max_file_bytes": 4096},
    status="active",
)
# A type with no records key (its files are bare arrays) whose batch is clean: nothing rejected,
# so no rejected data file on either engine; a JSON object of it is refused whole.
PINGS = FileType(
    file_type="vehicles_pings",
    table_name="vehicles_pings",
    fields=(Field(name="vehicle_id", nullable=False), Field(name="ping_time", type="timestamp", nullable=False)),
    time_column="ping_time",
    record_keys=(),
    status="active",
)
PINGS_FILE = ("vehicles_pings_20251109000000.json", [{"vehicle_id": "ab12", "ping_time": "2025-11-09T00:00:01Z"}])
PINGS_OBJECT = ("vehicles_pings_20251109010000.json", "JSON object without a records key ((none registered))")
TRIP = {"vehicle_id": "ab12", "trip_start": "2025-11-08T08:00:00Z", "passengers": 2, "distance_km": 12.5}
TRIPS_GOOD = [
    {**TRIP, "shared": False, "kind": "city", "route": {"stops": 3, "at": [50.0, 8.25], "note": 'é "q" \\ /'}},
    {**TRIP, "trip_start": "2025-11-09 09:30:00.5", "passengers": "3", "shared": "yes", "route:": [1, 2.50, 1e5]},
    {**TRIP, "trip_start": "2025-11-09T10:00:00+01:00", "distance_km": "7", "shared": 1, "route": None},
    {**TRIP, "trip_start": "2025-11-10", "passengers": 1.0, "distance_km": 3, "shared": "F", "route": "text"},
]
TRIPS_BAD = [
    # An object without any registry key, in a file with no element that is not an object.
    ({"note": "no registry key"}, "vehicle_id is missing; trip_start is missing"),
    ({**TRIP, "passengers": "two"}, "passengers is not a long: two"),
    ({**TRIP, "distance_km": "far"}, "distance_km is not a double: far"),
    ({**TRIP, "shared": "maybe"}, "shared is not a boolean: maybe"),
    ({**TRIP, "kind": "teleport"}, "kind teleport is not one of city, long haul"),
    (
        {**TRIP, "vehicle_id": "AB12", "trip_start": None},
        "vehicle_id does not match ^[0-9a-f]+$: AB12; trip_start is missing",
    ),
    ({**TRIP, "trip_start": "2025-11-08T25:00:00Z"}, "trip_start is not a timestamp: 2025-11-08T25:00:00Z"),
    ("a string", "record is not a JSON object"),
    (True, "record is not a JSON object"),
]
# Files led by JSON whitespace other than spaces (space, tab, LF and CR, RFC 8259) load as any other.
WHITESPACE_LED = {
    "vehicles_trips_20251109020000.json": "\n\t [" + json.dumps({**TRIP, "trip_start": "2025-11-09T11:00:00Z"}) + "]",
    "vehicles_trips_20251109030000.json": "\r\n" + json.dumps({"vehicles_trips": [{**TRIP, "kind": "long haul"}]}),
}
# Every rule kind the registry can express, as the reasons above and the generator's state them.
EXPECTED_RULE_KINDS = (*RULE_KINDS, "is not a long: ", "is not a double: ", "is not a boolean: ")
# File defects beyond the generator's (truncated, empty, misspelled records key), with their reasons.
DEFECTS = {
    "vehicles_trips_20251110000000.json": (
        json.dumps({"vehicles_trips": [TRIP] * 60}),
        "file larger than max_file_bytes=4096",
    ),
    "vehicles_trips_20251110010000.json": ('"just a JSON string"', "not valid JSON (truncated, or not JSON at all)"),
    "vehicles_trips_20251110020000.json": (
        json.dumps({"vehicles_trips": 5}),
        "JSON object without a records key (vehicles_trips)",
    ),
    "vehicles_trips_20251110030000.json": ("[1, 2", "not valid JSON (truncated, or not JSON at all)"),
    "vehicles_trips_20251110040000.json": ("\xff\xfe garbage", "not valid JSON (truncated, or not JSON at all)"),
}


def write_corpus(incoming: Path) -> dict:
    manifest = generate(incoming, files=4, events_per_file=150, seed=5, quirks=True)
    records = TRIPS_GOOD + [record for record, _ in TRIPS_BAD]
    (incoming / "vehicles_trips_20251109000000.json").write_text(json.dumps({"vehicles_trips": records[:6]}))
    (incoming / "vehicles_trips_20251109010000.json").write_text(json.dumps(records[6:]))  # a bare array
    for name, body in WHITESPACE_LED.items():
        (incoming / name).write_bytes(body.encode())
    for name, (body, _) in DEFECTS.items():
        (incoming / name).write_text(body, encoding="latin-1" if "\xff" in body else "utf-8")
    (incoming / PINGS_FILE[0]).write_text(json.dumps(PINGS_FILE[1]))
    (incoming / PINGS_OBJECT[0]).write_text(json.dumps({"vehicles_pings": PINGS_FILE[1]}))
    return {
        "good": {**manifest.good, "vehicles_trips": len(TRIPS_GOOD) + len(WHITESPACE_LED)},
        "rejected": {**manifest.rejected, "vehicles_trips": [reason for _, reason in TRIPS_BAD]},
        "failed_files": {
            **manifest.failed_files,
            **{name: reason for name, (_, reason) in DEFECTS.items()},
            PINGS_OBJECT[0]: PINGS_OBJECT[1],
        },
    }


def days_in(parquet_file: str, time_column: str) -> tuple:
    """The UTC days a data file's rows fall on."""
    query = f"select distinct cast(timezone('UTC', {time_column}) as date) from '{parquet_file}' order by 1"
    return tuple(day for (day,) in duckdb.sql(query).fetchall())


def lake_table(name: str) -> dict:
    """A lake table as the comparison needs it: its rows without the run's own lineage, the
    Arrow types and columns its data files hold, and the days of each data file."""
    table = catalog().load_table(f"{NAMESPACE}.{name}")
    rows = table.scan().to_arrow().drop_columns([c for c in LINEAGE_OF_THE_RUN if c in table.schema().column_names])
    files = [task.file.file_path.removeprefix("file://") for task in table.scan().plan_files()]
    time_column = next((c for c in ("event_time", "report_time", "trip_start") if c in rows.column_names), None)
    return {
        "rows": Counter(tuple(row.items()) for row in rows.to_pylist()),
        "iceberg_schema": str(table.schema()),
        "parquet_types": {str(pq.read_schema(path).types) for path in files},
        "parquet_columns": {tuple(pq.read_schema(path).names) for path in files},
        "days_per_file": sorted(days_in(path, time_column) for path in files) if time_column else [],
        "data_files": int(table.current_snapshot().summary["total-data-files"]),
    }


def failed_files() -> dict[str, str]:
    return {
        error["file"]: error["reason"]
        for error_file in state_dir("failed").rglob("*.error.json")
        for error in [json.loads(error_file.read_text())]
    }


TABLES = ("vehicle_events", "vehicle_status", "vehicles_trips")
# Both engines must read a naive time as UTC on a machine whose own zone is not UTC.
MACHINE_ZONE = "Asia/Tokyo"
RUN_LAKE_JOB = (
    "import dataclasses, json; from spark_jobs.vehicle_lake import run;"
    " print(json.dumps([dataclasses.asdict(report) for report in run()]))"
)


def run_lake_job_elsewhere() -> dict[str, TypeReport]:
    """The lake job in a process of its own, in the machine zone MACHINE_ZONE (a zone is read
    once per process), on this process's data dir and engine; its reports by file type."""
    done = subprocess.run(
        [sys.executable, "-c", RUN_LAKE_JOB],
        env={**os.environ, "TZ": MACHINE_ZONE},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    reports = [TypeReport(**report) for report in json.loads(done.stdout.splitlines()[-1])]
    return {report.file_type: report for report in reports}


@pytest.fixture(scope="module")
def lakes(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The same corpus through each engine, each in a data dir of its own; what each lake holds."""
    results = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("ICEBERG_CATALOG_URI", raising=False)
        patch.delenv("SPARK_MASTER", raising=False)
        for engine in ENGINES:
            data_dir = tmp_path_factory.mktemp(f"lake_{engine}")
            patch.setenv("ELT_DATA_DIR", str(data_dir))
            patch.setenv("LAKE_ENGINE", engine)
            expected = write_corpus(state_dir("incoming"))
            Registry().sync_seed()
            Registry().register(TRIPS, origin="test")
            Registry().register(PINGS, origin="test")
            discover()
            reports = run_lake_job_elsewhere()
            assert {report.engine for report in reports.values()} == {engine}
            results[engine] = {
                "expected": expected,
                "reports": reports,
                "tables": {
                    name: lake_table(name)
                    for name in TABLES + tuple(f"{t}_rejected" for t in TABLES) + ("vehicles_pings_rejected",)
                },
                "failed": failed_files(),
                "processed": sorted(p.name for p in state_dir("processed").rglob("*.json")),
                "waiting": sorted(p.name for p in state_dir("processing").rglob("*.json")),
            }
    return results


def test_the_corpus_breaks_every_rule_kind_and_holds_every_file_defect(lakes):
    expected = lakes["spark"]["expected"]
    reasons = " ".join(reason for file_type in expected["rejected"].values() for reason in file_type)
    assert [kind for kind in EXPECTED_RULE_KINDS if kind not in reasons] == []
    defects = set(expected["failed_files"].values())
    for defect in ("empty file", "not valid JSON", "JSON object without a records key", "file larger than"):
        assert any(reason.startswith(defect) for reason in defects), defect


@pytest.mark.parametrize("engine", ENGINES)
def test_each_engine_rejects_exactly_what_the_corpus_states(lakes, engine):
    lake = lakes[engine]
    for table, file_type in zip(TABLES, ("vehicles_events", "vehicles_status", "vehicles_trips"), strict=True):
        reasons = Counter(dict(row)["reason"] for row in lake["tables"][f"{table}_rejected"]["rows"].elements())
        assert reasons == Counter(lake["expected"]["rejected"][file_type]), (engine, table)
        assert lake["tables"][table]["rows"].total() == lake["expected"]["good"][file_type], (engine, table)
    assert lake["failed"].keys() == lake["expected"]["failed_files"].keys()
    assert all(lake["failed"][name].startswith(reason) for name, reason in lake["expected"]["failed_files"].items())
    assert lake["waiting"] == []
    trips = [dict(row) for row in lake["tables"]["vehicles_trips"]["rows"].elements()]
    assert len(trips) == len(TRIPS_GOOD) + len(WHITESPACE_LED)
    whitespace_led = {row["source_file"]: row for row in trips if row["source_file"] in WHITESPACE_LED}
    assert whitespace_led.keys() == WHITESPACE_LED.keys()
    assert whitespace_led["vehicles_trips_20251109030000.json"]["kind"] == "long haul"
    by_start = {row["trip_start"]: row for row in trips}
    assert by_start[datetime(2025, 11, 9, 9, 0, tzinfo=UTC)]["shared"] is True  # 1, read as Spark casts it
    assert by_start[datetime(2025, 11, 9, 9, 30, 0, 500000, tzinfo=UTC)]["passengers"] == 3


@pytest.mark.parametrize("table", TABLES + tuple(f"{t}_rejected" for t in TABLES))
def test_both_engines_write_identical_lake_tables(lakes, table):
    spark, duck = lakes["spark"]["tables"][table], lakes["duckdb"]["tables"][table]
    assert spark["rows"], f"{table} is empty: nothing compared"
    assert duck["rows"] - spark["rows"] == Counter() and spark["rows"] - duck["rows"] == Counter(), table
    for aspect in ("iceberg_schema", "parquet_types", "parquet_columns", "days_per_file", "data_files"):
        assert duck[aspect] == spark[aspect], (table, aspect)
    if not table.endswith("_rejected"):  # one Parquet file per day, holding that day only
        days = [day for file_days in spark["days_per_file"] for day in file_days]
        assert all(len(file_days) == 1 for file_days in spark["days_per_file"]) and len(days) == len(set(days))


def test_both_engines_fail_and_process_the_same_files_for_the_same_reasons(lakes):
    spark, duck = lakes["spark"], lakes["duckdb"]
    assert duck["failed"] == spark["failed"] and len(spark["failed"]) == len(spark["expected"]["failed_files"])
    assert duck["processed"] == spark["processed"]
    for file_type, report in spark["reports"].items():
        other = duck["reports"][file_type]
        assert (other.rows, other.rejected, sorted(other.committed_files), other.failed_files) == (
            report.rows,
            report.rejected,
            sorted(report.committed_files),
            report.failed_files,
        ), file_type


def test_a_batch_with_nothing_rejected_commits_no_rejected_data_file_on_either_engine(lakes):
    for engine in ENGINES:
        assert lakes[engine]["reports"]["vehicles_pings"].rows == len(PINGS_FILE[1]), engine
        rejected = lakes[engine]["tables"]["vehicles_pings_rejected"]
        assert (rejected["rows"], rejected["data_files"]) == (Counter(), 0), engine


# Text the typed rules meet in real files, beyond the corpus: what Spark's cast accepts, the
# DuckDB dialect must accept as the same value (README lists the few forms it does not).
EDGE_TEXTS = {
    "long": ["1", " 2 ", "+3", "-4", "-0042", "123456789012345678", "1.5", "1.", ".5", "-.5", ".", "1e3",
             "9223372036854775807", "9223372036854775808", "\t7\n", "x", "", "+", "0x10"],
    "double": ["1", "1.5", " 2.5 ", "1e3", "1E-7", ".5", "5.", "Infinity", "-inf", "1d", "1.5F", "x", "", "1,5"],
    "boolean": ["true", "TRUE", " yes ", "y", "1", "0", "no", "n", "f", "t", "false", "maybe", "", "2", "on"],
    "timestamp": ["2025-11-08T14:37:12Z", "2025-11-08T14:37:12.123Z", "2025-11-08T14:37:12", "2025-11-08 14:37",
                  "2025-11-08", "2025-11", "2025", "2025-11-08T14:37:12+01:00", "2025-11-08T14:37:12+0100",
                  "2025-11-08T14:37:12-03", "2025-11-08T14:37:12.1234567Z", " 2025-11-08T14:37:12Z ",
                  "2025-1-8T4:7:2Z", "2025-11-08T14:37:12 UTC", "2025-13-01", "2025-02-30", "20251108",
                  "2025-11-08T24:00:00Z", "half past ten", "2025-02-29T10:00:00Z", "2024-02-29T23:59:59.999999Z",
                  "2025-11-08T14:60:00Z", "2025-11-08T14:37:60Z"],
}  # fmt: skip
TEXTS_IN_JSON = ['q"uote', "back\\slash", "new\nline", "ctl\x01", "tab\t", "é ü", "😀", "sl/ash", "\u2028", "\x7f"]


def test_both_dialects_read_text_into_the_same_typed_values_and_json():
    from pyspark.sql import functions as F

    from spark_jobs.session import spark_session

    spark = spark_session("dialects")
    db = duckdb.connect(config=NO_DOWNLOADS)
    db.execute("set TimeZone = 'UTC'")
    for kind, texts in EDGE_TEXTS.items():
        field = Field(name="v", type=kind)
        frame = spark.createDataFrame([(text,) for text in texts], "v string").select(F.struct("v").alias("record"))
        in_spark = [row[0] for row in frame.select(F.expr(typed_sql(field, SPARK))).collect()]
        if kind == "timestamp":  # Spark hands back naive times in the session zone, UTC
            in_spark = [moment and moment.replace(tzinfo=UTC) for moment in in_spark]
        typed = f"select {typed_sql(field, DUCKDB)} from (select ?::varchar as v)"
        in_duckdb = [db.execute(typed, [text]).fetchone()[0] for text in texts]
        assert dict(zip(texts, in_duckdb, strict=True)) == dict(zip(texts, in_spark, strict=True)), kind
        assert any(value is None for value in in_spark) and any(value is not None for value in in_spark)

    keys = FileType("t", "t", (Field(name="a"), Field(name="b", aliases=("b:",))), None)
    frame = spark.createDataFrame(
        [(text, None, text, None) for text in TEXTS_IN_JSON],
        "a string, b string, `b:` string, _elt_not_an_object string",
    ).select(F.struct("a", "b", "`b:`", "_elt_not_an_object").alias("record"))
    in_spark = [row[0] for row in frame.select(F.expr(raw_record_sql(keys, SPARK))).collect()]
    in_duckdb = [
        db.execute(
            f"select {raw_record_sql(keys, DUCKDB)} from (select ?::varchar as a, null::varchar as b, "
            '?::varchar as "b:", null::varchar as _elt_not_an_object, true as _elt_record)',
            [text, text],
        ).fetchone()[0]
        for text in TEXTS_IN_JSON
    ]
    assert in_duckdb == in_spark
    assert [json.loads(raw)["a"] for raw in in_spark] == TEXTS_IN_JSON


@pytest.mark.parametrize(
    ("setting", "waiting", "cluster", "engine"),
    [
        ("auto", 1, False, "duckdb"),
        ("auto", DEFAULT_LAKE_SMALL_BATCH_BYTES - 1, False, "duckdb"),
        ("auto", DEFAULT_LAKE_SMALL_BATCH_BYTES, False, "spark"),
        ("auto", 1, True, "spark"),
        ("spark", 1, False, "spark"),
        ("duckdb", DEFAULT_LAKE_SMALL_BATCH_BYTES * 10, True, "duckdb"),
    ],
)
def test_the_engine_is_duckdb_for_small_batches_and_spark_for_bulk_or_a_cluster(setting, waiting, cluster, engine):
    assert choose_engine(setting, waiting, DEFAULT_LAKE_SMALL_BATCH_BYTES, cluster) == engine


@pytest.mark.parametrize(
    ("environment", "configured"),
    [
        ({}, False),
        ({"SPARK_MASTER": "local[2]"}, False),
        ({"SPARK_MASTER": "spark://host:7077"}, True),
        ({"SPARK_MASTER": "k8s://https://api:6443"}, True),
        ({"SPARK_MASTER": "local-cluster[2,1,1024]"}, True),
        ({"PYSPARK_GATEWAY_PORT": "40000"}, True),  # started by spark-submit
    ],
)
def test_a_cluster_or_spark_submit_counts_as_spark_configured(monkeypatch, environment, configured):
    from spark_jobs.vehicle_lake import spark_configured

    for name in ("SPARK_MASTER", "PYSPARK_GATEWAY_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert spark_configured() is configured


@pytest.mark.parametrize(
    ("master", "memory"),
    [
        ("local", "2g"),
        ("local[1]", "2g"),
        ("local[4]", "4g"),
        ("local[6,2]", "6g"),
        ("local[ 3 , 2 ]", "3g"),
        ("local-cluster[2,1,1024]", "2g"),  # executors of their own
        ("spark://host:7077", "2g"),
    ],
)
def test_the_default_driver_heap_is_a_gigabyte_per_local_task_slot_and_at_least_two(master, memory):
    from spark_jobs.session import default_driver_memory

    assert default_driver_memory(master) == memory
    assert default_driver_memory(master, [2_500_000] * 400) == memory  # the bench's hourly files


MIB = 1 << 20


@pytest.mark.parametrize(
    ("master", "file_sizes", "memory"),
    [
        # 512 MiB of the driver's own + 16 × the files held at once, one per task slot
        ("local[2]", [64 * MIB, 64 * MIB, MIB], f"{512 + 16 * 128}m"),
        ("local[2]", [MIB, 128 * MIB, 3 * MIB, 128 * MIB], f"{512 + 16 * 256}m"),
        ("local[1]", [MIB, 100 * MIB, 90 * MIB], f"{512 + 16 * 100}m"),
        ("local[4]", [64 * MIB] * 4, f"{512 + 16 * 256}m"),
        ("local[4]", [64 * MIB] * 3, "4g"),  # 3,584 MiB needed: the slots' 4 GB hold it
        ("local[2]", [96 * MIB], "2g"),  # one file: 2,048 MiB
        ("spark://host:7077", [128 * MIB] * 2, "2g"),  # the executors hold the files
    ],
)
def test_the_default_driver_heap_holds_the_batch_s_largest_files_one_per_task_slot(master, file_sizes, memory):
    from spark_jobs.session import default_driver_memory

    assert default_driver_memory(master, file_sizes) == memory


@pytest.mark.parametrize(("affinity", "quota", "slots"), [(8, None, 8), (8, 1.5, 2), (8, 0.2, 1), (2, 4.0, 2)])
def test_local_star_runs_a_task_per_cpu_the_jvm_sees(monkeypatch, affinity, quota, slots):
    from spark_jobs import session

    monkeypatch.setattr(session.os, "sched_getaffinity", lambda pid: set(range(affinity)))
    monkeypatch.setattr(session, "cgroup_cpu_quota", lambda: quota)
    assert session.task_slots("local[*]") == session.task_slots("local[*,3]") == slots
    assert session.default_driver_memory("local[*]") == f"{max(2, slots)}g"


@pytest.mark.parametrize(
    ("files", "quota"),
    [
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
)
def test_a_container_s_cpu_limit_is_read_from_cgroup_v2_or_v1(tmp_path, files, quota):
    from spark_jobs.session import cgroup_cpu_quota

    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_cpu_quota(tmp_path) == quota


def test_the_small_batch_threshold_is_set_in_bytes(monkeypatch):
    from core.settings import lake_small_batch_bytes

    monkeypatch.delenv("LAKE_SMALL_BATCH_BYTES", raising=False)
    assert lake_small_batch_bytes() == DEFAULT_LAKE_SMALL_BATCH_BYTES
    monkeypatch.setenv("LAKE_SMALL_BATCH_BYTES", "1048576")
    assert lake_small_batch_bytes() == 1 << 20
    monkeypatch.setenv("LAKE_SMALL_BATCH_BYTES", "64MB")
    with pytest.raises(ValueError, match="LAKE_SMALL_BATCH_BYTES='64MB' is not a number of bytes"):
        lake_small_batch_bytes()


def test_an_unknown_lake_engine_is_refused(monkeypatch):
    from core.settings import lake_engine

    monkeypatch.setenv("LAKE_ENGINE", "flink")
    with pytest.raises(ValueError, match="LAKE_ENGINE='flink' is not one of auto, spark, duckdb"):
        lake_engine()
    monkeypatch.delenv("LAKE_ENGINE")
    assert lake_engine() == "auto" and os.environ.get("LAKE_ENGINE") is None


def _run(waiting_bytes: int, duckdb_s: float, spark_s: float) -> dict:
    return {"waiting_bytes": waiting_bytes, "duckdb": {"wall_s": duckdb_s}, "spark": {"wall_s": spark_s}}


def test_the_crossover_is_where_spark_starts_to_win():
    from bench.run import crossover_bytes

    assert crossover_bytes([_run(100, 1, 11), _run(300, 5, 13), _run(500, 18, 10)]) == 400  # between sizes
    assert crossover_bytes([_run(100, 1, 11), _run(200, 2, 11)]) == 1100  # past the largest, on the two lines
    assert crossover_bytes([_run(100, 1, 11), _run(200, 6, 12)]) == 350
    assert crossover_bytes([_run(100, 1, 11), _run(200, 1, 13)]) is None  # DuckDB gains with size
    assert crossover_bytes([_run(100, 12, 11), _run(200, 20, 12)]) == 100  # Spark wins everywhere measured


def test_without_a_crossover_the_threshold_is_the_largest_batch_measured():
    from bench.run import small_batch_threshold

    assert small_batch_threshold([_run(100, 1, 11), _run(300, 5, 13), _run(500, 18, 10)]) == (400, "crossover")
    threshold, basis = small_batch_threshold([_run(100, 1, 11), _run(200, 1, 13)])
    assert threshold == 200 and basis.startswith("no crossover")
