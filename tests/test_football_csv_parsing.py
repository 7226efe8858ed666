"""Pure parsing rules of the football-data.co.uk loader."""

from __future__ import annotations

import csv
import re
from datetime import date, time

import pytest

from loaders.football_csv.parsing import (
    FootballCsvError,
    decode,
    normalise_headers,
    parse_kickoff_time,
    parse_match_date,
    parse_season_file,
    to_identifier,
    validate_divisions,
)
from loaders.seasons import parse_season

from .conftest import real_csv_files

S2425 = parse_season("2425")


@pytest.mark.parametrize(
    ("text", "season", "expected"),
    [
        ("16/08/2024", "2425", date(2024, 8, 16)),
        ("16/08/24", "2425", date(2024, 8, 16)),
        ("16-08-2024", "2425", date(2024, 8, 16)),
        ("1/2/25", "2425", date(2025, 2, 1)),
        ("14/08/93", "9394", date(1993, 8, 14)),
        ("07/05/94", "9394", date(1994, 5, 7)),
        ("19/08/00", "0001", date(2000, 8, 19)),
        ("2024-08-16", "2425", date(2024, 8, 16)),
        ("16/08/2024 00:00", "2425", date(2024, 8, 16)),
        ("26/07/2020", "1920", date(2020, 7, 26)),
    ],
)
def test_match_dates_are_day_first_in_every_format(text, season, expected):
    assert parse_match_date(text, parse_season(season)) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("01/09/2025", "outside season 2425"),
        ("30/06/2024", "outside season 2425"),
        ("31/02/2025", "invalid date"),
        ("Aug 16 2024", "unparseable date"),
        ("16/08", "unparseable date"),
    ],
)
def test_bad_match_dates_are_refused_with_a_reason(text, reason):
    with pytest.raises(FootballCsvError, match=reason):
        parse_match_date(text, S2425)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("19:45", time(19, 45)),
        ("12:30", time(12, 30)),
        ("20", time(20, 0)),
        ("19.3", time(19, 30)),
        ("20.15", time(20, 15)),
        ("9:05", time(9, 5)),
        ("", None),
    ],
)
def test_kickoff_times_including_spreadsheet_mangled_ones(text, expected):
    assert parse_kickoff_time(text) == expected


@pytest.mark.parametrize("text", ["25:00", "evening", "19:75"])
def test_bad_kickoff_times_are_refused(text):
    with pytest.raises(FootballCsvError):
        parse_kickoff_time(text)


@pytest.mark.parametrize(
    ("header", "identifier"),
    [
        ("HomeTeam", "home_team"),
        ("FTHG", "fthg"),
        ("B365>2.5", "b365_over_2_5"),
        ("B365<2.5", "b365_under_2_5"),
        ("BbMx>2.5", "bb_mx_over_2_5"),
        ("1XBH", "_1xbh"),
        ("AvgC<2.5", "avg_c_under_2_5"),
        (" Referee ", "referee"),
    ],
)
def test_headers_become_safe_snake_case(header, identifier):
    assert to_identifier(header) == identifier


def test_header_collisions_and_empty_names_get_stable_names():
    assert normalise_headers(["Div", "", "B365>2.5", "B365 > 2.5", "Season", ""]) == [
        "div",
        "unnamed_2",
        "b365_over_2_5",
        "b365_over_2_5_2",
        "season_2",  # "season" is the loader's own column
        "unnamed_6",
    ]


def test_every_real_header_normalises_to_a_unique_safe_identifier():
    for path in real_csv_files():
        header = next(csv.reader(decode(path.read_bytes())[0].splitlines()))
        names = normalise_headers(header)
        assert len(set(names)) == len(names), path.name
        assert all(re.fullmatch(r"[a-z_][a-z0-9_]*", name) for name in names), path.name


def test_decoding_strips_the_bom_and_falls_back_to_windows_1252():
    assert decode("\ufeffDiv,Date".encode()) == ("Div,Date", "utf-8-sig")
    assert decode("Köln".encode("cp1252")) == ("Köln", "cp1252")


def test_unknown_division_lists_the_valid_codes():
    with pytest.raises(FootballCsvError) as error:
        validate_divisions(["E0", "XX"])
    message = str(error.value)
    assert "XX" in message and "E0 (Premier League)" in message and "SP1 (La Liga)" in message


HEADER = "Div,Date,Time,HomeTeam,AwayTeam,FTHG,FTAG,FTR\r\n"


def test_bad_rows_are_rejected_with_reasons_and_good_rows_still_load():
    body = (
        HEADER
        + "E0,16/08/2024,20:00,Man United,Fulham,1,0,H\r\n"  # line 2: good
        + "E0,,20:00,Ipswich,Liverpool,0,2,A\r\n"  # 3: no date
        + "E0,17/08/2024,15:00,,Brighton,0,3,A\r\n"  # 4: no home team
        + "E0,01/09/2025,15:00,Arsenal,Wolves,2,0,H\r\n"  # 5: after the season
        + "E0,16/08/2024,20:00,Man United,Fulham,1,0,H\r\n"  # 6: duplicate of line 2
        + "E0,someday,15:00,Everton,Brighton,0,3,A\r\n"  # 7: unparseable date
        + "E0,17/08/2024,15:00,Newcastle,Southampton,1,0,H,extra,fields\r\n"  # 8: extra fields
        + "E0,17/08/2024,15:00,Nott'm Forest,Bournemouth\r\n"  # 9: short row
        + "E0,18/08/2024,teatime,Chelsea,Man City,0,2,A\r\n"  # 10: unreadable time
        + ",,,,,,,\r\n"  # 11: blank
    ).encode()
    parsed = parse_season_file(body, "2425", "E0", "test.csv")

    reasons = {row["source_line"]: row["reason"] for row in parsed.rejected}
    assert reasons == {
        3: "no match date",
        4: "no home or away team",
        5: "date '01/09/2025' is outside season 2425 (2024-07-01..2025-08-31)",
        6: "duplicate of the match on line 2",
        7: "unparseable date 'someday'",
    }
    assert all(row["raw_record"] for row in parsed.rejected)
    assert [(m["source_line"], m["home_team"]) for m in parsed.matches] == [
        (2, "Man United"),
        (8, "Newcastle"),
        (9, "Nott'm Forest"),
        (10, "Chelsea"),
    ]
    warnings = {(w["source_line"], w["warning_code"]) for w in parsed.warnings}
    assert warnings == {(8, "extra_fields"), (9, "missing_fields"), (10, "unparsed_time")}
    extra = next(w for w in parsed.warnings if w["warning_code"] == "extra_fields")
    assert "['extra', 'fields']" in extra["detail"]
    assert parsed.data_rows == 9 and parsed.blank_rows == 1
    assert parsed.matches[0]["kickoff_time"] == time(20, 0)
    assert parsed.matches[0]["match_date"] == date(2024, 8, 16)
    assert "fthg" not in parsed.matches[2]  # padded cells stay absent, i.e. null


@pytest.mark.parametrize("body", [b"", b"just,some,words\r\n1,2,3\r\n", b"\r\n\r\n"])
def test_a_file_without_the_match_header_is_refused(body):
    with pytest.raises(FootballCsvError, match="no header row with Date, HomeTeam and AwayTeam"):
        parse_season_file(body, "2425", "E0", "bad.csv")
