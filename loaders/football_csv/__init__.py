"""dlt source for football-data.co.uk season CSVs (DESIGN §6).

One file per season and division, `{base_url}/{season}/{division}.csv`. Parsing is in
`parsing`, fetching and the per-file record in `helpers`, constants in `settings`; here only
the source and its resources. Nothing is fetched until the pipeline runs the resources.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from time import sleep

import dlt

from core.settings import as_list
from loaders.football_csv.helpers import fetch_and_parse, file_name, is_http, last_run, remember
from loaders.football_csv.parsing import FootballCsvError, ParsedFile, validate_divisions
from loaders.football_csv.settings import LIVE_BASE_URL, MATCH_KEY
from loaders.seasons import resolve_season_codes

__all__ = ["LIVE_BASE_URL", "FootballCsvError", "football_csv", "last_run"]

log = logging.getLogger(__name__)


@dlt.source(name="football_csv")
def football_csv(
    seasons: list[str] = dlt.config.value,
    divisions: list[str] = dlt.config.value,
    base_url: str = LIVE_BASE_URL,
    force: bool = False,
    request_delay: float = 0.0,
):
    """football-data.co.uk results for every season × division.

    What each run did with each file is recorded in the `season_files` resource state; read it
    back with `last_run(pipeline)`.

    Args:
        seasons: season codes such as "2425" (2024/25), or "current" / "previous" (loaders/seasons.py).
        divisions: division codes such as "E0" (see dbt_project/seeds/divisions.csv).
        base_url: the live site, a local folder or a file:// URL laid out as <season>/<division>.csv.
        force: re-load files even when they are unchanged since the last load.
        request_delay: seconds to wait between downloads (politeness for backfills over HTTP).
    """
    season_list = resolve_season_codes(seasons)
    division_list = validate_divisions(as_list(divisions))
    files = season_files(season_list, division_list, base_url, force, request_delay)
    return (
        files | matches,
        files | rejected_rows,
        files | row_warnings,
        files | source_files,
    )


@dlt.resource(selected=False)
def season_files(
    seasons: list[str], divisions: list[str], base_url: str, force: bool, request_delay: float
) -> Iterator[ParsedFile]:
    """Fetch, archive and parse each file that changed since the last successful load.

    The resource state (committed with the load package) keeps, per file, the version last
    loaded, so an unchanged file is neither re-downloaded (conditional GET) nor re-parsed
    (content hash), and what this run found for it, with the request it was part of.
    """
    state = dlt.current.resource_state()
    known = state.setdefault("files", {})
    state["last_request"] = {"seasons": seasons, "divisions": divisions}
    wanted = [(season, division) for season in seasons for division in divisions]
    for done, (season, division) in enumerate(wanted, start=1):
        if request_delay and is_http(base_url) and done > 1:
            sleep(request_delay)
        name = file_name(season, division)
        entry = known.setdefault(name, {})
        checked = fetch_and_parse(season, division, base_url, {} if force else entry)
        remember(entry, checked)
        if checked.parsed is not None:
            yield checked.parsed
        log.info("football_csv: %d/%d files, %s %s", done, len(wanted), name, checked.outcome)


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
