"""Football seasons: codes, start years, and `current` / `previous` resolved from the UTC date.

A season starts on 1 July and is named by its start year (football-data.org: 2025 = 2025/26)
or by a code of both years (football-data.co.uk: "2526"). Both sources, the CLI and the flows
resolve `current` and `previous` here, so a scheduled run always asks for the season of its day.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime

from core.settings import as_list

FIRST_MONTH_AND_DAY = (7, 1)  # a new season starts on 1 July
RELATIVE_SEASONS = {"current": 0, "previous": -1}
TODAY_VARIABLE = "ELT_TODAY"


class SeasonError(ValueError):
    """A season the loaders cannot understand; the message says what is accepted."""


@dataclass(frozen=True)
class Season:
    code: str
    start_year: int

    @property
    def first_day(self) -> date:
        return date(self.start_year, *FIRST_MONTH_AND_DAY)

    @property
    def last_day(self) -> date:
        # Match dates are checked against a window that tolerates late play-offs and replays.
        return date(self.start_year + 1, 8, 31)

    def contains(self, day: date) -> bool:
        return self.first_day <= day <= self.last_day


def today_utc() -> date:
    """Today's date in UTC; ELT_TODAY=YYYY-MM-DD sets it (tests, replays of a past run)."""
    fixed = os.environ.get(TODAY_VARIABLE, "").strip()
    if not fixed:
        return datetime.now(UTC).date()
    try:
        return date.fromisoformat(fixed)
    except ValueError:
        raise SeasonError(f"{TODAY_VARIABLE}={fixed!r} is not a date like 2026-07-01") from None


def season_start_year(day: date) -> int:
    """The start year of the season `day` falls in: 2026-06-30 -> 2025, 2026-07-01 -> 2026."""
    return day.year if (day.month, day.day) >= FIRST_MONTH_AND_DAY else day.year - 1


def season_code(start_year: int) -> str:
    return f"{start_year % 100:02d}{(start_year + 1) % 100:02d}"


def parse_season(code: str) -> Season:
    """'2425' -> 2024/25, '9394' -> 1993/94. football-data.co.uk starts in 1993."""
    code = str(code).strip()
    if not re.fullmatch(r"\d{4}", code) or (int(code[:2]) + 1) % 100 != int(code[2:]):
        raise SeasonError(
            f"season {code!r} is not a football-data.co.uk season code like '2425' (2024/25), 'current' or 'previous'"
        )
    first = int(code[:2])
    return Season(code, (1900 if first >= 90 else 2000) + first)


def seasons_between(first_start_year: int, last_start_year: int) -> list[str]:
    """Season codes for a backfill, both ends included: 2019..2021 -> 1920, 2021, 2122."""
    if first_start_year > last_start_year:
        raise SeasonError(f"first season {first_start_year} is after last season {last_start_year}")
    return [season_code(year) for year in range(first_start_year, last_start_year + 1)]


def resolve_start_year(season: int | str, today: date | None = None) -> int:
    """'current', 'previous' or a start year such as 2024 -> the start year."""
    text = str(season).strip().lower()
    if text in RELATIVE_SEASONS:
        return season_start_year(today or today_utc()) + RELATIVE_SEASONS[text]
    if re.fullmatch(r"(19|20)\d\d", text):
        return int(text)
    raise SeasonError(f"season {season!r} is not a start year like 2024, 'current' or 'previous'")


def resolve_season_codes(seasons: str | Sequence[str], today: date | None = None) -> list[str]:
    """['previous', 'current'], codes like '2425', or a mix -> distinct season codes, in order."""
    codes = [_season_code_of(season.lower(), today) for season in as_list(seasons)]
    return list(dict.fromkeys(codes))


def _season_code_of(season: str, today: date | None) -> str:
    if season in RELATIVE_SEASONS:
        return season_code(resolve_start_year(season, today))
    return parse_season(season).code


def resolve_season_range(first: int | str, last: int | str, today: date | None = None) -> list[str]:
    """Backfill bounds (start years, 'current' or 'previous') -> the season codes between them."""
    return seasons_between(resolve_start_year(first, today), resolve_start_year(last, today))
