"""Export the football summary report (the dbt exposure `football_summary_report`) as CSV.

    python -m orchestration.report      # or: make report

Each file is written to a temporary name and renamed, so a reader never sees half a report and
a failed export leaves the previous report in place.
"""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

from loaders.settings import data_dir, data_dir_or_exit
from loaders.warehouse import query

REPORTS = {
    "teams_per_competition.csv": "select * from marts.rpt_teams_per_competition order by season, competition_code",
    "league_leaders.csv": "select * from marts.rpt_league_leaders order by season_label, division_code",
}


def report_dir() -> Path:
    return data_dir() / "reports"


def export_reports(folder: Path | None = None) -> list[Path]:
    folder = folder or report_dir()
    folder.mkdir(parents=True, exist_ok=True)
    results = {name: query(sql) for name, sql in REPORTS.items()}  # read everything before writing
    written = []
    for name, (columns, rows) in results.items():
        path = folder / name
        partial = path.with_name(f".{name}.partial")
        with open(partial, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(columns)
            writer.writerows(rows)
        os.replace(partial, path)
        written.append(path)
    return written


def main() -> int:
    data_dir_or_exit()
    for path in export_reports():
        print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
