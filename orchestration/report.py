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

from core.settings import data_dir, data_dir_or_exit
from core.warehouse import query

REPORTS = {  # file -> (mart, order)
    "teams_per_competition.csv": ("rpt_teams_per_competition", "season, competition_code"),
    "league_leaders.csv": ("rpt_league_leaders", "season_label, division_code"),
}


def report_dir() -> Path:
    return data_dir() / "reports"


def export_reports(folder: Path | None = None) -> list[Path]:
    folder = folder or report_dir()
    folder.mkdir(parents=True, exist_ok=True)
    # A mart never built (its source never loaded) has no report; read everything before writing.
    _, published = query("select table_name from information_schema.tables where table_schema = 'marts'")
    results = {
        name: query(f"select * from marts.{mart} order by {order}")
        for name, (mart, order) in REPORTS.items()
        if (mart,) in published
    }
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
