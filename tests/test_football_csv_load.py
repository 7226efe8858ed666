"""football-data.co.uk CSVs through the real dlt pipeline into a real DuckDB, then real dbt."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import re
import threading
from collections import defaultdict
from collections.abc import Iterator
from email.utils import formatdate, parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from loaders.football_api import football_api
from loaders.football_csv import FootballCsvError, football_csv, last_run
from loaders.pipelines import pipeline
from orchestration.report import export_reports

from .conftest import (
    lay_out_api_recordings,
    lay_out_as_site,
    matches_in,
    real_csv_files,
    rows,
    run_dbt,
    season_and_division,
)

pytestmark = pytest.mark.integration


def load(base_url: str, seasons, divisions, **options) -> dict:
    """Load, then what the run did with each file, as the source state records it (last_run)."""
    source = football_csv(seasons=seasons, divisions=divisions, base_url=base_url, **options)
    csv_pipeline = pipeline("football_csv", "raw_football")
    csv_pipeline.run(source)
    return last_run(csv_pipeline)


def query(sql: str) -> list[tuple]:
    return rows(sql)


def data_lines(path: Path) -> int:
    """Independent count: lines after the header that are not made only of commas."""
    text = path.read_bytes().decode("utf-8-sig")
    return sum(1 for line in text.splitlines()[1:] if line.strip(", \t"))


def csv_records(path: Path) -> tuple[list[str], list[list[str]]]:
    """The header and the records after it, read with the csv module (not the loader's code)."""
    header, *records = csv.reader(io.StringIO(path.read_bytes().decode("utf-8-sig"), newline=""))
    return header, records


def blank_records(path: Path) -> int:
    """Records that are empty or made only of commas (spreadsheet leftovers)."""
    return sum(1 for fields in csv_records(path)[1] if not any(value.strip() for value in fields))


def ragged_rows(path: Path) -> dict[str, int]:
    """Non-blank records with fewer fields than the header, and with non-empty fields beyond it."""
    header, records = csv_records(path)
    counts = {"missing_fields": 0, "extra_fields": 0}
    for fields in records:
        if not any(value.strip() for value in fields):
            continue
        counts["missing_fields"] += len(fields) < len(header)
        counts["extra_fields"] += any(value.strip() for value in fields[len(header) :])
    return {code: count for code, count in counts.items() if count}


def real_file(name: str) -> Path:
    return next(path for path in real_csv_files() if path.name == name)


def expected_table(path: Path) -> dict[str, tuple[int, int, int]]:
    """(played, points, goal difference) per team, computed straight from the CSV."""
    table: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for row in csv.DictReader(io.StringIO(path.read_bytes().decode("utf-8-sig"))):
        if not row.get("HomeTeam"):
            continue
        home, away = int(row["FTHG"]), int(row["FTAG"])
        for team, scored, conceded in ((row["HomeTeam"], home, away), (row["AwayTeam"], away, home)):
            entry = table[team]
            entry[0] += 1
            entry[1] += 3 if scored > conceded else 1 if scored == conceded else 0
            entry[2] += scored - conceded
    return {team: tuple(values) for team, values in table.items()}


@pytest.fixture(scope="module")
def all_real_files(module_data_dir: Path, tmp_path_factory) -> dict:
    """Every shared real CSV and API recording loaded into one warehouse; dbt built on top."""
    files = real_csv_files()
    site = lay_out_as_site(files, tmp_path_factory.mktemp("site"))
    pairs = sorted({season_and_division(path) for path in files})
    reports = [load(str(site), [season], [division]) for season, division in pairs]
    api_base = lay_out_api_recordings(tmp_path_factory.mktemp("api"))
    pipeline("football_api", "raw_football_api").run(
        football_api(competitions=["BL1", "BSA"], season=2022, base_url=str(api_base))
    )
    build = run_dbt("build", "--selector", "football", data_dir=module_data_dir)
    return {"files": files, "site": site, "reports": reports, "dbt": build, "data_dir": module_data_dir}


def test_every_real_file_loads_all_its_rows(all_real_files):
    assert all(not report["failed"] and not report["missing"] for report in all_real_files["reports"])
    loaded = dict(
        ((season, division), count)
        for season, division, count in query(
            "select season, division, count(*) from raw_football.matches group by 1, 2"
        )
    )
    for path in all_real_files["files"]:
        assert loaded[season_and_division(path)] == matches_in(path) == data_lines(path), path.name
    # None of the real files has an unusable row; the rejected-rows table is only made when
    # one appears (see test_bad_rows_land_in_the_rejected_table).
    tables = {name for (name,) in query("select table_name from information_schema.tables")}
    assert "rejected_rows" not in tables


def test_ragged_rows_are_padded_and_recorded(all_real_files):
    warnings = query("select season, division, warning_code, count(*) from raw_football.row_warnings group by 1, 2, 3")
    expected = [
        (*season_and_division(path), code, count)
        for path in all_real_files["files"]
        for code, count in ragged_rows(path).items()
    ]
    assert sorted(warnings) == sorted(expected)
    # 0102_E0 has rows with 45 of its 48 header fields (quoted commas in referee names are not
    # extra fields): the one ragged file among the real ones.
    assert [row[:3] for row in expected] == [("0102", "E0", "missing_fields")]


def test_the_ledger_accounts_for_every_row_and_the_raw_bytes_are_archived(all_real_files):
    rows = query(
        "select season, division, sha256, landing_path, data_rows, blank_rows, loaded_rows, rejected_rows "
        "from raw_football.source_files"
    )
    assert len(rows) == len(all_real_files["files"])
    by_key = {(row[0], row[1]): row for row in rows}
    for path in all_real_files["files"]:
        _, _, sha256, landing_path, data_rows, blank_rows, loaded_rows, rejected = by_key[season_and_division(path)]
        raw = path.read_bytes()
        assert sha256 == hashlib.sha256(raw).hexdigest()
        assert Path(landing_path).read_bytes() == raw
        assert loaded_rows + rejected == data_rows == data_lines(path)
        assert blank_rows == blank_records(path), path.name
    assert by_key[("1415", "E0")][5] > 0  # its trailing all-comma row: blank rows are exercised


def test_dates_times_and_odd_headers_land_typed_and_named_safely(all_real_files):
    columns = {
        name
        for (name,) in query(
            "select column_name from information_schema.columns "
            "where table_schema = 'raw_football' and table_name = 'matches'"
        )
    }
    assert {"b365_over_2_5", "bb_mx_over_2_5", "_1xbh", "home_team", "fthg"} <= columns
    assert all(re.fullmatch(r"[a-z_][a-z0-9_]*", name) for name in columns)
    assert not any(name.startswith("unnamed") for name in columns)  # SC0's empty trailing columns
    spans = dict(
        ((season, division), (first, last))
        for season, division, first, last in query(
            "select season, division, min(match_date)::varchar, max(match_date)::varchar "
            "from raw_football.matches group by 1, 2"
        )
    )
    assert spans[("9394", "E0")] == ("1993-08-14", "1994-05-08")
    assert spans[("2324", "E0")] == ("2023-08-11", "2023-12-10")
    assert spans[("1920", "E0")][1] == "2020-07-26"
    times = dict(
        query(
            "select time, kickoff_time::varchar from raw_football.matches "
            "where season = '2324' and time in ('20', '19.3', '20.15') group by 1, 2"
        )
    )
    assert times == {"20": "20:00:00", "19.3": "19:30:00", "20.15": "20:15:00"}
    assert query("select home_team from raw_football.matches where home_team like 'Preu%'")[0][0] == "Preußen Münster"


def test_dbt_standings_match_tables_computed_from_the_csv(all_real_files):
    for name in ("9394_E0.csv", "1415_E0.csv", "1819_D1.csv"):
        path = next(p for p in all_real_files["files"] if p.name == name)
        season, division = season_and_division(path)
        standings = {
            team: (played, points, goal_difference)
            for team, played, points, goal_difference in query(
                "select team_name, played, points, goal_difference from marts.fct_standings "
                f"where season_code = '{season}' and division_code = '{division}'"
            )
        }
        assert standings == expected_table(path), name
    champions = query(
        "select season_code, team_name, points from marts.fct_standings "
        "where division_code = 'E0' and position = 1 and season_code in ('9394', '1415') order by 1"
    )
    # Known champions: Manchester United 92 points in 1993/94, Chelsea 87 in 2014/15.
    assert champions == [("1415", "Chelsea", 87), ("9394", "Man United", 92)]


def test_dbt_marts_cover_every_loaded_match(all_real_files):
    total = sum(data_lines(path) for path in all_real_files["files"])
    assert query("select count(*) from marts.fct_matches")[0][0] == total
    assert query("select count(*) from marts.dim_seasons")[0][0] == len(
        {season_and_division(path)[0] for path in all_real_files["files"]}
    )


def test_teams_are_conformed_across_both_sources(all_real_files):
    conformed = dict(
        query(
            "select names.football_data_team_name, teams.api_team_id "
            "from intermediate.int_teams__football_data_names as names "
            "join marts.dim_teams as teams on names.team_key = teams.team_key"
        )
    )
    # 1819_D1 spells them the football-data.co.uk way; the BL1 2022 recording has their API ids.
    assert conformed["Bayern Munich"] == 5
    assert conformed["Dortmund"] == 4
    assert conformed["M'gladbach"] == 18
    assert conformed["Schalke 04"] == 6
    assert conformed["Man United"] is None  # mapped in the seed, but no PL teams are loaded
    keys = query(
        "select count(distinct home_team_key) from marts.fct_matches "
        "where home_team_name in ('Bayern Munich', 'Dortmund') and division_code = 'D1'"
    )
    assert keys == [(2,)]
    assert query("select count(*) from marts.dim_teams where is_known_to_api") == [(38,)]


def test_mapping_coverage_warns_with_the_unmapped_names(all_real_files):
    results = json.loads((all_real_files["data_dir"] / "dbt_target" / "run_results.json").read_text())
    coverage = next(r for r in results["results"] if r["unique_id"].endswith("assert_football_data_teams_are_mapped"))
    assert coverage["status"] == "warn" and coverage["failures"] == 3
    unmapped = query("select unmapped_team_name from test_failures.assert_football_data_teams_are_mapped order by 1")
    # D1 2018/19 clubs that are not in the loaded BL1 2022/23 recording.
    assert unmapped == [("Fortuna Dusseldorf",), ("Hannover",), ("Nurnberg",)]


def test_competition_facts_and_the_exported_report(all_real_files, tmp_path):
    assert query("select count(*), count(distinct team_id) from marts.fct_competition_teams") == [(38, 38)]
    assert query("select count(*) from marts.fct_api_matches where is_finished") == [(54,)]
    written = export_reports(tmp_path)
    assert [path.name for path in written] == ["teams_per_competition.csv", "league_leaders.csv", "report.html"]
    teams = list(csv.DictReader(written[0].open(encoding="utf-8")))
    assert [(row["competition_code"], row["season"], row["teams"]) for row in teams] == [
        ("BL1", "2022", "18"),
        ("BSA", "2022", "20"),
    ]
    leaders = {(row["division_code"], row["season_label"]): row for row in csv.DictReader(written[1].open())}
    assert leaders[("E0", "1993/94")]["leader"] == "Man United" and leaders[("E0", "1993/94")]["points"] == "92"
    assert len(leaders) == len(all_real_files["files"])
    manifest = json.loads((all_real_files["data_dir"] / "dbt_target" / "manifest.json").read_text())
    exposure = manifest["exposures"]["exposure.elt.football_summary_report"]
    assert sorted(exposure["depends_on"]["nodes"]) == [
        "model.elt.daily_summary",
        "model.elt.dim_divisions",
        "model.elt.dim_seasons",
        "model.elt.dim_teams",
        "model.elt.fct_matches",
        "model.elt.fct_standings",
        "model.elt.fct_vehicle_events",
        "model.elt.rpt_league_leaders",
        "model.elt.rpt_teams_per_competition",
    ]


def test_reloading_unchanged_files_changes_nothing(data_dir, tmp_path):
    site = lay_out_as_site([p for p in real_csv_files() if p.name == "2425_E0.csv"], tmp_path / "site")
    first = load(str(site), ["2425"], ["E0"])
    before = query("select count(*), max(_dlt_load_id) from raw_football.matches")
    second = load(str(site), ["2425"], ["E0"])
    assert first["loaded"] == ["2425/E0"] and second["unchanged"] == ["2425/E0"]
    assert query("select count(*), max(_dlt_load_id) from raw_football.matches") == before
    forced = load(str(site), ["2425"], ["E0"], force=True)
    assert forced["loaded"] == ["2425/E0"]
    expected = matches_in(site / "2425" / "E0.csv")
    assert query("select count(*) from raw_football.matches")[0][0] == before[0][0] == expected


def test_a_corrected_file_updates_its_matches_in_place(data_dir, tmp_path):
    site = lay_out_as_site([p for p in real_csv_files() if p.name == "2425_E0.csv"], tmp_path / "site")
    load(str(site), ["2425"], ["E0"])
    path = site / "2425" / "E0.csv"
    text = path.read_bytes().decode("utf-8-sig")
    first_match = text.splitlines()[1]
    assert first_match.startswith("E0,16/08/2024,20:00,Man United,Fulham,1,0,H")
    path.write_bytes(text.replace(first_match, first_match.replace("Fulham,1,0,H", "Fulham,2,0,H", 1)).encode())
    report = load(str(site), ["2425"], ["E0"])
    assert report["loaded"] == ["2425/E0"]
    assert query("select count(*) from raw_football.matches")[0][0] == matches_in(path)
    assert query("select fthg from raw_football.matches where home_team = 'Man United' and away_team = 'Fulham'") == [
        ("2",)
    ]
    assert len(list((data_dir / "landing" / "football_csv" / "2425" / "E0").glob("*.csv"))) == 2


def test_bad_rows_land_in_the_rejected_table(data_dir, tmp_path):
    site = tmp_path / "site" / "2425"
    site.mkdir(parents=True)
    (site / "E1.csv").write_bytes(
        b"Div,Date,HomeTeam,AwayTeam,FTHG,FTAG,FTR\n"
        b"E1,09/08/2024,Blackburn,Derby,4,2,H\n"
        b"E1,,Leeds,Portsmouth,3,3,D\n"
        b"E1,10/09/2025,Luton,Burnley,1,1,D\n"
    )
    report = load(str(site.parent), ["2425"], ["E1"])
    assert report["loaded"] == ["2425/E1"]
    assert query("select home_team from raw_football.matches") == [("Blackburn",)]
    assert query("select source_line, reason, raw_record from raw_football.rejected_rows order by 1") == [
        (3, "no match date", "E1,,Leeds,Portsmouth,3,3,D"),
        (
            4,
            "date '10/09/2025' is outside season 2425 (2024-07-01..2025-08-31)",
            "E1,10/09/2025,Luton,Burnley,1,1,D",
        ),
    ]


def test_a_broken_file_fails_alone_and_is_kept_in_landing(data_dir, tmp_path):
    site = lay_out_as_site([p for p in real_csv_files() if p.name == "2425_E0.csv"], tmp_path / "site")
    (site / "2425" / "E1.csv").write_bytes(b"<html>Service unavailable</html>\n")
    report = load(str(site), ["2425"], ["E0", "E1"])
    assert report["loaded"] == ["2425/E0"]
    assert "no header row with Date, HomeTeam and AwayTeam" in report["failed"]["2425/E1"]
    assert query("select count(*) from raw_football.matches")[0][0] == matches_in(site / "2425" / "E0.csv")
    assert len(list((data_dir / "landing" / "football_csv" / "2425" / "E1").glob("*.csv"))) == 1
    # Not remembered as loaded: the next run tries it again.
    assert load(str(site), ["2425"], ["E1"])["failed"]


@pytest.mark.one_target  # an argument error, refused before anything loads, whatever the warehouse
def test_unknown_division_is_refused_before_any_load(data_dir):
    with pytest.raises(FootballCsvError, match="valid codes: E0"):
        football_csv(seasons=["2425"], divisions=["ZZ9"], base_url="unused")


class _SiteHandler(BaseHTTPRequestHandler):
    """Serves a folder like football-data.co.uk: Last-Modified (the file's mtime) and, unless
    `send_etag` is off, an ETag; answers 304 to If-None-Match, or when there is none to
    If-Modified-Since (RFC 9110 §13.2.2); 404s. Logs each request with its validators."""

    root: Path
    send_etag: bool
    log: list[dict]

    def do_GET(self):  # noqa: N802 (http.server's naming)
        path = self.root / self.path.lstrip("/").removeprefix("mmz4281/")
        if not path.is_file():
            self._reply(404, b"not found", {})
            return
        body = path.read_bytes()
        modified = int(path.stat().st_mtime)
        validators = {"Last-Modified": formatdate(modified, usegmt=True)}
        if self.send_etag:
            validators["ETag"] = f'"{hashlib.md5(body).hexdigest()}"'
        if self._not_modified(validators.get("ETag"), modified):
            self._reply(304, b"", validators)
            return
        self._reply(200, body, validators)

    def _not_modified(self, etag: str | None, modified: int) -> bool:
        if (asked := self.headers.get("If-None-Match")) is not None:
            return asked == etag
        if (since := self.headers.get("If-Modified-Since")) is not None:
            try:
                return modified <= parsedate_to_datetime(since).timestamp()
            except (TypeError, ValueError):
                return False  # an unreadable date is ignored, as the RFC says
        return False

    def _reply(self, status: int, body: bytes, validators: dict[str, str]):
        self.log.append(
            {
                "path": self.path,
                "status": status,
                "if_none_match": self.headers.get("If-None-Match"),
                "if_modified_since": self.headers.get("If-Modified-Since"),
                "last_modified": validators.get("Last-Modified"),
            }
        )
        self.send_response(status)
        for name, value in validators.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serving(site: Path, send_etag: bool) -> Iterator[tuple[str, list[dict]]]:
    handler = type("Handler", (_SiteHandler,), {"root": site, "send_etag": send_etag, "log": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/mmz4281", handler.log
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def local_site(tmp_path):
    site = lay_out_as_site([real_file("2425_E0.csv"), real_file("2425_SC0.csv")], tmp_path / "site")
    with serving(site, send_etag=True) as (base_url, log):
        yield base_url, log, site


def test_http_unchanged_files_are_not_downloaded_again(data_dir, local_site):
    base_url, requests_seen, site = local_site
    first = load(base_url, ["2425"], ["E0", "SC0", "E1"])
    assert first["loaded"] == ["2425/E0", "2425/SC0"] and first["missing"] == ["2425/E1"]
    assert sorted(request["status"] for request in requests_seen) == [200, 200, 404]
    requests_seen.clear()
    second = load(base_url, ["2425"], ["E0", "SC0"])
    assert second["unchanged"] == ["2425/E0", "2425/SC0"]
    assert [request["status"] for request in requests_seen] == [304, 304]
    assert all(request["if_none_match"] for request in requests_seen)
    expected = matches_in(site / "2425" / "E0.csv") + matches_in(site / "2425" / "SC0.csv")
    assert query("select count(*) from raw_football.matches")[0][0] == expected
    assert query("select count(*) from raw_football.source_files where etag is not null")[0][0] == 2


def test_http_last_modified_alone_makes_the_request_conditional(data_dir, tmp_path):
    """A server that sends no ETag: the stored Last-Modified goes back as If-Modified-Since."""
    site = lay_out_as_site([real_file("2425_E0.csv")], tmp_path / "site")
    path = site / "2425" / "E0.csv"
    with serving(site, send_etag=False) as (base_url, requests_seen):
        assert load(base_url, ["2425"], ["E0"])["loaded"] == ["2425/E0"]
        [(etag, stored)] = query("select etag, last_modified from raw_football.source_files")
        assert etag is None and stored == requests_seen[0]["last_modified"]
        requests_seen.clear()

        assert load(base_url, ["2425"], ["E0"])["unchanged"] == ["2425/E0"]
        [request] = requests_seen
        assert (request["if_none_match"], request["if_modified_since"], request["status"]) == (None, stored, 304)
        requests_seen.clear()

        text = path.read_bytes().decode("utf-8-sig")
        first_match = text.splitlines()[1]
        path.write_bytes(text.replace(first_match, first_match.replace("Fulham,1,0,H", "Fulham,3,0,H", 1)).encode())
        later = path.stat().st_mtime + 3600
        os.utime(path, (later, later))
        assert load(base_url, ["2425"], ["E0"])["loaded"] == ["2425/E0"]
        [request] = requests_seen
        assert (request["if_modified_since"], request["status"]) == (stored, 200)
        assert parsedate_to_datetime(request["last_modified"]) > parsedate_to_datetime(stored)
    assert query("select last_modified from raw_football.source_files") == [(request["last_modified"],)]
    assert query("select fthg from raw_football.matches where home_team = 'Man United' and away_team = 'Fulham'") == [
        ("3",)
    ]
    assert query("select count(*) from raw_football.matches")[0][0] == matches_in(path)
