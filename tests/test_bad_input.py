"""The bad-input catalogue for vehicle files: each case ends with a clear reason and loses nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lake.files import UNRECOGNISED, discover, state_dir
from lake.registry import Registry
from loaders.vehicles.generate import generate

from .conftest import lay_out_as_site, real_csv_files, rows

pytestmark = pytest.mark.integration
HUGE = 200 * 2**20
HOSTILE_NAMES = [
    "vehicles events_20251101000000.json",  # a space in the type part
    "x'; drop table meta.file_types; --_20251101000000.json",  # SQL in the type part
    "..vehicles_events_20251101000000.json",  # dots: not an identifier
    "Vehicles_Events_20251101000000.json",  # upper case
    "vehicles_events_2025110100000.json",  # a 13-digit stamp
    "vehicles_events_20251101000000.json.gz",
]


def error_of(file_type: str, name: str) -> dict:
    return json.loads((state_dir("failed", file_type) / f"{name}.error.json").read_text())


def test_hostile_file_names_go_to_failed_with_the_reason_and_reach_no_sql(data_dir):
    incoming = state_dir("incoming")
    incoming.mkdir(parents=True)
    for name in HOSTILE_NAMES:
        (incoming / name).write_text('{"vehicles_events": []}')
    report = discover()
    assert sorted(report.failed) == sorted(HOSTILE_NAMES) and not report.registered
    for name in HOSTILE_NAMES:
        error = error_of(UNRECOGNISED, name)
        assert error["reason"] == "unrecognised file name" and name in error["detail"]
    parked = [p.name for p in state_dir("failed", UNRECOGNISED).iterdir() if not p.name.endswith(".error.json")]
    assert sorted(parked) == sorted(HOSTILE_NAMES)
    assert sorted(item.file_type for item in Registry().list()) == ["vehicles_events", "vehicles_status"]


def test_a_new_type_nested_too_deeply_to_infer_fails_clearly(data_dir):
    incoming = state_dir("incoming")
    incoming.mkdir(parents=True)
    name = "vehicles_deep_20251101000000.json"
    depth = 100_000
    (incoming / name).write_text('{"vehicles_deep": [{"vehicle_id": "ab", "x": ' + "[" * depth + "]" * depth + "}]}")
    report = discover()
    assert report.failed == [name]
    error = error_of("vehicles_deep", name)
    assert error["reason"] == "cannot infer a schema for a new file type"
    assert "nested too deeply" in error["detail"]
    assert Registry().find("vehicles_deep") is None


def write_single_line(path: Path, size: int, head: bytes = b"", tail: bytes = b"") -> Path:
    """A file of `size` bytes with no newline, written in chunks (never whole in memory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    chunk = b"x" * (1 << 20)
    with open(path, "wb") as handle:
        handle.write(head)
        remaining = size - len(head) - len(tail)
        while remaining > 0:
            handle.write(chunk[: min(remaining, len(chunk))])
            remaining -= len(chunk)
        handle.write(tail)
    return path


# Runs the loader CLI and prints its own peak RSS (KiB) last on stderr.
MEASURED_CLI = (
    "import resource, runpy, sys\n"
    "sys.argv = ['loaders', *sys.argv[1:]]\n"
    "try:\n"
    "    runpy.run_module('loaders', run_name='__main__')\n"
    "finally:\n"
    "    print(f'peak_rss_kib={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}', file=sys.stderr)\n"
)


def measured_csv_load(site: Path, divisions: str) -> tuple[subprocess.CompletedProcess, int]:
    """The football-csv CLI, and its own peak RSS in bytes."""
    result = subprocess.run(
        [sys.executable, "-c", MEASURED_CLI, "football-csv", "--base-url", str(site), "--seasons", "2425"]
        + ["--divisions", divisions],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=300,
    )
    return result, int(result.stderr.rsplit("peak_rss_kib=", 1)[1].split()[0]) * 1024


def test_a_200_mb_single_line_csv_fails_alone_without_being_read(data_dir, tmp_path):
    site = lay_out_as_site([p for p in real_csv_files() if p.name == "2425_E0.csv"], tmp_path / "site")
    _, baseline = measured_csv_load(site, "E0")  # the same load without the huge file
    write_single_line(site / "2425" / "E1.csv", HUGE)
    result, peak = measured_csv_load(site, "E0,E1")
    assert result.returncode == 1, result.stderr[-2000:]
    assert "0 loaded, 1 unchanged, 0 not found, 1 failed" in result.stdout
    assert "larger than 32 MiB" in result.stderr
    assert rows("select count(*) from raw_football.matches") == [(261,)]  # E0 2024/25 alone
    assert peak < baseline + HUGE / 4  # the file was never in memory


@pytest.mark.one_target
def test_a_200_mb_single_line_vehicle_file_fails_before_spark_reads_it(data_dir):
    from spark_jobs.vehicle_lake import run as run_lake_job

    incoming = state_dir("incoming")
    generate(incoming, files=1, events_per_file=100, seed=5)
    huge = "vehicles_events_20251201000000.json"
    write_single_line(incoming / huge, HUGE, head=b'{"vehicles_events": [{"vehicle_id": "', tail=b'"}]}')
    discover()
    reports = {report.file_type: report for report in run_lake_job()}
    assert reports["vehicles_events"].failed_files == {huge: f"file larger than max_file_bytes={64 << 20}"}
    assert error_of("vehicles_events", huge)["reason"] == f"file larger than max_file_bytes={64 << 20}"
    assert len(reports["vehicles_events"].committed_files) == 1  # the good file of the batch still loads


def measured_discover() -> tuple[subprocess.CompletedProcess, int]:
    """`loaders vehicles discover`, and its own peak RSS in bytes."""
    result = subprocess.run(
        [sys.executable, "-c", MEASURED_CLI, "vehicles", "discover"],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result, int(result.stderr.rsplit("peak_rss_kib=", 1)[1].split()[0]) * 1024


@pytest.mark.one_target  # discovery never opens the warehouse
def test_a_200_mb_single_line_file_of_a_new_type_is_refused_before_its_schema_is_inferred(data_dir):
    incoming = state_dir("incoming")
    small = "vehicles_trips_20251201010000.json"  # sorted after the huge one: discovered second
    write_single_line(incoming / "vehicles_notes_20251201000000.json", 200, b'[{"vehicle_id": "', b'"}]')
    _, baseline = measured_discover()  # a new type from a small file: inferred and registered
    assert Registry().find("vehicles_notes") is not None
    huge = "vehicles_trips_20251201000000.json"
    write_single_line(incoming / huge, HUGE, head=b'{"vehicles_trips": [{"vehicle_id": "', tail=b'"}]}')
    write_single_line(incoming / small, 200, b'[{"vehicle_id": "', b'"}]')
    _, peak = measured_discover()
    assert peak < baseline + HUGE / 4, (peak, baseline)  # the file was never in memory
    error = error_of("vehicles_trips", huge)
    assert error["reason"] == "cannot infer a schema for a new file type"
    assert error["detail"] == f"{huge} is {HUGE} bytes, larger than max_file_bytes={64 << 20}; not read"
    # The type is registered from its next small file; the huge one stays in failed/ with its reason.
    assert Registry().find("vehicles_trips") is not None
    assert [p.name for p in state_dir("pending", "vehicles_trips").iterdir()] == [small]
