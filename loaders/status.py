"""`python -m loaders status`: what is loaded, as readable tables.

The run mode the data dir remembers, rows and last load time per raw table, rejected-record
tables, vehicle files per lifecycle state, and the last `dbt source freshness` result (written by the `elt` flow).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from core.settings import DBT_PROJECT_DIR, data_dir, target, warehouse_path
from core.warehouse import query
from lake.files import STATES
from loaders.exactly_once import LEDGER
from loaders.modes import describe_mode

RAW_SCHEMA_PATTERN = "raw\\_%"


@dataclass
class RawTable:
    schema: str
    name: str
    rows: int
    last_loaded_at: datetime | None


def is_bookkeeping(table_name: str) -> bool:
    """dlt's own tables (_dlt_loads, _dlt_version, …) and the lake load's ledger: not data."""
    return table_name.startswith("_dlt") or table_name == LEDGER


def raw_tables() -> list[RawTable]:
    """Every raw table dlt loaded (not bookkeeping, nor merge-staging tables). The last load
    is the table's newest _dlt_load_id, else (Arrow loads, child tables) its dataset's last load."""
    if target() == "duckdb" and not warehouse_path().exists():
        return []
    _, found = query(
        "select table_schema, table_name from information_schema.tables "
        "where table_schema like %s escape '\\' and table_schema not like %s escape '\\' order by 1, 2",
        [RAW_SCHEMA_PATTERN, "%\\_staging"],
    )
    columns = _columns_by_table()
    last_dataset_load = {schema: _last_dataset_load(schema) for schema, name in found if name == "_dlt_loads"}
    tables = []
    for schema, name in found:
        if is_bookkeeping(name):
            continue
        quoted = _quoted(schema, name)
        if "_dlt_load_id" in columns.get((schema, name), ()):
            _, [(rows, last_load_id)] = query(f"select count(*), max(_dlt_load_id) from {quoted}")
            last_loaded_at = _load_time(last_load_id)
        else:
            _, [(rows,)] = query(f"select count(*) from {quoted}")
            last_loaded_at = last_dataset_load.get(schema)
        tables.append(RawTable(schema, name, rows, last_loaded_at))
    return tables


def rejected_tables(tables: list[RawTable]) -> list[RawTable]:
    """The rejected-records tables among the raw tables (football rows, vehicle records)."""
    return [table for table in tables if "rejected" in table.name]


def most_frequent_reasons(table: RawTable, limit: int = 3) -> list[tuple[str, int]]:
    """(reason, records) for the reasons a rejected-records table gives most often."""
    if "reason" not in _columns_by_table().get((table.schema, table.name), ()):
        return []
    _, found = query(
        f"select reason, count(*) as records from {_quoted(table.schema, table.name)} "
        f"group by reason order by records desc, reason limit {int(limit)}"
    )
    return [(reason, records) for reason, records in found]


def _quoted(schema: str, name: str) -> str:
    """Names read from information_schema, quoted as SQL identifiers (embedded quotes doubled)."""
    return ".".join('"' + part.replace('"', '""') + '"' for part in (schema, name))


def _last_dataset_load(schema: str) -> datetime | None:
    _, [(last,)] = query(f"select max(inserted_at) from {_quoted(schema, '_dlt_loads')} where status = 0")
    return last.astimezone(UTC) if last else None


def _columns_by_table() -> dict[tuple[str, str], set[str]]:
    _, found = query(
        "select table_schema, table_name, column_name from information_schema.columns "
        "where table_schema like %s escape '\\'",
        [RAW_SCHEMA_PATTERN],
    )
    columns: dict[tuple[str, str], set[str]] = {}
    for schema, table, column in found:
        columns.setdefault((schema, table), set()).add(column)
    return columns


def _load_time(load_id: str | None) -> datetime | None:
    """dlt load ids are the load's start time in epoch seconds."""
    if not load_id:
        return None
    return datetime.fromtimestamp(float(load_id), UTC)


def files_per_state(root: Path | None = None) -> dict[str, dict[str, int]]:
    """{file_type: {state: count}} for the vehicle file lifecycle folders."""
    root = root or data_dir()
    counts: dict[str, dict[str, int]] = {}
    for state in STATES:
        folder = root / state
        if not folder.is_dir():
            continue
        for path in folder.rglob("*.json"):
            if path.name.endswith(".error.json"):
                continue
            file_type = path.parent.name if path.parent != folder else "(not yet sorted)"
            counts.setdefault(file_type, {}).setdefault(state, 0)
            counts[file_type][state] += 1
    return counts


@dataclass
class FailedFile:
    file_type: str
    name: str
    reason: str
    detail: str
    failed_at: str


def failed_files(root: Path | None = None) -> list[FailedFile]:
    """Every vehicle file parked in failed/<type>/, with what its <file>.error.json says."""
    folder = (root or data_dir()) / "failed"
    found = []
    for path in sorted(folder.rglob("*.error.json")):
        error = json.loads(path.read_text(encoding="utf-8"))
        found.append(
            FailedFile(
                file_type=error.get("file_type", path.parent.name),
                name=error.get("file", path.name.removesuffix(".error.json")),
                reason=error.get("reason", ""),
                detail=error.get("detail", ""),
                failed_at=error.get("failed_at", ""),
            )
        )
    return found


def freshness(results: Path | None = None) -> tuple[datetime | None, list[tuple[str, str, str]]]:
    """When freshness was last checked and (source, status, max loaded at) per source."""
    candidates = [
        data_dir() / "dbt_target" / "sources.json",  # the elt flow's check
        DBT_PROJECT_DIR / "target" / "sources.json",  # a plain `dbt source freshness`
    ]
    existing = [path for path in ([results] if results else candidates) if path.exists()]
    if not existing:
        return None, []
    results = max(existing, key=lambda path: path.stat().st_mtime)  # the flow's or a plain dbt run's
    document = json.loads(results.read_text())
    checked = datetime.fromisoformat(document["metadata"]["generated_at"].replace("Z", "+00:00"))
    rows = [
        (
            result["unique_id"].removeprefix("source.elt."),
            result["status"],
            result.get("max_loaded_at") or "-",
        )
        for result in document["results"]
    ]
    return checked, sorted(rows)


def render_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * width for width in widths))
    lines += [
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    return "\n".join(lines)


def report() -> str:
    sections = [
        f"Warehouse: {target()}" + (f" ({warehouse_path()})" if target() == "duckdb" else "") + "\n" + describe_mode()
    ]
    tables = raw_tables()
    if tables:
        sections.append(
            render_table(
                ["raw table", "rows", "last loaded (UTC)"],
                [
                    [
                        f"{t.schema}.{t.name}",
                        f"{t.rows:,}",
                        f"{t.last_loaded_at:%Y-%m-%d %H:%M:%S}" if t.last_loaded_at else "-",
                    ]
                    for t in tables
                ],
            )
        )
        rejected = rejected_tables(tables)
        sections.append(
            "Rejected records: " + (", ".join(f"{t.schema}.{t.name} {t.rows:,}" for t in rejected) or "none")
        )
    else:
        sections.append("Nothing loaded yet (make load or make run).")
    files = files_per_state()
    if files:
        sections.append(
            render_table(
                ["vehicle file type", *STATES],
                [
                    [file_type, *(str(states.get(state, 0)) for state in STATES)]
                    for file_type, states in sorted(files.items())
                ],
            )
        )
    else:
        sections.append("No vehicle files in the lifecycle folders.")
    checked, sources = freshness()
    if checked:
        sections.append(
            f"Source freshness (checked {checked:%Y-%m-%d %H:%M:%S} UTC):\n"
            + render_table(["source", "status", "max loaded at"], [list(row) for row in sources])
        )
    else:
        sections.append("Source freshness: not checked yet (make run, or dbt source freshness).")
    return "\n\n".join(sections)
