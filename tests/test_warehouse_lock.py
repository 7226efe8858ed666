"""DuckDB has one writer (DESIGN §9): who waits for the warehouse file's lock, who never needs it.

Another process holding the file is real: a subprocess with `duckdb.connect(path)` open, as a
`make query` session, a BI tool or `duckdb -readonly` would.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import duckdb
import pytest

from core.settings import PROJECT_ROOT, warehouse_path
from core.warehouse import held_for_writing, lock_timeout
from lake.files import discover, state_dir
from loaders.vehicles.generate import START, generate
from spark_jobs.vehicle_lake import run as run_lake_job

from .conftest import rows, sample_matches, tables_in
from .test_entry_points import MAKES_OWN_LINE
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


def loader(*args: str, lock_timeout: float) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "loaders", *args],
        env={**os.environ, "ELT_LOCK_TIMEOUT": str(lock_timeout)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_line(stream, text: str) -> str:
    """The first line of a process's output containing `text` ('' if the output ended first)."""
    for line in stream:
        if text in line:
            return line
    return ""


def test_a_load_waits_while_a_reader_holds_the_warehouse_and_completes_once_it_closes(data_dir):
    duckdb.connect(str(warehouse_path())).close()
    with warehouse_held_by_another_process(warehouse_path(), read_only=True) as reader:
        load = loader("football-csv", lock_timeout=120)
        waiting = wait_for_line(load.stderr, "waiting for the warehouse")
        assert f"PID {reader.pid} (" in waiting, waiting
        time.sleep(1)
        assert load.poll() is None and reader.poll() is None  # still waiting, the reader still there
    stdout, stderr = load.communicate(timeout=300)
    assert load.returncode == 0, stderr[-3000:]
    assert rows("select count(*) from raw_football.matches") == [(sample_matches(),)]


def test_a_load_fails_with_one_line_naming_the_holder_when_the_lock_is_never_released(data_dir):
    with warehouse_held_by_another_process(warehouse_path()) as holder:
        load = loader("football-csv", lock_timeout=3)
        stdout, stderr = load.communicate(timeout=120)
        assert holder.poll() is None and is_locked_by_another_process(warehouse_path())  # held throughout
    assert load.returncode == 2
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: the warehouse {warehouse_path()} is locked by PID {holder.pid} ("), last
    assert last.endswith("gave up after 3s (ELT_LOCK_TIMEOUT)"), last
    assert not tables_in("raw_football")


def test_make_build_waits_for_the_lock_then_fails_with_one_line(data_dir):
    load_sample_division("E0")
    env = {name: value for name, value in os.environ.items() if name != "PREFECT_HOME"}
    with warehouse_held_by_another_process(warehouse_path(), read_only=True) as holder:
        build = subprocess.run(
            ["make", "--no-print-directory", "build"],
            env={**env, "ELT_DATA_DIR": str(data_dir), "ELT_LOCK_TIMEOUT": "2"},
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert holder.poll() is None  # held throughout
    assert build.returncode != 0 and "Traceback" not in build.stderr
    assert f"waiting for the warehouse {warehouse_path()}: PID {holder.pid} (" in build.stderr  # while it waits
    last = [line for line in build.stderr.splitlines() if not MAKES_OWN_LINE.match(line)][-1]
    assert last.startswith(f"error: the warehouse {warehouse_path()} is locked by PID {holder.pid} ("), last
    assert last.endswith("gave up after 2s (ELT_LOCK_TIMEOUT)"), last
    assert not tables_in("marts")


def load_sample_division(division: str) -> None:
    from loaders.football_csv import football_csv
    from loaders.modes import source_options
    from loaders.pipelines import pipeline

    pipeline("football_csv", "raw_football").run(
        football_csv(**source_options("football_csv", "sample", divisions=[division]))
    )


def test_readers_hold_the_warehouse_only_while_a_statement_runs(data_dir):
    load_sample_division("E0")
    session = subprocess.Popen(  # make query
        [sys.executable, "-m", "loaders.query"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        count = "select 'matches=' || count(*) as answer from raw_football.matches;\n"
        session.stdin.write(count)
        session.stdin.flush()
        assert f"matches={sample_matches('E0')}" in wait_for_line(session.stdout, "matches=")
        with warehouse_held_by_another_process(warehouse_path(), read_only=True):  # e.g. a BI tool
            status = subprocess.run(
                [sys.executable, "-m", "loaders", "status"],
                env={**os.environ, "ELT_LOCK_TIMEOUT": "0"},
                capture_output=True,
                text=True,
                timeout=120,
            )
        assert status.returncode == 0, status.stderr
        matches = next(line.split() for line in status.stdout.splitlines() if line.startswith("raw_football.matches "))
        assert matches[1] == f"{sample_matches('E0'):,}"
        # The session is idle at its prompt: a writer in another process gets the lock at once.
        load = loader("football-csv", lock_timeout=0)
        stdout, stderr = load.communicate(timeout=300)
        assert load.returncode == 0 and "waiting for the warehouse" not in stderr, stderr[-3000:]
        session.stdin.write(count)
        session.stdin.flush()
        expected = sample_matches()
        assert f"matches={expected}" in wait_for_line(session.stdout, "matches=")
        assert session.poll() is None  # the same session, still open
    finally:
        session.stdin.close()
        session.wait(timeout=30)


def another_process_can_open(path: Path) -> bool:
    probe = subprocess.run(
        [sys.executable, "-c", "import duckdb, sys; duckdb.connect(sys.argv[1]).close()", str(path)],
        capture_output=True,
        timeout=60,
    )
    return probe.returncode == 0


def test_a_flow_process_lets_go_of_the_warehouse_when_its_dbt_step_ends(data_dir, prefect_api):
    from orchestration import dbt_gate

    with held_for_writing():  # as in a flow's warehouse turn
        assert dbt_gate.invoke(["seed"]).success
        assert not another_process_can_open(warehouse_path())
    assert another_process_can_open(warehouse_path())  # dbt-duckdb did not keep it open


@pytest.mark.parametrize("value", ["-1", "nan", "soon"])
def test_a_lock_timeout_that_is_not_a_number_of_seconds_is_refused_by_name(monkeypatch, value):
    monkeypatch.setenv("ELT_LOCK_TIMEOUT", value)
    with pytest.raises(ValueError, match=f"^ELT_LOCK_TIMEOUT='{value}' is not a number of seconds$"):
        lock_timeout()


@pytest.mark.parametrize(("value", "seconds"), [("0", 0.0), ("2.5", 2.5), ("inf", float("inf"))])
def test_a_lock_timeout_is_read_in_seconds(monkeypatch, value, seconds):
    monkeypatch.setenv("ELT_LOCK_TIMEOUT", value)
    assert lock_timeout() == seconds
