"""Export the summary report (the dbt exposure `football_summary_report`): two CSV files and
report.html, the page people look at (orchestration/report_html.py).

    python -m orchestration.report      # or: make report

Everything is read before anything is written, and each file is written to a temporary name and
renamed, so a reader never sees half a report and a failed export leaves the previous one in place.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from core.cli import exit_promptly
from core.settings import data_dir, data_dir_or_exit
from core.warehouse import query
from orchestration.report_html import published_marts, report_html

REPORTS = {  # file -> (mart, order)
    "teams_per_competition.csv": ("rpt_teams_per_competition", "season, competition_code"),
    "league_leaders.csv": ("rpt_league_leaders", "season_label, division_code"),
}
HTML_REPORT = "report.html"


def report_dir() -> Path:
    return data_dir() / "reports"


def csv_text(columns: list[str], rows: list[tuple]) -> str:
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(columns)
    writer.writerows(rows)
    return text.getvalue()


def replace_whole(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.partial")
    with open(partial, "w", newline="", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(partial, path)


def export_reports(folder: Path | None = None) -> list[Path]:
    folder = folder or report_dir()
    folder.mkdir(parents=True, exist_ok=True)
    # A mart never built (its source never loaded) has no CSV; report.html says it is not loaded.
    published = published_marts()
    contents = {
        name: csv_text(*query(f"select * from marts.{mart} order by {order}"))
        for name, (mart, order) in REPORTS.items()
        if mart in published
    }
    contents[HTML_REPORT] = report_html()
    written = []
    for name, text in contents.items():
        replace_whole(folder / name, text)
        written.append(folder / name)
    return written


def main() -> int:
    data_dir_or_exit()
    for path in export_reports():
        print(f"report: {path}")
    return 0


if __name__ == "__main__":
    exit_promptly(main())
