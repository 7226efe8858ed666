"""`current` and `previous`: one rule (a season starts on 1 July, UTC), resolved where a season is
asked for. Expected codes are written by hand from that rule for fixed dates."""

from __future__ import annotations

from datetime import date

import pytest

from loaders.seasons import (
    SeasonError,
    parse_season,
    resolve_season_codes,
    resolve_season_range,
    resolve_start_year,
    seasons_between,
    today_utc,
)

from .conftest import lay_out_as_site, matches_in, real_csv_files, rows
from .processes import run_loaders

pytestmark = pytest.mark.one_target  # season arithmetic and what is requested, not the warehouse


@pytest.mark.parametrize(
    ("today", "current", "previous"),
    [
        (date(2026, 6, 30), "2526", "2425"),  # the last day of 2025/26
        (date(2026, 7, 1), "2627", "2526"),  # the first day of 2026/27
        (date(2025, 12, 31), "2526", "2425"),  # the turn of the year stays in one season
        (date(2026, 1, 1), "2526", "2425"),
        (date(2000, 3, 15), "9900", "9899"),  # across the century
        (date(2000, 7, 1), "0001", "9900"),
    ],
)
def test_current_and_previous_follow_the_1_july_boundary(today, current, previous):
    assert resolve_season_codes(["current"], today) == [current]
    assert resolve_season_codes(["previous"], today) == [previous]


@pytest.mark.parametrize(
    ("today", "current_year"),
    [(date(2026, 6, 30), 2025), (date(2026, 7, 1), 2026), (date(2025, 12, 31), 2025), (date(2026, 1, 1), 2025)],
)
def test_start_years_for_the_api_follow_the_same_boundary(today, current_year):
    assert resolve_start_year("current", today) == current_year
    assert resolve_start_year("previous", today) == current_year - 1
    assert resolve_start_year(2022, today) == 2022 and resolve_start_year("2019", today) == 2019


def test_mixed_lists_keep_their_order_and_drop_repeats():
    today = date(2026, 7, 1)
    assert resolve_season_codes(["previous", "current"], today) == ["2526", "2627"]
    assert resolve_season_codes("1920, current", today) == ["1920", "2627"]
    assert resolve_season_codes(["CURRENT", "2627", "previous"], today) == ["2627", "2526"]


def test_backfill_bounds_accept_current_and_previous():
    today = date(2026, 6, 30)
    assert resolve_season_range(2023, "current", today) == ["2324", "2425", "2526"]
    assert resolve_season_range("previous", "current", today) == ["2425", "2526"]
    with pytest.raises(SeasonError, match="first season 2025 is after last season 2024"):
        resolve_season_range("current", "previous", today)


@pytest.mark.parametrize("token", ["latest", "next", "24/25", "2426", ""])
def test_bad_season_tokens_are_a_clear_error(token):
    with pytest.raises(SeasonError, match="'current' or 'previous'"):
        resolve_season_codes([token or " "], date(2026, 7, 1))


@pytest.mark.parametrize("token", ["latest", "2425", "24", "current season"])
def test_bad_start_years_are_a_clear_error(token):
    with pytest.raises(SeasonError, match="not a start year like 2024, 'current' or 'previous'"):
        resolve_start_year(token, date(2026, 7, 1))


def test_the_clock_is_the_utc_date_unless_elt_today_sets_it(monkeypatch):
    monkeypatch.setenv("ELT_TODAY", "2026-07-01")
    assert today_utc() == date(2026, 7, 1)
    assert resolve_season_codes(["current"]) == ["2627"]
    monkeypatch.setenv("ELT_TODAY", "1st of July")
    with pytest.raises(SeasonError, match="ELT_TODAY='1st of July' is not a date like 2026-07-01"):
        today_utc()
    monkeypatch.delenv("ELT_TODAY")
    assert abs((today_utc() - date.today()).days) <= 1  # UTC may differ from local time by a day


@pytest.mark.parametrize(
    ("code", "start_year"),
    [("9394", 1993), ("9900", 1999), ("0001", 2000), ("1920", 2019), ("2425", 2024)],
)
def test_season_codes_map_to_start_years(code, start_year):
    assert parse_season(code).start_year == start_year


@pytest.mark.parametrize("code", ["2426", "24/25", "2024", "abcd", ""])
def test_bad_season_codes_are_refused(code):
    with pytest.raises(SeasonError, match="season"):
        parse_season(code)


def test_season_range_for_backfills():
    assert seasons_between(2019, 2024) == ["1920", "2021", "2122", "2223", "2324", "2425"]
    assert seasons_between(1998, 2000) == ["9899", "9900", "0001"]
    with pytest.raises(SeasonError):
        seasons_between(2024, 2019)


def test_the_cli_requests_the_seasons_current_and_previous_resolve_to(data_dir, tmp_path):
    files = {p.name: p for p in real_csv_files()}
    site = lay_out_as_site([files["2324_E0_excel_resaved.csv"], files["2425_E0.csv"]], tmp_path / "site")
    common = ("football-csv", "--divisions", "E0", "--base-url", str(site))

    # 30 June 2025 is the last day of 2024/25: current is 2425, previous 2324.
    first = run_loaders(*common, "--seasons", "previous,current", ELT_TODAY="2025-06-30")
    assert first.returncode == 0, first.stderr
    assert "football_csv (2324, 2425): 2 loaded, 0 unchanged, 0 not found, 0 failed" in first.stdout
    expected = [("2324", matches_in(site / "2324" / "E0.csv")), ("2425", matches_in(site / "2425" / "E0.csv"))]
    assert rows("select season, count(*) from raw_football.matches group by 1 order by 1") == expected

    # 1 July 2025 starts 2025/26: current is 2526 (not on the site), previous 2425 (already loaded).
    second = run_loaders(*common, "--from", "previous", "--to", "current", ELT_TODAY="2025-07-01")
    assert second.returncode == 0, second.stderr
    assert "football_csv (2425, 2526): 0 loaded, 1 unchanged, 1 not found, 0 failed" in second.stdout
    assert "2526/E0 not found at " + str(site / "2526" / "E0.csv") in second.stderr
    # Progress of a long load, one line per file: files done of all files asked for.
    assert "football_csv: 1/2 files, 2425/E0 unchanged" in second.stderr
    assert "football_csv: 2/2 files, 2526/E0 not found" in second.stderr


def test_a_bad_season_token_on_the_cli_is_one_clear_line(data_dir):
    result = run_loaders("football-csv", "--seasons", "latest", "--divisions", "E0", ELT_TODAY="2026-07-01")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: season 'latest' is not a football-data.co.uk season code like '2425' (2024/25), 'current' or 'previous'"
    )
    api = run_loaders("football-api", "--season", "next", ELT_TODAY="2026-07-01")
    assert api.returncode == 2 and "error: season 'next' is not a start year like 2024" in api.stderr
