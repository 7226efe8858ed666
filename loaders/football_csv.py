"""dlt source for football-data.co.uk season CSVs (DESIGN §6).

One file per season and division, `{base_url}/{season}/{division}.csv`. The files differ by era
(7 to 120 columns, several date formats, ragged rows, BOMs, spreadsheet-mangled times), so the
parsing is done here in small pure functions and every raw column is kept as text: typing is
dbt's job. What the loader decides is only what it must to merge: the match key
(division, season, match_date, home_team, away_team).
"""

from __future__ import annotations

import csv
import io
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from pathlib import Path
from time import sleep
from urllib.parse import urlparse

import dlt
from dlt.sources.helpers import requests

from core.settings import DBT_PROJECT_DIR, as_list, project_path
from loaders.landing import archive, sha256_hex
from loaders.seasons import Season, parse_season, resolve_season_codes

log = logging.getLogger(__name__)

LIVE_BASE_URL = "https://www.football-data.co.uk/mmz4281"
DIVISIONS_SEED = DBT_PROJECT_DIR / "seeds" / "divisions.csv"
MATCH_KEY = ("division", "season", "match_date", "home_team", "away_team")
# The largest real season file is ~220 KB; anything far beyond is not one, and is not read whole.
MAX_FILE_BYTES = 32 << 20
# Columns the loader adds; a source header that normalises to one of these gets a suffix.
LOADER_COLUMNS = (
    "division",
    "season",
    "season_start_year",
    "match_date",
    "kickoff_time",
    "source_file_sha256",
    "source_line",
)
REQUIRED_HEADERS = ("date", "home_team", "away_team")


class FootballCsvError(ValueError):
    """A request or a file the loader cannot use; the message says which and why."""


# --- divisions -------------------------------------------------------------------------------


def known_divisions() -> dict[str, str]:
    """Division code -> name, from the dbt seed that also feeds dim_divisions."""
    with open(DIVISIONS_SEED, encoding="utf-8", newline="") as handle:
        return {row["division_code"]: row["division_name"] for row in csv.DictReader(handle)}


def validate_divisions(divisions: Sequence[str]) -> list[str]:
    valid = known_divisions()
    unknown = [code for code in divisions if code not in valid]
    if unknown:
        listing = ", ".join(f"{code} ({name})" for code, name in valid.items())
        raise FootballCsvError(f"unknown division code(s) {', '.join(unknown)}; valid codes: {listing}")
    return list(divisions)


# --- cell parsing ----------------------------------------------------------------------------

_DAY_FIRST_DATE = re.compile(r"(\d{1,2})[/.-](\d{1,2})[/.-](\d{4}|\d{2})")
_ISO_DATE = re.compile(r"(\d{4})-(\d{1,2})-(\d{1,2})")
_TRAILING_MIDNIGHT = re.compile(r"\s+0?0:00(:00)?$")
_KICKOFF = re.compile(r"(\d{1,2})(?:([:.])(\d{1,2}))?(?::\d{2})?")


def parse_match_date(text: str, season: Season) -> date:
    """Day-first dates in every format seen (dd/mm/yy, dd/mm/yyyy, dd-mm-yyyy, ...).

    Two-digit years take the century that puts the date inside the season. A date outside the
    season's window raises, so a wrong century or a swapped file cannot slip through.
    """
    cleaned = _TRAILING_MIDNIGHT.sub("", text.strip())
    if match := _ISO_DATE.fullmatch(cleaned):
        year, month, day = (int(part) for part in match.groups())
        candidates = [year]
    elif match := _DAY_FIRST_DATE.fullmatch(cleaned):
        day, month = int(match[1]), int(match[2])
        year = int(match[3])
        candidates = [year] if len(match[3]) == 4 else [1900 + year, 2000 + year]
    else:
        raise FootballCsvError(f"unparseable date {text!r}")
    parsed = []
    for year in candidates:
        try:
            parsed.append(date(year, month, day))
        except ValueError as error:
            raise FootballCsvError(f"invalid date {text!r}: {error}") from None
    for day_value in parsed:
        if season.contains(day_value):
            return day_value
    raise FootballCsvError(
        f"date {text!r} is outside season {season.code} ({season.first_day.isoformat()}..{season.last_day.isoformat()})"
    )


def parse_kickoff_time(text: str) -> time | None:
    """'19:45', and the spreadsheet-mangled '20' (20:00), '19.3' (19:30), '20.15' (20:15)."""
    cleaned = text.strip()
    if not cleaned:
        return None
    match = _KICKOFF.fullmatch(cleaned)
    if not match:
        raise FootballCsvError(f"unparseable kick-off time {text!r}")
    hour = int(match[1])
    minutes_text = match[3] or "0"
    # A spreadsheet stores 19:30 as the number 19.3: one decimal digit means tens of minutes.
    minute = int(minutes_text) * 10 if match[2] == "." and len(minutes_text) == 1 else int(minutes_text)
    if hour > 23 or minute > 59:
        raise FootballCsvError(f"kick-off time {text!r} is not a time of day")
    return time(hour, minute)


def to_identifier(header: str) -> str:
    """A safe, stable snake_case name: 'HomeTeam' -> home_team, 'B365>2.5' -> b365_over_2_5,
    '1XBH' -> _1xbh. The result is what dlt's naming convention leaves unchanged."""
    name = header.strip().replace(">", "_over_").replace("<", "_under_")
    name = re.sub(r"([a-z])([A-Z])", r"\1_\2", name)
    name = re.sub(r"[^0-9A-Za-z]+", "_", name).strip("_").lower()
    return f"_{name}" if name[:1].isdigit() else name


def normalise_headers(headers: Sequence[str]) -> list[str]:
    """Identifiers for a header row: empty names become unnamed_<position>, and a name that
    collides with an earlier one (or with a loader column) gets _2, _3, ..."""
    taken = set(LOADER_COLUMNS)
    names = []
    for position, header in enumerate(headers, start=1):
        base = to_identifier(header) or f"unnamed_{position}"
        name, suffix = base, 2
        while name in taken:
            name, suffix = f"{base}_{suffix}", suffix + 1
        taken.add(name)
        names.append(name)
    return names


def decode(raw: bytes) -> tuple[str, str]:
    """Text and the encoding used. football-data.co.uk serves UTF-8 (often with a BOM); older
    mirrors re-saved files as Windows-1252, which is tried next so no row is lost to encoding."""
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return raw.decode(encoding), encoding
        except UnicodeDecodeError:
            continue
    return raw.decode("latin-1"), "latin-1"


# --- file parsing ----------------------------------------------------------------------------


@dataclass
class ParsedFile:
    season: str
    division: str
    source: str
    sha256: str
    encoding: str = "utf-8-sig"
    matches: list[dict] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)
    warnings: list[dict] = field(default_factory=list)
    data_rows: int = 0
    blank_rows: int = 0
    landing_path: str | None = None
    etag: str | None = None
    last_modified: str | None = None


def _raw_line(fields: Sequence[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(fields)
    return buffer.getvalue()


def parse_season_file(raw: bytes, season_text: str, division: str, source: str) -> ParsedFile:
    """Split one season file into loadable matches, rejected rows (with reasons) and warnings."""
    season = parse_season(season_text)
    text, encoding = decode(raw)
    parsed = ParsedFile(season.code, division, source, sha256_hex(raw), encoding)
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    columns = normalise_headers(header or [])
    missing = [name for name in REQUIRED_HEADERS if name not in columns]
    if missing:
        raise FootballCsvError(
            f"{source}: no header row with Date, HomeTeam and AwayTeam (missing {', '.join(missing)})"
        )
    seen_keys: dict[tuple, int] = {}
    for fields in reader:
        line = reader.line_num
        if not any(value.strip() for value in fields):
            parsed.blank_rows += 1
            continue
        parsed.data_rows += 1
        context = {
            "season": season.code,
            "division": division,
            "source_file_sha256": parsed.sha256,
            "source_line": line,
        }
        issue = {**context, "raw_record": _raw_line(fields)}
        extra = fields[len(columns) :]
        if any(value.strip() for value in extra):
            detail = f"{len(extra)} field(s) beyond the {len(columns)}-column header dropped: {extra}"
            parsed.warnings.append({**issue, "warning_code": "extra_fields", "detail": detail})
        if len(fields) < len(columns):
            detail = f"{len(fields)} of {len(columns)} fields; padded with nulls"
            parsed.warnings.append({**issue, "warning_code": "missing_fields", "detail": detail})
        # Empty cells are left out rather than loaded as nulls: a column no file has filled
        # (trailing unnamed columns, say) then never reaches the warehouse.
        values = {name: value.strip() for name, value in zip(columns, fields, strict=False) if value.strip()}
        try:
            record = _match_record(values, season, division)
        except FootballCsvError as error:
            parsed.rejected.append({**issue, "reason": str(error)})
            continue
        key = tuple(record[name] for name in MATCH_KEY)
        if key in seen_keys:
            parsed.rejected.append({**issue, "reason": f"duplicate of the match on line {seen_keys[key]}"})
            continue
        seen_keys[key] = line
        try:
            record["kickoff_time"] = parse_kickoff_time(values.get("time", ""))
        except FootballCsvError as error:
            parsed.warnings.append({**issue, "warning_code": "unparsed_time", "detail": str(error)})
        parsed.matches.append({**record, **context})
    return parsed


def _match_record(values: dict[str, str | None], season: Season, division: str) -> dict:
    if not values.get("date"):
        raise FootballCsvError("no match date")
    if not values.get("home_team") or not values.get("away_team"):
        raise FootballCsvError("no home or away team")
    match_date = parse_match_date(values["date"], season)
    return {
        **values,
        "division": division,
        "season": season.code,
        "season_start_year": season.start_year,
        "match_date": match_date,
        "kickoff_time": None,
    }


# --- fetching --------------------------------------------------------------------------------


@dataclass
class Fetched:
    raw: bytes
    etag: str | None = None
    last_modified: str | None = None
    not_modified: bool = False


def file_location(base_url: str, season: str, division: str) -> str:
    return f"{base_url.rstrip('/')}/{season}/{division}.csv"


def _is_http(location: str) -> bool:
    return urlparse(location).scheme in ("http", "https")


def _local_path(location: str) -> Path:
    return project_path(urlparse(location).path if location.startswith("file://") else location)


def fetch(location: str, previous: dict) -> Fetched | None:
    """The file's bytes, or None when it is missing (no such season/division).

    Over HTTP the previous ETag/Last-Modified make the request conditional; a 304 comes back
    as `not_modified` with no bytes.
    """
    if not _is_http(location):
        path = _local_path(location)
        try:
            _refuse_if_too_large(location, path.stat().st_size)
            return Fetched(path.read_bytes())
        except FileNotFoundError:
            return None
    headers = {}
    if previous.get("etag"):
        headers["If-None-Match"] = previous["etag"]
    if previous.get("last_modified"):
        headers["If-Modified-Since"] = previous["last_modified"]
    try:
        response = requests.get(location, headers=headers, stream=True)
    except requests.HTTPError as error:
        if error.response is not None and error.response.status_code == 404:
            return None
        raise FootballCsvError(f"{location}: {error}") from error
    with response:
        if response.status_code == 304:
            return Fetched(b"", previous.get("etag"), previous.get("last_modified"), not_modified=True)
        _refuse_if_too_large(location, int(response.headers.get("Content-Length") or 0))
        body = bytearray()
        for chunk in response.iter_content(1 << 20):
            body += chunk
            _refuse_if_too_large(location, len(body))
    return Fetched(bytes(body), response.headers.get("ETag"), response.headers.get("Last-Modified"))


class FileTooLarge(FootballCsvError):
    """Refused before it is read whole: memory stays bounded whatever a server sends."""


def _refuse_if_too_large(location: str, size: int) -> None:
    if size > MAX_FILE_BYTES:
        raise FileTooLarge(
            f"{location} is larger than {MAX_FILE_BYTES >> 20} MiB: not a football-data.co.uk season file"
        )


# --- the dlt source --------------------------------------------------------------------------


@dataclass
class LoadReport:
    """What a run did with each requested file; the CLI prints it."""

    loaded: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seasons: list[str] = field(default_factory=list)  # the codes requested, `current` resolved


@dlt.source(name="football_csv")
def football_csv(
    seasons: list[str] = dlt.config.value,
    divisions: list[str] = dlt.config.value,
    base_url: str = LIVE_BASE_URL,
    force: bool = False,
    report: LoadReport | None = None,
    request_delay: float = 0.0,
):
    """football-data.co.uk results for every season × division.

    Args:
        seasons: season codes such as "2425" (2024/25), or "current" / "previous" (loaders/seasons.py).
        divisions: division codes such as "E0" (see dbt_project/seeds/divisions.csv).
        base_url: the live site, a local folder or a file:// URL laid out as <season>/<division>.csv.
        force: re-load files even when they are unchanged since the last load.
        report: filled in with what happened to each file.
        request_delay: seconds to wait between downloads (politeness for backfills over HTTP).
    """
    season_list = resolve_season_codes(seasons)
    report = report or LoadReport()
    report.seasons = season_list
    division_list = validate_divisions(as_list(divisions))
    files = season_files(season_list, division_list, base_url, force, report, request_delay)
    return (
        files | matches,
        files | rejected_rows,
        files | row_warnings,
        files | source_files,
    )


@dlt.resource(selected=False)
def season_files(
    seasons: list[str], divisions: list[str], base_url: str, force: bool, report: LoadReport, request_delay: float
) -> Iterator[ParsedFile]:
    """Fetch, archive and parse each file that changed since the last successful load.

    What was loaded is remembered in the resource state (committed with the load package), so
    an unchanged file is neither re-downloaded (conditional GET) nor re-parsed (content hash).
    """
    known = dlt.current.resource_state().setdefault("files", {})
    wanted = [(season, division) for season in seasons for division in divisions]
    for done, (season, division) in enumerate(wanted, start=1):
        if request_delay and _is_http(base_url) and done > 1:
            sleep(request_delay)
        parsed = _fetch_and_parse(season, division, base_url, {} if force else known, report)
        name = f"{season}/{division}"
        if parsed is not None:
            known[name] = {"sha256": parsed.sha256, "etag": parsed.etag, "last_modified": parsed.last_modified}
            yield parsed
        log.info("football_csv: %d/%d files, %s %s", done, len(wanted), name, _outcome_of(name, report))


def _fetch_and_parse(season: str, division: str, base_url: str, known: dict, report: LoadReport) -> ParsedFile | None:
    """The file parsed when it changed since the last load; otherwise None, its outcome in `report`."""
    name = f"{season}/{division}"
    location = file_location(base_url, season, division)
    previous = known.get(name, {})
    try:
        fetched = fetch(location, previous)
    except FileTooLarge as error:
        log.error("football_csv: %s", error)
        report.failed[name] = str(error)
        return None
    if fetched is None:
        log.warning("football_csv: %s not found at %s; skipped", name, location)
        report.missing.append(name)
        return None
    digest = sha256_hex(fetched.raw)
    if fetched.not_modified or digest == previous.get("sha256"):
        report.unchanged.append(name)
        return None
    landing_path = archive(fetched.raw, "football_csv", season, division, suffix=".csv")
    try:
        parsed = parse_season_file(fetched.raw, season, division, location)
    except FootballCsvError as error:
        log.error("football_csv: %s", error)
        report.failed[name] = str(error)
        return None
    parsed.landing_path = landing_path
    parsed.etag, parsed.last_modified = fetched.etag, fetched.last_modified
    report.loaded.append(name)
    return parsed


def _outcome_of(name: str, report: LoadReport) -> str:
    for outcome, names in (("loaded", report.loaded), ("unchanged", report.unchanged), ("not found", report.missing)):
        if name in names:
            return outcome
    return "failed"


@dlt.transformer(
    write_disposition="merge",
    primary_key=MATCH_KEY,
    columns={
        "match_date": {"data_type": "date", "nullable": False},
        "kickoff_time": {"data_type": "time"},
        "season_start_year": {"data_type": "bigint", "nullable": False},
        "source_line": {"data_type": "bigint"},
    },
)
def matches(parsed: ParsedFile) -> Iterator[list[dict]]:
    """One row per match; every source column as text, plus the parsed key and kick-off time."""
    yield parsed.matches


@dlt.transformer(write_disposition="merge", primary_key=("source_file_sha256", "source_line"))
def rejected_rows(parsed: ParsedFile) -> Iterator[list[dict]]:
    """Rows that could not become a match (no date or teams, outside the season, duplicates)."""
    yield parsed.rejected


@dlt.transformer(write_disposition="merge", primary_key=("source_file_sha256", "source_line", "warning_code"))
def row_warnings(parsed: ParsedFile) -> Iterator[list[dict]]:
    """Rows that loaded but were repaired: ragged rows, unreadable kick-off times."""
    yield parsed.warnings


@dlt.transformer(
    write_disposition="merge",
    primary_key=("season", "division"),
    # Validators a local or mirrored file does not have: typed, so the columns exist when null.
    columns={"etag": {"data_type": "text"}, "last_modified": {"data_type": "text"}},
)
def source_files(parsed: ParsedFile) -> Iterator[dict]:
    """The ledger: the current version of each season file and what became of its rows."""
    yield {
        "season": parsed.season,
        "division": parsed.division,
        "source": parsed.source,
        "sha256": parsed.sha256,
        "etag": parsed.etag,
        "last_modified": parsed.last_modified,
        "landing_path": parsed.landing_path,
        "encoding": parsed.encoding,
        "data_rows": parsed.data_rows,
        "blank_rows": parsed.blank_rows,
        "loaded_rows": len(parsed.matches),
        "rejected_rows": len(parsed.rejected),
        "warning_rows": len(parsed.warnings),
        "fetched_at": datetime.now(UTC),
    }
