"""The lake → warehouse load imports the lake's Parquet files into dlt: a file holding rows on both
sides of the cursor (as compaction leaves) loads only its new rows, and files written before a
field was added load with NULL in it. Expectations come from the Iceberg tables themselves."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from dlt.common.storages.load_package import ParsedLoadJobFileName
from pyiceberg.types import StringType

from core import storage
from core.warehouse import connect, execute
from lake.catalog import NAMESPACE, catalog
from lake.files import discover, state_dir
from loaders.exactly_once import LEDGER
from loaders.vehicles.generate import generate
from loaders.vehicles.warehouse_load import lake_pipeline, vehicles_lake
from spark_jobs.vehicle_lake import run as run_lake_job

from .conftest import rows
from .processes import any_file, kill_when, run_loaders, start
from .vehicles_helpers import lake_rows

pytestmark = pytest.mark.integration

IDENTITY = "source_file, source_position, batch_id"


def events_table():
    return catalog().load_table(f"{NAMESPACE}.vehicle_events")


def lake_batch(seed: int, start: datetime, files: int = 3, events_per_file: int = 400) -> None:
    generate(state_dir("incoming"), files=files, events_per_file=events_per_file, seed=seed, start=start)
    discover()
    run_lake_job()


def load() -> None:
    lake_pipeline().run(vehicles_lake())


def lake_identities(table_name: str) -> Counter:
    return Counter((row["source_file"], row["source_position"], row["batch_id"]) for row in lake_rows(table_name))


def file_identities(path: Path) -> Counter:
    """(source_file, source_position, batch_id) of each row of a Parquet file."""
    return Counter(tuple(row.values()) for row in pq.read_table(path, columns=IDENTITY.split(", ")).to_pylist())


def warehouse_identities(table_name: str) -> Counter:
    return Counter(rows(f"select {IDENTITY} from raw_vehicles.{table_name}"))


def batches_per_data_file(table) -> list[int]:
    return [
        len(pc.unique(pq.read_table(storage.resolve(task.file.file_path)[1], columns=["batch_id"])["batch_id"]))
        for task in table.scan().plan_files()
    ]


@pytest.fixture
def lake_engine(monkeypatch):
    monkeypatch.setenv("LAKE_ENGINE", "duckdb")


def loaded_then_compacted_with_a_new_batch(files: int = 3, events_per_file: int = 400) -> None:
    """A batch loaded into the warehouse, a second batch committed, then compaction: every day's
    rows of both batches rewritten into new files."""
    start = datetime(2025, 11, 1, tzinfo=UTC)
    lake_batch(seed=5, start=start, files=files, events_per_file=events_per_file)
    load()
    lake_batch(seed=6, start=start + timedelta(hours=6), files=files, events_per_file=events_per_file)
    events = events_table()
    events.overwrite(events.scan().to_arrow())
    assert max(batches_per_data_file(events_table())) == 2, "no file holds rows of both batches"


def test_a_compacted_file_with_loaded_and_new_batches_loads_only_its_new_rows(data_dir, lake_engine):
    loaded_then_compacted_with_a_new_batch()

    load()

    for table_name in ("vehicle_events", "vehicle_status"):
        assert warehouse_identities(table_name) == lake_identities(table_name), table_name


# The warehouse types the staging models have always read, per Iceberg type, written out here.
WAREHOUSE_TYPES = {
    "duckdb": {"string": "VARCHAR", "long": "BIGINT", "timestamptz": "TIMESTAMP WITH TIME ZONE"},
    "postgres": {"string": "character varying", "long": "bigint", "timestamptz": "timestamp with time zone"},
}


def warehouse_column_types(table_name: str) -> dict[str, str]:
    return dict(
        rows(
            "select column_name, data_type from information_schema.columns"
            f" where table_schema = 'raw_vehicles' and table_name = '{table_name}'"
        )
    )


def with_column(table: pa.Table, name: str, values: list) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, pa.array(values))


def test_files_written_before_a_field_was_added_load_with_it_null(data_dir, lake_engine, target):
    lake_batch(seed=8, start=datetime(2025, 11, 1, tzinfo=UTC))
    events = events_table()
    with events.update_schema() as update:
        update.add_column("event_note", StringType())
    # A later batch that has the field: some of the first batch's rows again under new identities.
    events = events_table()
    later = events.scan(limit=50).to_arrow()
    later_batch = max(later["batch_id"].to_pylist()) + "-later"
    later = with_column(later, "source_file", ["later.json"] * later.num_rows)
    later = with_column(later, "batch_id", [later_batch] * later.num_rows)
    later = with_column(later, "event_note", [f"note {i}" for i in range(later.num_rows)])
    events.append(later)

    load()

    assert warehouse_identities("vehicle_events") == lake_identities("vehicle_events")
    expected = Counter((row["batch_id"], row["event_note"] is None) for row in lake_rows("vehicle_events"))
    assert expected[(later_batch, False)] == 50 and sum(expected.values()) > 50
    assert Counter(rows("select batch_id, event_note is null from raw_vehicles.vehicle_events")) == expected
    lake_types = {field.name: str(field.field_type) for field in events_table().schema().fields}
    expected_types = {name: WAREHOUSE_TYPES[target][kind] for name, kind in lake_types.items()}
    assert warehouse_column_types("vehicle_events") == expected_types


def test_sigkill_while_filtering_compacted_files_then_rerun_loads_each_row_once(data_dir, lake_engine):
    """Killed with filtered files in the scratch folder (nothing in a package yet), then with the
    package extracted: the re-run loads the new batch once and nothing of the loaded one."""
    loaded_then_compacted_with_a_new_batch(files=8, events_per_file=1500)
    extracted = data_dir / ".dlt_pipelines" / "vehicles_lake" / "normalize" / "extracted"
    for name, reached in {
        "filtering": any_file(data_dir / "lake_import", "*.parquet"),
        "extracted": any_file(extracted),
    }.items():
        load_job = start([sys.executable, "-m", "loaders", "vehicles", "load"])
        assert kill_when(load_job, reached), f"the load ended before the kill point '{name}'"
    subprocess.run([sys.executable, "-m", "loaders", "vehicles", "load"], check=True, timeout=300)

    for table_name in ("vehicle_events", "vehicle_status"):
        assert warehouse_identities(table_name) == lake_identities(table_name), table_name


def killed_between_a_commit_and_dlts_record_of_it(data_dir) -> tuple[Path, str, Counter]:
    """A load SIGKILLed right after the warehouse committed one vehicle_events job, before dlt
    wrote anything about it; checked to have died there. Returns the package, the job's id and
    the identities of its rows."""
    lake_batch(seed=7, start=datetime(2025, 11, 1, tzinfo=UTC))
    killed = subprocess.run(
        [sys.executable, "-m", "tests.warehouse_load_faults", "vehicle_events"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:] + killed.stderr[-3000:]
    job_file = killed.stdout.split()[-1]
    (package,) = (data_dir / ".dlt_pipelines" / "vehicles_lake" / "load" / "normalized").glob("*/")
    assert (package / "started_jobs" / job_file).exists()
    assert not (package / ".pending_transitions" / job_file).exists()
    job_rows = file_identities(package / "started_jobs" / job_file)
    committed = warehouse_identities("vehicle_events")
    assert job_rows and all(committed[identity] == 1 for identity in job_rows)
    return package, ParsedLoadJobFileName.parse(job_file).job_id(), job_rows


def resumed_load() -> str:
    resumed = run_loaders("vehicles", "load")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return resumed.stderr


def test_a_kill_between_the_commit_of_an_append_job_and_dlts_record_of_it_loads_nothing_twice(data_dir, lake_engine):
    """dlt writes its record of a job after the warehouse commits it, and runs a job without one
    again on the resume: the job finds its key in the ledger it committed with its rows."""
    package, job_id, _ = killed_between_a_commit_and_dlts_record_of_it(data_dir)

    log = resumed_load()

    assert f"{job_id} of load {package.name} skipped: an earlier run of it committed it" in log
    for table_name in ("vehicle_events", "vehicle_status"):
        assert warehouse_identities(table_name) == lake_identities(table_name), table_name
    assert rows(f"select count(*) from raw_vehicles.{LEDGER} where job_id = '{job_id}'") == [(1,)]


def unrecorded_rows(package: Path, table_name: str) -> Counter:
    """Identities of the rows of the package's started jobs of the table that dlt has no record of."""
    return sum(
        (
            file_identities(job_file)
            for job_file in (package / "started_jobs").glob(f"{table_name}.*")
            if not (package / ".pending_transitions" / job_file.name).exists()
        ),
        Counter(),
    )


def test_a_package_left_before_the_ledger_existed_resumes(data_dir, lake_engine):
    """A package half-loaded by an earlier version resumes without dlt's schema step: its jobs
    create the ledger they need. Without keys, its unrecorded jobs load again: the killed one's
    rows twice, and those of any other job that committed in the same moment."""
    package, job_id, committed_before = killed_between_a_commit_and_dlts_record_of_it(data_dir)
    unrecorded = {
        table_name: unrecorded_rows(package, table_name) for table_name in ("vehicle_events", "vehicle_status")
    }
    with connect(read_only=False) as connection:
        execute(connection, f"drop table raw_vehicles.{LEDGER}")

    resumed_load()

    for table_name, could_load_again in unrecorded.items():
        lake, warehouse = lake_identities(table_name), warehouse_identities(table_name)
        assert lake <= warehouse and warehouse - lake <= could_load_again, table_name
    assert committed_before <= warehouse_identities("vehicle_events") - lake_identities("vehicle_events")
    assert rows(f"select count(*) from raw_vehicles.{LEDGER} where job_id = '{job_id}'") == [(1,)]
