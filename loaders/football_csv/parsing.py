"""Parsing of football-data.co.uk season CSVs: pure functions, no I/O but the divisions seed.

The files differ by era (7 to 120 columns, several date formats, ragged rows, BOMs,
spreadsheet-mangled times), so every raw column is kept as text: typing is dbt's job. What the
loader decides is only what it must to merge: the match key
(division, season, match_date, home_team, away_team).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, time

from loaders.football_csv.settings import DIVISIONS_SEED, LOADER_COLUMNS, MATCH_KEY, REQUIRED_HEADERS
from loaders.landing import sha256_hex
from loaders.seasons import Season, parse_season


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
