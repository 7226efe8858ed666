"""`python -m loaders status` as a user reads it, on both warehouse targets."""

from __future__ import annotations

import pytest

from lake.files import SAMPLE_DIR, discover, stage_sample

from .conftest import SAMPLE_CSV, run_dbt, sample_matches
from .processes import run_loaders

pytestmark = pytest.mark.integration


def status() -> str:
    result = run_loaders("status", timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def line_for(output: str, first_cell: str) -> list[str]:
    return next(line.split() for line in output.splitlines() if line.split()[:1] == [first_cell])


def test_status_before_anything_is_loaded(data_dir):
    output = status()
    assert "Mode: none yet" in output
    assert "Nothing loaded yet" in output
    assert "No vehicle files" in output
    assert "Source freshness: not checked yet" in output


def test_status_shows_rows_last_loads_files_per_state_and_freshness(data_dir):
    loaded = run_loaders("football-csv")
    assert loaded.returncode == 0, loaded.stderr
    stage_sample()
    discover()
    run_dbt("source", "freshness", "--select", "source:football_data", data_dir=data_dir)

    output = status()
    assert f"Mode: sample (remembered in {data_dir / '.elt-mode'})" in output  # a fresh dir's default
    matches = line_for(output, "raw_football.matches")
    assert matches[1] == f"{sample_matches():,}"  # the five bundled 2024/25 files
    assert len(matches) == 4  # table, rows, and a last-load date and time
    assert line_for(output, "raw_football.source_files")[1] == str(len(list(SAMPLE_CSV.glob("*.csv"))))
    for file_type in ("vehicles_events", "vehicles_status"):  # all in processing/, waiting for the lake job
        staged = str(len(list(SAMPLE_DIR.glob(f"{file_type}_*.json"))))
        assert line_for(output, file_type) == [file_type, "0", "0", staged, "0", "0"]
    assert "Rejected records: none" in output
    assert line_for(output, "football_data.matches")[1] == "pass"
