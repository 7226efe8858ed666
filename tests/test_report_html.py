"""report.html as people see it: written by the `elt` flow's publish step and by `make report`,
opened from disk in headless Chromium without a network, every section and chart there, and
its numbers equal to what the test computes itself from the warehouse and the input files."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path

import pytest

from core.settings import PROJECT_ROOT
from lake.files import state_dir
from loaders.vehicles.generate import generate
from orchestration.flows import elt

from .browser import render, visible_text, without_network
from .conftest import QUIET_TOOLS, rows
from .vehicles_helpers import expected_daily_summary, good_events

pytestmark = pytest.mark.integration

SECTIONS = ("football", "vehicles", "data-quality")
CHARTS = {
    "football": ["goals-per-month"],
    "vehicles": ["active-vehicles", "last-event-types", "events-per-hour"],
    "data-quality": ["rejected-records"],
}
# The page's own namespace declarations (SVG, XLink) name URIs that nothing fetches.
NAMESPACE_DECLARATION = re.compile(r'\sxmlns(:\w+)?="[^"]*"')


class Tables(HTMLParser):
    """Every <table> with an id: its body rows as lists of cell texts."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.current: str | None = None
        self.in_body = False
        self.cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table" and dict(attrs).get("id"):
            self.current = dict(attrs)["id"]
            self.tables[self.current] = []
        elif tag == "tbody":
            self.in_body = True
        elif tag == "tr" and self.current and self.in_body:
            self.tables[self.current].append([])
        elif tag == "td" and self.current and self.in_body:
            self.cell = []
        elif tag == "br" and self.cell is not None:
            self.cell.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self.cell is not None and self.current:
            lines = "".join(self.cell).split("\n")
            self.tables[self.current][-1].append("\n".join(" ".join(line.split()) for line in lines))
            self.cell = None
        elif tag == "tbody":
            self.in_body = False
        elif tag == "table":
            self.current = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)


def tables_in(dom: str) -> dict[str, list[list[str]]]:
    parser = Tables()
    parser.feed(dom)
    return parser.tables


def section(dom: str, name: str) -> str:
    found = re.search(rf'<section id="{name}">(.*?)</section>', dom, re.S)
    assert found, f"no section {name}"
    return found[1]


def charts_in(html: str) -> list[str]:
    """The charts of a part of the page: figures named data-chart, each holding one drawn SVG."""
    figures = re.findall(r'<figure class="chart" data-chart="([\w-]+)">(.*?)</figure>', html, re.S)
    for name, figure in figures:
        assert figure.count("<svg") == 1 and re.search(r"<(path|rect|line)\b", figure), name
    return [name for name, _ in figures]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def assert_self_contained(html: str) -> None:
    """Nothing a browser would fetch: no script, stylesheet link, frame, image source or URL."""
    without_namespaces = NAMESPACE_DECLARATION.sub("", html)
    assert not re.search(r"<(script|link|iframe|img|object|embed)\b", without_namespaces, re.I)
    assert not re.search(r"\b(src|srcset)\s*=", without_namespaces, re.I)
    assert not re.search(r"(https?:)?//[\w.-]+\.\w", without_namespaces), "a URL in the page"
    assert "@import" not in without_namespaces and not re.search(r"url\((?!#)", without_namespaces)
    assert all(link.startswith("#") for link in re.findall(r'href="([^"]*)"', without_namespaces))


def leader_points_from_matches() -> dict[tuple[str, str], int]:
    """(division, season) -> the most points any team has, counted from the matches themselves."""
    found = rows(
        """
        with points as (
            select division_code, season_code, home_team_name as team,
                   case result when 'H' then 3 when 'D' then 1 else 0 end as points
            from marts.fct_matches
            union all
            select division_code, season_code, away_team_name,
                   case result when 'A' then 3 when 'D' then 1 else 0 end
            from marts.fct_matches
        ),
        totals as (select division_code, season_code, team, sum(points) as points from points group by 1, 2, 3)
        select division_code, season_code, max(points) from totals group by 1, 2
        """
    )
    return {(division, season): int(points) for division, season, points in found}


def conformed_names_per_league() -> dict[tuple[str, str], set[str]]:
    """(division, season) -> dim_teams' names of the teams that played there."""
    found = rows(
        """
        select distinct matches.division_code, matches.season_code, teams.team_name
        from marts.fct_matches as matches
        inner join marts.dim_teams as teams
            on teams.team_key in (matches.home_team_key, matches.away_team_key)
        """
    )
    names: dict[tuple[str, str], set[str]] = {}
    for division, season, name in found:
        names.setdefault((division, season), set()).add(name)
    return names


def leader_rows(dom: str) -> list[tuple[str, str, list[str]]]:
    """(division, season, cells) of each row of the leaders table, keys from its data attributes."""
    body = re.search(r'<table id="leaders">.*?<tbody>(.*?)</tbody>', dom, re.S)[1]
    found = []
    for division, season, row in re.findall(r'<tr data-division="(\w+)" data-season="(\w+)">(.*?)</tr>', body, re.S):
        found.append(
            (
                division,
                season,
                [" ".join(visible_text(cell).split()) for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)],
            )
        )
    return found


@pytest.fixture(scope="module")
def sample_run(prefect_api, module_data_dir: Path) -> dict:
    """The sample run of `make run`, plus hours of generated fleet files with bad records and bad
    files, so the data-quality page has something to show."""
    quirky = generate(
        state_dir("incoming"),
        files=3,
        events_per_file=200,
        seed=11,
        quirks=True,
        start=datetime(2025, 11, 3, tzinfo=UTC),
    )
    outcome = elt(mode="sample")
    return {"outcome": outcome, "quirky": quirky, "data_dir": module_data_dir}


@pytest.fixture(scope="module")
def rendered(sample_run) -> dict:
    report = sample_run["data_dir"] / "reports" / "report.html"
    screenshot = sample_run["data_dir"] / "report.png"
    dom = render(report.as_uri(), screenshot, offline=True)
    return {"report": report, "screenshot": screenshot, "dom": dom, "tables": tables_in(dom)}


def test_the_publish_step_writes_one_self_contained_page_beside_the_csv_files(sample_run, rendered):
    assert str(rendered["report"]) in sample_run["outcome"]["reports"]
    assert {path.name for path in rendered["report"].parent.iterdir()} == {
        "teams_per_competition.csv",
        "league_leaders.csv",
        "report.html",
    }  # no temporary file left behind
    assert_self_contained(rendered["report"].read_text(encoding="utf-8"))
    width, height = png_size(rendered["screenshot"])
    assert (width, height) == (1400, 1000) and rendered["screenshot"].stat().st_size > 30_000


def test_every_section_has_its_charts_drawn(rendered):
    for name in SECTIONS:
        part = section(rendered["dom"], name)
        assert "Not loaded" not in part, name
        assert charts_in(part) == CHARTS[name], name


def test_the_league_tables_and_leaders_equal_the_matches(rendered):
    tables = rendered["tables"]
    expected_points = leader_points_from_matches()
    names = conformed_names_per_league()
    leagues = {key: tables[f"league-{key[0]}-{key[1]}"] for key in expected_points}
    assert len([name for name in tables if name.startswith("league-")]) == len(expected_points) == 5
    for key, league in leagues.items():
        assert int(league[0][-1]) == expected_points[key], key  # the table's first row has the most points
        assert [int(row[0]) for row in league] == list(range(1, len(league) + 1)), key
        assert {row[1] for row in league} == names[key], key  # dim_teams' names, one row per team
    # Conformed names differ from football-data.co.uk's where the API knows the team (sample: 2. Bundesliga).
    spellings = {name for (name,) in rows("select distinct home_team_name from marts.fct_matches")}
    assert any(name not in spellings for league in leagues.values() for name in (row[1] for row in league))
    leaders = {(row_division, row_season): row for row_division, row_season, row in leader_rows(rendered["dom"])}
    assert set(leaders) == set(expected_points)
    for key, row in leaders.items():
        assert int(row[5]) == expected_points[key], key
        assert row[3] == leagues[key][0][1], key  # the leader heads its league table


def test_the_vehicle_days_equal_the_events(rendered, sample_run):
    days = {row[0]: row for row in rendered["tables"]["active-vehicles-per-day"]}
    active = {
        str(day): count
        for day, count in rows(
            "select event_date, count(distinct vehicle_id) from marts.fct_vehicle_events group by event_date"
        )
    }
    assert {day: int(row[1]) for day, row in days.items()} == active
    # The mix of last event types, from the input files in Python (vehicles_helpers).
    last_events = expected_daily_summary(good_events(sample_run["data_dir"] / "processed" / "vehicles_events"))
    header = re.search(r'<table id="active-vehicles-per-day">.*?<thead>(.*?)</thead>', rendered["dom"], re.S)[1]
    event_types = re.findall(r"<th[^>]*>(.*?)</th>", header)[2:]
    for day, row in days.items():
        expected = Counter(event_type for (_, on), (_, event_type) in last_events.items() if on == day)
        shown = {event_type: int(count) for event_type, count in zip(event_types, row[2:], strict=True) if count != "0"}
        assert shown == dict(expected), day


def test_the_data_quality_page_shows_rejections_failed_files_gate_and_freshness(rendered, sample_run):
    tables, quirky, data_dir = rendered["tables"], sample_run["quirky"], sample_run["data_dir"]
    rejected = {row[0]: row for row in tables["rejected-records"]}
    for file_type, table in (
        ("vehicles_events", "vehicle_events_rejected"),
        ("vehicles_status", "vehicle_status_rejected"),
    ):
        row = rejected[f"raw_vehicles.{table}"]
        assert (
            int(row[1]) == rows(f"select count(*) from raw_vehicles.{table}")[0][0] == len(quirky.rejected[file_type])
        )
        reasons = Counter(quirky.rejected[file_type])
        shown = dict(re.fullmatch(r"(.*) \((\d+)\)", line).groups() for line in row[2].split("\n"))
        assert {reason: reasons[reason] for reason in shown} == {reason: int(count) for reason, count in shown.items()}
        assert sorted(map(int, shown.values()), reverse=True) == sorted(reasons.values(), reverse=True)[:3]
    failed = {row[1]: row for row in tables["failed-files"]}
    assert set(failed) == set(quirky.failed_files)
    for name, reason in quirky.failed_files.items():
        assert failed[name][2].startswith(reason), (name, failed[name])

    results = json.loads((data_dir / "dbt_target" / "run_results.json").read_text())["results"]
    statuses = Counter(result["status"] for result in results)
    gate = visible_text(re.search(r'<p id="gate-result">(.*?)</p>', rendered["dom"], re.S)[1])
    assert gate.startswith("Passed")
    assert all(f"{count} {status}" in gate for status, count in statuses.items()), gate

    checked = json.loads((data_dir / "dbt_target" / "sources.json").read_text())["results"]
    freshness = {row[0]: row[1] for row in tables["source-freshness"]}
    assert freshness == {result["unique_id"].removeprefix("source.elt."): result["status"] for result in checked}


def test_charts_render_without_a_network():
    if not without_network():
        pytest.skip("this user cannot make a network namespace (unshare --net)")
    chart = (
        "from orchestration.report_html import goals_per_month_chart, svg; "
        "print(svg(goals_per_month_chart([{'division_code': 'E0', 'month': '2024-08-01', 'goals': 31}])))"
    )
    command = [*without_network(), sys.executable, "-c", chart]
    result = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("<svg") and ">E0<" in result.stdout and ">Aug 2024<" in result.stdout


def test_make_report_on_a_warehouse_without_vehicles_says_so_and_still_writes(data_dir):
    # make build's dbt target folder in the data dir, not the project's (DBT_TARGET_PATH, as dbt reads it).
    env = {**os.environ, **QUIET_TOOLS, "ELT_DATA_DIR": str(data_dir), "DBT_TARGET_PATH": str(data_dir / "make_build")}
    env["DBT_LOG_PATH"] = str(data_dir / "dbt_logs")

    def run(*command: str) -> subprocess.CompletedProcess:
        result = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{command}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        return result

    run(sys.executable, "-m", "loaders", "football-csv")
    run("make", "--no-print-directory", "build")
    run("make", "--no-print-directory", "report")
    report = data_dir / "reports" / "report.html"
    dom = render(report.as_uri(), offline=True)
    vehicles = visible_text(section(dom, "vehicles"))
    assert vehicles.startswith("Vehicles Not loaded: the marts daily_summary, fct_vehicle_events are not built")
    assert "<svg" not in section(dom, "vehicles")
    assert charts_in(section(dom, "football")) == CHARTS["football"]
    assert leader_points_from_matches() == {(row[0], row[1]): int(row[2][5]) for row in leader_rows(dom)}
    quality = visible_text(section(dom, "data-quality"))
    assert "No rejected records." in quality and "No vehicle files in the lifecycle folders." in quality
    assert "Source freshness: not checked yet" in quality
    assert re.search(r"Passed at .* \(dbt build\): .*\d+ pass", quality), quality  # make build's gate
