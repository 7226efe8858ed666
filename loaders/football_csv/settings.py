"""Constants of the football-data.co.uk source (DESIGN §6)."""

from __future__ import annotations

from core.settings import DBT_PROJECT_DIR

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
