"""report.html: the published marts as pages people look at, beside the report's CSV files.

Football (the league table of every loaded division-season, the leaders, goals per month),
vehicles (active vehicles per day and the mix of their last event types, events per hour) and
data quality (what `python -m loaders status` shows, with the last dbt gate). Every number is read
from the marts with SQL; a section whose marts are not built says so.

The page is one self-contained file: no script, stylesheet, font or image from anywhere else.
Charts are Vega-Lite specs built with Altair and rendered to SVG here by vl-convert (an embedded
renderer: no browser, no network), then inlined. Jinja2 escapes every value from the data.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import altair as alt
import jinja2
import vl_convert
from markupsafe import Markup

from core.settings import environment, target, warehouse_path
from core.warehouse import query
from lake.files import STATES
from loaders import status
from loaders.modes import describe_mode
from orchestration import dbt_gate

TEMPLATES = Path(__file__).parent / "templates"
TEMPLATE = "report.html.j2"
FOOTBALL_MARTS = ("fct_standings", "rpt_league_leaders", "fct_matches", "dim_teams", "dim_divisions", "dim_seasons")
VEHICLE_MARTS = ("daily_summary", "fct_vehicle_events")
HOURLY_DAYS = 7  # events per hour over the last week of data: a year of hours is no chart to read
CHART_WIDTH = 900
CHART_HEIGHT = 220
CHART_PADDING = {"left": 40, "top": 5, "right": 20, "bottom": 5}

LEAGUE_TABLES_SQL = """
select
    standings.division_code,
    divisions.division_name,
    standings.season_code,
    seasons.season_label,
    standings.position,
    teams.team_name,
    standings.played,
    standings.won,
    standings.drawn,
    standings.lost,
    standings.goals_for,
    standings.goals_against,
    standings.goal_difference,
    standings.points
from marts.fct_standings as standings
inner join marts.dim_divisions as divisions on standings.division_code = divisions.division_code
inner join marts.dim_seasons as seasons on standings.season_code = seasons.season_code
inner join marts.dim_teams as teams on standings.team_key = teams.team_key
order by seasons.start_year desc, divisions.country, divisions.tier, standings.division_code, standings.position
"""

LEADERS_SQL = """
select
    leaders.division_code,
    leaders.division_name,
    leaders.country,
    seasons.season_code,
    leaders.season_label,
    teams.team_name,
    leaders.played,
    leaders.points,
    leaders.goal_difference
from marts.rpt_league_leaders as leaders
inner join marts.dim_seasons as seasons on leaders.season_label = seasons.season_label
inner join marts.dim_teams as teams on leaders.team_key = teams.team_key
order by seasons.start_year desc, leaders.country, leaders.division_code
"""

GOALS_PER_MONTH_SQL = """
select
    division_code,
    cast(date_trunc('month', match_date) as date) as month,
    sum(home_goals + away_goals) as goals
from marts.fct_matches
group by division_code, cast(date_trunc('month', match_date) as date)
order by month, division_code
"""

ACTIVE_VEHICLES_SQL = """
select day, count(distinct vehicle_id) as active_vehicles
from marts.daily_summary
group by day
order by day
"""

LAST_EVENT_TYPES_SQL = """
select day, last_event_type, count(*) as vehicles
from marts.daily_summary
group by day, last_event_type
order by day, last_event_type
"""

EVENTS_PER_HOUR_SQL = f"""
select date_trunc('hour', event_at) as hour, count(*) as events
from marts.fct_vehicle_events
where event_at >= (select max(event_at) from marts.fct_vehicle_events) - interval '{HOURLY_DAYS} days'
group by date_trunc('hour', event_at)
order by hour
"""


@dataclass
class Chart:
    name: str
    title: str
    svg: Markup


@dataclass
class LeagueTable:
    division_code: str
    division_name: str
    season_code: str
    season_label: str
    rows: list[dict]


@dataclass
class FootballSection:
    missing: list[str]
    leaders: list[dict] = field(default_factory=list)
    league_tables: list[LeagueTable] = field(default_factory=list)
    charts: list[Chart] = field(default_factory=list)


@dataclass
class VehiclesSection:
    missing: list[str]
    days: list[dict] = field(default_factory=list)
    event_types: list[str] = field(default_factory=list)
    charts: list[Chart] = field(default_factory=list)


@dataclass
class RejectedTable:
    name: str
    rows: int
    reasons: list[tuple[str, int]]


@dataclass
class QualitySection:
    mode: str
    raw_tables: list[status.RawTable]
    rejected: list[RejectedTable]
    files_per_state: dict[str, dict[str, int]]
    failed_files: list[status.FailedFile]
    gate: dbt_gate.GateResult | None
    gate_finished_at: str
    freshness_checked_at: str
    freshness: list[tuple[str, str, str]]
    states: tuple[str, ...] = STATES
    charts: list[Chart] = field(default_factory=list)


def plain(value: Any) -> Any:
    """A warehouse value as the page and the chart specs take it: ISO dates (instants in UTC), numbers."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if value.tzinfo else value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


def records(sql: str) -> list[dict]:
    columns, rows = query(sql)
    return [dict(zip(columns, map(plain, row), strict=True)) for row in rows]


def published_marts() -> set[str]:
    if target() == "duckdb" and not warehouse_path().exists():
        return set()
    _, found = query("select table_name from information_schema.tables where table_schema = 'marts'")
    return {name for (name,) in found}


def missing_marts(required: tuple[str, ...], published: set[str]) -> list[str]:
    return [mart for mart in required if mart not in published]


def svg(chart: alt.Chart) -> Markup:
    """The chart as an SVG document, marked safe: vl-convert writes it, escaping the data's text."""
    return Markup(vl_convert.vegalite_to_svg(chart.to_dict()))


def base_chart(rows: list[dict], width: int = CHART_WIDTH, height: int = CHART_HEIGHT) -> alt.Chart:
    # vl-convert lays labels out with its own font's widths; a browser's sans-serif may be wider.
    return alt.Chart(alt.Data(values=rows), width=width, height=height, padding=CHART_PADDING)


def goals_per_month_chart(rows: list[dict]) -> alt.Chart:
    return (
        base_chart(rows)
        .mark_line(point=True)
        .encode(
            x=alt.X("utcyearmonth(month):T", title="Month"),
            y=alt.Y("goals:Q", title="Goals"),
            color=alt.Color("division_code:N", title="Division"),
            tooltip=["division_code:N", "month:N", "goals:Q"],
        )
    )


def active_vehicles_chart(rows: list[dict]) -> alt.Chart:
    return (
        base_chart(rows)
        .mark_bar()
        .encode(
            x=alt.X("utcyearmonthdate(day):O", title="Day"),
            y=alt.Y("active_vehicles:Q", title="Active vehicles"),
        )
    )


def last_event_types_chart(rows: list[dict]) -> alt.Chart:
    return (
        base_chart(rows)
        .mark_bar()
        .encode(
            x=alt.X("utcyearmonthdate(day):O", title="Day"),
            y=alt.Y("vehicles:Q", stack="normalize", title="Share of the day's vehicles", axis=alt.Axis(format="%")),
            color=alt.Color("last_event_type:N", title="Last event type", legend=alt.Legend(labelLimit=300)),
        )
    )


def events_per_hour_chart(rows: list[dict]) -> alt.Chart:
    return (
        base_chart(rows)
        .mark_bar()
        .encode(
            x=alt.X(
                "utcyearmonthdatehours(hour):T",
                title="Hour (UTC)",
                axis=alt.Axis(format="%d %b %H:%M", labelAngle=-45, labelOverlap=True),
            ),
            y=alt.Y("events:Q", title="Events"),
        )
    )


def rejected_records_chart(rows: list[dict]) -> alt.Chart:
    return (
        base_chart(rows, width=CHART_WIDTH - 300, height=alt.Step(24))
        .mark_bar()
        .encode(y=alt.Y("table:N", title=None), x=alt.X("records:Q", title="Rejected records"))
    )


def league_tables(rows: list[dict]) -> list[LeagueTable]:
    """The standings rows, already in display order, as one table per division-season."""
    tables = []
    for (division_code, season_code), group in itertools.groupby(
        rows, key=lambda row: (row["division_code"], row["season_code"])
    ):
        standings = list(group)
        first = standings[0]
        tables.append(LeagueTable(division_code, first["division_name"], season_code, first["season_label"], standings))
    return tables


def football_section(published: set[str]) -> FootballSection:
    missing = missing_marts(FOOTBALL_MARTS, published)
    if missing:
        return FootballSection(missing)
    goals = records(GOALS_PER_MONTH_SQL)
    return FootballSection(
        missing=[],
        leaders=records(LEADERS_SQL),
        league_tables=league_tables(records(LEAGUE_TABLES_SQL)),
        charts=[Chart("goals-per-month", "Goals per month, by division", svg(goals_per_month_chart(goals)))],
    )


def vehicle_days(active: list[dict], last_event_types: list[dict]) -> list[dict]:
    """Per day: active vehicles, and how many of them had each last event type."""
    types_by_day: dict[str, dict[str, int]] = {}
    for row in last_event_types:
        types_by_day.setdefault(row["day"], {})[row["last_event_type"]] = row["vehicles"]
    return [{**row, "last_event_types": types_by_day.get(row["day"], {})} for row in active]


def vehicles_section(published: set[str]) -> VehiclesSection:
    missing = missing_marts(VEHICLE_MARTS, published)
    if missing:
        return VehiclesSection(missing)
    active, mix, hourly = records(ACTIVE_VEHICLES_SQL), records(LAST_EVENT_TYPES_SQL), records(EVENTS_PER_HOUR_SQL)
    return VehiclesSection(
        missing=[],
        days=vehicle_days(active, mix),
        event_types=sorted({row["last_event_type"] for row in mix}),
        charts=[
            Chart("active-vehicles", "Active vehicles per day", svg(active_vehicles_chart(active))),
            Chart("last-event-types", "Last event type of the day's vehicles", svg(last_event_types_chart(mix))),
            Chart(
                "events-per-hour",
                f"Events per hour (the last {HOURLY_DAYS} days of data)",
                svg(events_per_hour_chart(hourly)),
            ),
        ],
    )


def utc_text(moment: datetime | None) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S}" if moment else ""


def readable_time(text: str) -> str:
    """An ISO instant read from a JSON file, as the page shows times; any other text as it is."""
    try:
        return utc_text(datetime.fromisoformat(text))
    except ValueError:
        return text


def quality_section() -> QualitySection:
    """What `python -m loaders status` reads, through its functions, and the last dbt gate."""
    tables = status.raw_tables()
    rejected = [
        RejectedTable(f"{table.schema}.{table.name}", table.rows, status.most_frequent_reasons(table))
        for table in status.rejected_tables(tables)
    ]
    gate = dbt_gate.last_gate()
    checked, freshness = status.freshness()
    section = QualitySection(
        mode=describe_mode(),
        raw_tables=tables,
        rejected=rejected,
        files_per_state=status.files_per_state(),
        failed_files=[replace(failed, failed_at=readable_time(failed.failed_at)) for failed in status.failed_files()],
        gate=gate[1] if gate else None,
        gate_finished_at=utc_text(gate[0] if gate else None),
        freshness_checked_at=utc_text(checked),
        freshness=[(source, state, readable_time(loaded)) for source, state, loaded in freshness],
    )
    if rejected:
        counts = [{"table": table.name, "records": table.rows} for table in rejected]
        section.charts.append(
            Chart("rejected-records", "Rejected records per table", svg(rejected_records_chart(counts)))
        )
    return section


def describe_warehouse() -> str:
    return f"the DuckDB warehouse {warehouse_path()}" if target() == "duckdb" else "the Postgres warehouse"


def render(**context: Any) -> str:
    templates = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return templates.get_template(TEMPLATE).render(**context)


def report_html(now: datetime | None = None) -> str:
    """The whole page, read from the warehouse and the data dir now (nothing is written)."""
    published = published_marts()
    return render(
        generated_at=utc_text(now or datetime.now(UTC)),
        warehouse=describe_warehouse(),
        environment=environment(),
        football=football_section(published),
        vehicles=vehicles_section(published),
        quality=quality_section(),
    )
