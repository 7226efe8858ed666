"""DuckDB has one writer (DESIGN §9): who waits for the warehouse file's lock, who never needs it.

Another process holding the file is real: a subprocess with `duckdb.connect(path)` open, as a
`make query` session, a BI tool or `duckdb -readonly` would.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import duckdb
import pytest

from loaders.settings import warehouse_path
from loaders.vehicles.files import discover, state_dir
from loaders.vehicles.generate import START, generate
from spark_jobs.vehicle_lake import run as run_lake_job

from .vehicles_helpers import lake_rows

pytestmark = [pytest.mark.integration, pytest.mark.one_target]

HOLDER = (
    "import duckdb, sys\n"
    "connection = duckdb.connect(sys.argv[1], read_only=sys.argv[2] == 'read_only')\n"
    "print('held', flush=True)\n"
    "sys.stdin.read()\n"  # until the test closes our stdin
)


@contextlib.contextmanager
def warehouse_held_by_another_process(path: Path, read_only: bool = False) -> Iterator[subprocess.Popen]:
    """A process holding the DuckDB file (and so its lock) until the block ends."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path), "read_only" if read_only else "read_write"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


def is_locked_by_another_process(path: Path) -> bool:
    """Whether opening the file here fails on its lock (the probe closes what it opened)."""
    try:
        duckdb.connect(str(path), read_only=True).close()
    except duckdb.IOException as error:
        assert "Conflicting lock" in str(error), error
        return True
    return False


def test_discovery_and_the_lake_job_never_open_the_warehouse(data_dir):
    first = generate(state_dir("incoming"), files=1, events_per_file=40, seed=21)
    discover()
    run_lake_job()
    assert not warehouse_path().exists()  # not created, so never opened

    with warehouse_held_by_another_process(warehouse_path()) as holder:
        second = generate(state_dir("incoming"), files=1, events_per_file=30, seed=22, start=START + timedelta(days=1))
        discovery = discover()
        reports = {report.file_type: report for report in run_lake_job()}
        assert is_locked_by_another_process(warehouse_path()) and holder.poll() is None
    assert discovery.processing == sorted(second.files)
    assert len(reports["vehicles_events"].committed_files) == 1
    expected = first.good["vehicles_events"] + second.good["vehicles_events"]
    assert len(lake_rows("vehicle_events")) == expected == 70
