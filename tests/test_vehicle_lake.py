"""Vehicles end to end with real Spark, pyiceberg, DuckDB and dbt: JSON → Iceberg → warehouse."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import duckdb
import pytest
from pyiceberg.exceptions import NoSuchTableError

from lake.catalog import NAMESPACE, catalog
from lake.files import discover, state_dir
from lake.registry import Registry
from loaders.query import load_extensions
from loaders.vehicles.generate import generate
from loaders.vehicles.warehouse_load import lake_pipeline, vehicles_lake
from spark_jobs.lake_commit import committed_files
from spark_jobs.vehicle_lake import max_file_bytes
from spark_jobs.vehicle_lake import run as run_lake_job

from .conftest import rows, run_dbt
from .lake_engine_faults import KILL_POINTS as DUCKDB_KILL_POINTS
from .processes import kill_when, start
from .vehicles_helpers import (
    count_files,
    expected_daily_summary,
    good_events,
    lake_counts_per_day,
    lake_rows,
    warehouse_counts_per_day,
)

pytestmark = pytest.mark.integration


def load_lake_into_warehouse():
    return lake_pipeline().run(vehicles_lake())


def table(name: str):
    return catalog().load_table(f"{NAMESPACE}.{name}")


@pytest.fixture(scope="module")
def quirky(module_data_dir: Path) -> dict:
    """A batch full of real-world defects, discovered and processed once."""
    manifest = generate(state_dir("incoming"), files=6, events_per_file=300, seed=3, quirks=True)
    discovery = discover()
    reports = {report.file_type: report for report in run_lake_job()}
    return {"manifest": manifest, "discovery": discovery, "reports": reports, "data_dir": module_data_dir}


def test_every_good_record_lands_and_every_bad_one_is_rejected_with_its_reason(quirky):
    manifest = quirky["manifest"]
    assert len(lake_rows("vehicle_events")) == manifest.good["vehicles_events"]
    assert len(lake_rows("vehicle_status")) == manifest.good["vehicles_status"]
    for table_name, file_type in (
        ("vehicle_events_rejected", "vehicles_events"),
        ("vehicle_status_rejected", "vehicles_status"),
    ):
        rejected = lake_rows(table_name)
        # Exact reasons, as the generator states them: one record breaks each rule kind.
        assert Counter(row["reason"] for row in rejected) == Counter(manifest.rejected[file_type])
        reasons = " ".join(manifest.rejected[file_type])
        assert all(kind in reasons for kind in RULE_KINDS), [k for k in RULE_KINDS if k not in reasons]
        # A record that is not an object is rejected alone, its raw value kept; the other records of its
        # file still load (the generator puts one null and one number or array into an array of records).
        not_objects = [json.loads(row["raw_record"]) for row in rejected if row["reason"] == NOT_AN_OBJECT]
        assert sorted(type(raw).__name__ for raw in not_objects) == NON_OBJECT_KINDS[file_type], not_objects
        for row in rejected:  # the raw payload is kept
            raw = json.loads(row["raw_record"])
            if "does not match" in row["reason"]:
                assert row["reason"].startswith(f"vehicle_id does not match ^[0-9a-fA-F]+$: {raw['vehicle_id']}")
        assert all(row["source_file"].startswith(file_type) and row["source_position"] >= 0 for row in rejected)
    # The misspelled key still delivers the extra data; naive and millisecond times are parsed.
    events = lake_rows("vehicle_events")
    assert all(row["event_extra_data"] and json.loads(row["event_extra_data"])["location"] for row in events)
    assert any(row["event_time"].microsecond for row in events)


NOT_AN_OBJECT = "record is not a JSON object"
# The generator's non-object records (loaders/vehicles/generate.py rule_breakers), by their JSON
# kind: a null and a number among the events, a null and an array [vehicle_id, time] among the
# status reports.
NON_OBJECT_KINDS = {"vehicles_events": ["NoneType", "int"], "vehicles_status": ["NoneType", "list"]}


# Every kind of rule a registry field can carry (nullable, type, pattern, allowed), and a record
# that is not an object at all.
RULE_KINDS = ("is missing", "is not a timestamp: ", "does not match ", "is not one of ", "record is not a JSON object")


def test_bad_files_go_to_failed_with_a_reason_and_nothing_is_lost(quirky):
    manifest = quirky["manifest"]
    failed = {}
    for file_type in ("vehicles_events", "vehicles_status"):
        for error_file in state_dir("failed", file_type).glob("*.error.json"):
            error = json.loads(error_file.read_text())
            failed[error["file"]] = error["reason"]
            assert (error_file.parent / error["file"]).exists()
    assert failed.keys() == manifest.failed_files.keys()
    for name, reason in manifest.failed_files.items():
        assert failed[name].startswith(reason)
    processed = count_files(state_dir("processed", "vehicles_events")) + count_files(
        state_dir("processed", "vehicles_status")
    )
    assert processed + len(failed) == len(set(manifest.files))
    assert count_files(state_dir("processing", "vehicles_events")) == count_files(state_dir("incoming")) == 0


def test_the_lake_is_a_valid_iceberg_table_partitioned_by_day_with_one_snapshot_per_batch(quirky):
    events = table("vehicle_events")
    assert [field.transform.__class__.__name__ for field in events.spec().fields] == ["DayTransform"]
    assert events.schema().find_field(events.spec().fields[0].source_id).name == "event_time"
    assert len(events.metadata.snapshots) == 1
    summary = events.current_snapshot().summary
    assert summary["elt.batch-id"] == quirky["reports"]["vehicles_events"].batch_id
    assert committed_files(events) == set(quirky["reports"]["vehicles_events"].committed_files)
    # Every data file holds exactly one day: its partition value equals its rows' day.
    days_per_file = Counter()
    for task in events.scan().plan_files():
        day_number = task.file.partition[0]
        rows = duckdb.sql(
            f"select distinct cast(event_time at time zone 'UTC' as date) from '{task.file.file_path.removeprefix('file://')}'"
        ).fetchall()
        assert [(row[0] - datetime(1970, 1, 1).date()).days for row in rows] == [day_number]
        days_per_file[day_number] += 1
    assert set(days_per_file.values()) == {1}
    # DuckDB reads the same table through its iceberg extension (from the PyPI wheels).
    connection = duckdb.connect()
    load_extensions(connection)
    count = connection.sql(f"select count(*) from iceberg_scan('{events.metadata_location}')").fetchone()[0]
    assert count == len(lake_rows("vehicle_events"))


def test_lake_counts_per_day_equal_warehouse_counts_per_day(quirky):
    load_lake_into_warehouse()
    for table_name, time_column in (("vehicle_events", "event_time"), ("vehicle_status", "report_time")):
        lake = lake_counts_per_day(table_name, time_column)
        assert warehouse_counts_per_day(table_name, time_column) == lake
    rejected = rows("select count(*) from raw_vehicles.vehicle_events_rejected")[0][0]
    assert rejected == len(quirky["manifest"].rejected["vehicles_events"])
    load_lake_into_warehouse()  # nothing new committed: nothing loaded twice
    assert warehouse_counts_per_day("vehicle_events", "event_time") == lake_counts_per_day(
        "vehicle_events", "event_time"
    )


def test_rerunning_and_redelivering_a_batch_changes_nothing(quirky):
    snapshots = len(table("vehicle_events").metadata.snapshots)
    assert run_lake_job() == []  # nothing waiting: Spark is not even started
    processed = state_dir("processed", "vehicles_events")
    redelivered = sorted(processed.glob("*.json"))[:2]
    for path in redelivered:
        shutil.copyfile(path, state_dir("incoming") / path.name)
    report = discover()
    assert sorted(report.failed) == sorted(path.name for path in redelivered)
    error = json.loads((state_dir("failed", "vehicles_events") / f"{redelivered[0].name}.error.json").read_text())
    assert error["reason"] == "duplicate delivery" and "same content" in error["detail"]
    assert run_lake_job() == []
    assert len(table("vehicle_events").metadata.snapshots) == snapshots


def test_dbt_daily_summary_is_right_and_a_late_file_recomputes_only_its_days(quirky):
    data_dir = quirky["data_dir"]
    load_lake_into_warehouse()
    run_dbt("build", "--selector", "vehicles", data_dir=data_dir)
    processed = state_dir("processed", "vehicles_events")
    before, batches_before = summary(), batches()
    assert before == expected_daily_summary(good_events(processed))

    # A late file for the same fleet (seed 3) over the hour around the batch's last events: some
    # of its events are later than their vehicle-day's last event, some earlier, some vehicles
    # get none. daily_summary must recompute exactly the vehicle-days the file touches.
    late_start = max(moment for moment, _ in before.values()) - timedelta(minutes=30)
    generate(state_dir("incoming"), files=1, events_per_file=60, seed=99, fleet_seed=3, start=late_start)
    late_events = good_events(state_dir("incoming"))
    touched = {(event["vehicle_id"], event["at"].astimezone(UTC).date().isoformat()) for event in late_events}
    assert touched <= before.keys(), "the late file must hit existing vehicle-days"
    discover()
    run_lake_job()
    load_lake_into_warehouse()
    run_dbt("build", "--selector", "vehicles", data_dir=data_dir)

    after, batches_after = summary(), batches()
    assert after == expected_daily_summary(good_events(processed))  # from every input file, in Python
    changed = {key for key in after if after[key] != before[key]}
    assert changed and changed < touched, "some touched vehicle-days get a new last event, not all"
    untouched = before.keys() - touched
    assert untouched and {key: after[key] for key in untouched} == {key: before[key] for key in untouched}
    # Recomputed are exactly the touched vehicle-days: the others keep the batch they were built from.
    recomputed = {key for key in batches_after if batches_after[key] != batches_before[key]}
    assert recomputed == touched
    ((fct, distinct),) = rows("select count(*), count(distinct event_id) from marts.fct_vehicle_events")
    assert fct == distinct == len({event_identity(event) for event in good_events(processed)})


def event_identity(event: dict) -> tuple:
    extra = event.get("event_extra_data", event.get("event_extra_data:"))
    canonical = json.dumps(extra, sort_keys=True, separators=(",", ":"))
    return event["vehicle_id"], event["at"], event["event_type"], event["event_source"], event["event_value"], canonical


def summary() -> dict:
    found = rows("select vehicle_id, cast(day as varchar), last_event_time, last_event_type from marts.daily_summary")
    return {(vehicle, day): (moment.astimezone(UTC), kind) for vehicle, day, moment, kind in found}


def batches() -> dict:
    found = rows("select vehicle_id, cast(day as varchar), last_batch_id from marts.daily_summary")
    return {(vehicle, day): batch for vehicle, day, batch in found}


def test_a_new_file_type_is_processed_after_activation_with_no_code_change(data_dir):
    incoming = state_dir("incoming")
    incoming.mkdir(parents=True)
    trip = {"vehicle_id": "ab12cd", "trip_start": "2025-11-08T08:00:00Z", "passengers": 1, "shared": False}
    trips = [
        {**trip, "distance_km": 12.5, "route": {"stops": 3}},
        {**trip, "trip_start": "2025-11-09T09:30:00Z", "distance_km": 4.0, "route": {"stops": 1}, "shared": True},
        {**trip, "vehicle_id": "ef34ab", "trip_start": "2025-11-09T10:00:00Z", "distance_km": 30.25, "route": None},
    ]
    # The typed rules of the inferred fields (double, long, boolean), each broken by one record.
    type_breakers = [
        ({**trips[0], "distance_km": "far"}, "distance_km is not a double: far"),
        ({**trips[0], "passengers": "two"}, "passengers is not a long: two"),
        ({**trips[0], "shared": "maybe"}, "shared is not a boolean: maybe"),
    ]
    (incoming / "vehicles_trips_20251109120000.json").write_text(json.dumps({"vehicles_trips": trips}))
    (incoming / "vehicles_trips_20251109130000.json").write_text(
        json.dumps({"vehicles_trips": [record for record, _ in type_breakers]})
    )
    assert discover().registered == ["vehicles_trips"]
    assert run_lake_job() == []  # inactive: parked in pending/
    assert count_files(state_dir("pending", "vehicles_trips")) == 2
    fields = {field.name: field.type for field in Registry().get("vehicles_trips").fields}
    assert (fields["distance_km"], fields["passengers"], fields["shared"]) == ("double", "long", "boolean")

    Registry().set_status("vehicles_trips", "active")
    assert discover().processing == ["vehicles_trips_20251109120000.json", "vehicles_trips_20251109130000.json"]
    (report,) = run_lake_job()
    assert report.rows == 3 and report.rejected == 3
    assert sorted(row["reason"] for row in lake_rows("vehicles_trips_rejected")) == sorted(
        reason for _, reason in type_breakers
    )
    trips_in_lake = sorted(lake_rows("vehicles_trips"), key=lambda row: row["trip_start"])
    assert [(row["vehicle_id"], row["distance_km"]) for row in trips_in_lake] == [
        ("ab12cd", 12.5),
        ("ab12cd", 4.0),
        ("ef34ab", 30.25),
    ]
    assert json.loads(trips_in_lake[0]["route"]) == {"stops": 3}
    load_lake_into_warehouse()
    assert rows("select count(*) from raw_vehicles.vehicles_trips") == [(3,)]


LAKE_JOB = [sys.executable, "-m", "spark_jobs.vehicle_lake"]


def ledger(table_name: str) -> set[str]:
    """The files a table has committed; none before the job has created it."""
    try:
        return committed_files(table(table_name))
    except NoSuchTableError:
        return set()


def jvm_in_group(group: int) -> bool:
    """A java process in the job's process group: the driver has launched Spark's JVM."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)
            name, after_name = fields[0].split("(", 1)[1], fields[1].split()
        except (OSError, IndexError):
            continue  # the process ended mid-read
        if name == "java" and int(after_name[2]) == group:
            return True
    return False


# One target: the kills fall before any catalog commit, and the lake job never opens the warehouse.
@pytest.mark.one_target
@pytest.mark.parametrize("engine", ["spark", "duckdb"])
def test_sigkill_during_the_lake_job_then_rerun_ends_with_exact_counts(data_dir, engine, monkeypatch):
    """Runs SIGKILLed at one point each (README: Spark at JVM start, Parquet write, before the
    commit; DuckDB after its good rows' Parquet, before the commit); each point must be reached,
    and the state the kill leaves is checked as it is. Then a run to the end: exact counts."""
    monkeypatch.setenv("LAKE_ENGINE", engine)
    manifest = generate(state_dir("incoming"), files=8, events_per_file=1500, seed=21, quirks=True)
    discover()
    waiting = {path.name for path in state_dir("processing", "vehicles_events").glob("*.json")}
    lake_folder = data_dir / "lake" / NAMESPACE

    def batch_folders(table_name: str = "vehicle_events") -> set[Path]:
        return set((lake_folder / table_name / "data").glob("batch_id=*"))

    def parquet_in(folders: set[Path], pattern: str) -> list[Path]:
        return [path for folder in folders for path in folder.glob(pattern)]

    def nothing_committed_and_every_file_waiting(name: str, except_refused: bool = False) -> None:
        """Nothing in the ledgers; every file still in processing/, but for the files refused
        whole (not JSON, no records key) once the engine has read them: they are in failed/."""
        assert not ledger("vehicle_events") and not ledger("vehicle_events_rejected"), name
        refused = {file for file in manifest.failed_files if file in waiting} if except_refused else set()
        still_waiting = {path.name for path in state_dir("processing", "vehicles_events").glob("*.json")}
        assert refused and still_waiting == waiting - refused if except_refused else still_waiting == waiting, name

    if engine == "spark":
        # kill point -> (reached, given the job and the batch folders that existed before it started)
        kill_points = {
            "JVM starting": lambda job, old: jvm_in_group(job.pid) and not batch_folders() - old,
            "Parquet being written": lambda job, old: parquet_in(batch_folders() - old, "_temporary/**/*.parquet"),
            "Parquet written, not yet committed": lambda job, old: any(
                (folder / "_SUCCESS").exists() for folder in batch_folders() - old
            ),
        }
        for name, reached in kill_points.items():
            old = batch_folders()
            job = start(LAKE_JOB)
            assert kill_when(job, partial(reached, job, old)), f"the lake job ended before '{name}'"
            assert job.returncode == -signal.SIGKILL, (name, job.returncode)
            new = batch_folders() - old
            nothing_committed_and_every_file_waiting(name)
            written = parquet_in(new, "day=*/*.parquet")
            if name == "JVM starting":
                assert not new, name
            elif name == "Parquet being written":
                assert len(new) == 1 and not written and not parquet_in(new, "_SUCCESS"), name
            else:
                assert len(new) == 1 and written, "no Parquet written at the kill point"
                assert table("vehicle_events").current_snapshot() is None, "Parquet committed before the kill"
    else:
        # DuckDB writes a batch in milliseconds: the job kills itself at each point (tests/lake_engine_faults.py).
        for name in DUCKDB_KILL_POINTS:
            old, old_rejected = batch_folders(), batch_folders("vehicle_events_rejected")
            job = start([sys.executable, "-m", "tests.lake_engine_faults", name])
            assert job.wait(timeout=300) == -signal.SIGKILL, (name, job.returncode)
            new, new_rejected = batch_folders() - old, batch_folders("vehicle_events_rejected") - old_rejected
            all_written = name == "Parquet written, not yet committed"
            nothing_committed_and_every_file_waiting(name, except_refused=all_written)
            assert len(new) == 1 and parquet_in(new, "day=*/*.parquet"), f"{name}: no good rows' Parquet"
            assert bool(parquet_in(new_rejected, "*.parquet")) == all_written, name
            assert table("vehicle_events").current_snapshot() is None, "Parquet committed before the kill"
    assert start(LAKE_JOB).wait(timeout=300) == 0

    assert len(lake_rows("vehicle_events")) == manifest.good["vehicles_events"]
    assert len(lake_rows("vehicle_status")) == manifest.good["vehicles_status"]
    assert len(lake_rows("vehicle_events_rejected")) == len(manifest.rejected["vehicles_events"])
    positions = [(row["source_file"], row["source_position"]) for row in lake_rows("vehicle_events")]
    assert len(positions) == len(set(positions))  # no record committed twice
    accounted = sum(
        count_files(state_dir(s, t)) for s in ("processed", "failed") for t in ("vehicles_events", "vehicles_status")
    )
    assert accounted == len(set(manifest.files))
    assert (
        count_files(state_dir("processing", "vehicles_events"))
        == count_files(state_dir("processing", "vehicles_status"))
        == 0
    )


# One target: the lake job's memory, not the warehouse's.
@pytest.mark.one_target
def test_files_at_a_raised_size_limit_in_every_task_slot_fit_the_default_driver_heap(data_dir, tmp_path, monkeypatch):
    """A registry that raises max_file_bytes to 128 MiB, and a file just under it in each of
    local[2]'s task slots at once: the default heap is sized by the batch's largest files (a
    fixed 2 GB ran out of heap on this)."""
    from lake import registry

    raised = 128 << 20
    seed = [
        dataclasses.replace(t, processing={**t.processing, "max_file_bytes": raised})
        if t.file_type == "vehicles_events"
        else t
        for t in registry.seed_file_types()
    ]
    monkeypatch.setattr(registry, "seed_file_types", lambda: seed)  # as if file_types.yml said so
    per_file = generate(tmp_path, files=1, events_per_file=524_000, seed=5).good["vehicles_events"]
    [events_file] = tmp_path.glob("vehicles_events_*.json")
    state_dir("incoming").mkdir(parents=True, exist_ok=True)
    for hour in range(2):
        os.link(events_file, state_dir("incoming") / f"vehicles_events_2025110{hour + 1}000000.json")
    discover()
    assert max_file_bytes(Registry().get("vehicles_events")) == raised
    assert 0.95 * raised < events_file.stat().st_size <= raised
    monkeypatch.setenv("SPARK_MASTER", "local[2]")
    monkeypatch.setenv("LAKE_ENGINE", "spark")
    monkeypatch.delenv("SPARK_DRIVER_MEMORY", raising=False)
    job = subprocess.run(LAKE_JOB, capture_output=True, text=True, timeout=600)
    assert job.returncode == 0, job.stderr[-3000:]
    assert "OutOfMemoryError" not in job.stderr
    assert table("vehicle_events").scan().to_arrow().num_rows == 2 * per_file


def test_maintenance_expires_old_snapshots_and_removes_only_orphans(quirky):
    from orchestration.maintenance import delete_old_landing_files, expire_snapshots, remove_orphan_files

    events = table("vehicle_events")
    row_count = len(lake_rows("vehicle_events"))
    assert len(events.metadata.snapshots) >= 2  # the first batch and the late file
    referenced = next(iter(events.scan().plan_files())).file.file_path.removeprefix("file://")
    data = Path(events.location().removeprefix("file://")) / "data"
    two_days_ago = time.time() - 2 * 86400
    orphan = data / "batch_id=killed-before-commit" / "day=2025-11-01" / "part-0.parquet"
    running = data / "batch_id=still-running" / "day=2025-11-01" / "part-0.parquet"
    for path in (orphan, running):
        path.parent.mkdir(parents=True)
        shutil.copyfile(referenced, path)
    os.utime(orphan, (two_days_ago, two_days_ago))
    os.utime(referenced, (two_days_ago, two_days_ago))

    assert remove_orphan_files(events, min_age_hours=24) == [str(orphan)]
    assert running.exists() and Path(referenced).exists()
    snapshots = len(events.metadata.snapshots)
    assert expire_snapshots(events, older_than_days=0, keep_last=1) == snapshots - 1
    assert len(table("vehicle_events").metadata.snapshots) == 1
    assert len(lake_rows("vehicle_events")) == row_count

    landing = quirky["data_dir"] / "landing" / "vehicles"
    landing.mkdir(parents=True, exist_ok=True)
    (old := landing / "old.json").write_text("{}")
    (new := landing / "new.json").write_text("{}")
    os.utime(old, (two_days_ago - 40 * 86400, two_days_ago - 40 * 86400))
    assert delete_old_landing_files(30) == [str(old)] and new.exists()
