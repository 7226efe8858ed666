"""The loader CLI as a user runs it: `python -m loaders football-csv ...`."""

from __future__ import annotations

import pytest

from .conftest import SAMPLE_API, api_counts, lay_out_as_site, matches_in, real_csv_files, rows, tables_in
from .processes import run_loaders

pytestmark = pytest.mark.integration


def test_season_range_backfill_loads_what_exists_and_reports_the_rest(data_dir, tmp_path):
    site = lay_out_as_site([p for p in real_csv_files() if p.name == "1920_E0.csv"], tmp_path / "site")
    result = run_loaders(
        "football-csv",
        "--from",
        "2019",
        "--to",
        "2020",
        "--divisions",
        "E0",
        "--base-url",
        str(site),
    )
    assert result.returncode == 0, result.stderr
    assert "1 loaded, 0 unchanged, 1 not found, 0 failed" in result.stdout
    expected = matches_in(site / "1920" / "E0.csv")
    assert expected > 0
    assert rows("select season, count(*) from raw_football.matches group by 1") == [("1920", expected)]


@pytest.mark.one_target  # an argument error, refused before anything loads, whatever the warehouse
def test_unknown_division_exits_with_the_valid_codes(data_dir):
    result = run_loaders("football-csv", "--seasons", "2425", "--divisions", "E0,PL")
    assert result.returncode == 2
    assert "unknown division code(s) PL; valid codes: E0 (Premier League)" in result.stderr
    assert not tables_in("raw_football")


def test_football_api_default_reads_the_bundled_sample_offline(data_dir):
    result = run_loaders("football-api")
    assert result.returncode == 0, result.stderr
    counts = rows(
        "select (select count(*) from raw_football_api.competitions),"
        " (select count(*) from raw_football_api.teams),"
        " (select count(*) from raw_football_api.matches)"
    )
    assert counts == [api_counts(SAMPLE_API)]
    assert list((data_dir / "landing" / "football_api").rglob("*.json"))


@pytest.mark.one_target  # an argument error, refused before anything loads, whatever the warehouse
def test_football_api_unknown_competition_is_a_clear_error(data_dir):
    result = run_loaders("football-api", "--competitions", "PL,NOPE")
    assert result.returncode == 2
    assert "unknown competition(s) NOPE; available:" in result.stderr
