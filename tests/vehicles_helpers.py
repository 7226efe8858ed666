"""Independent expectations for the vehicle tests, computed from the JSON files in Python."""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from core.warehouse import query
from lake.catalog import NAMESPACE, catalog
from loaders.vehicles.generate import EVENT_TYPES, SOURCES

HEX = re.compile(r"[0-9a-fA-F]+")


def parse_time(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def is_valid_event(record: object) -> bool:
    """The event contract of DESIGN §6, written out here rather than read from the registry."""
    if not isinstance(record, dict) or not HEX.fullmatch(str(record.get("vehicle_id") or "")):
        return False
    if record.get("event_type") not in EVENT_TYPES or record.get("event_source") not in (*SOURCES, None):
        return False
    try:
        parse_time(record["event_time"])
    except (KeyError, TypeError, ValueError):
        return False
    return True


def records_in(path: Path) -> list:
    """The records of a vehicle file: a JSON list, or the one list under its single key."""
    document = json.loads(path.read_bytes())
    if isinstance(document, list):
        return document
    (records,) = document.values()
    return records


def good_events(folder: Path) -> list[dict]:
    """Every valid event record in the files of a folder."""
    events = []
    for path in sorted(folder.glob("vehicles_events_*.json")):
        for record in records_in(path):
            if is_valid_event(record):
                events.append({**record, "at": parse_time(record["event_time"])})
    return events


def expected_daily_summary(events: list[dict]) -> dict[tuple[str, str], tuple[datetime, str]]:
    """(vehicle, day) -> (time, type) of the day's last event. daily_summary orders same-instant
    events by type, then source, value and id; only time and type are compared, and events
    equal in both give the same answer whichever wins, so the type is the whole tie rule here."""
    best: dict[tuple[str, str], tuple[datetime, str]] = {}
    for event in events:
        key = (event["vehicle_id"], event["at"].astimezone(UTC).date().isoformat())
        candidate = (event["at"], event["event_type"])
        current = best.get(key)
        if current is None or candidate[0] > current[0] or (candidate[0] == current[0] and candidate[1] < current[1]):
            best[key] = candidate
    return best


def lake_rows(table_name: str) -> list[dict]:
    return catalog().load_table(f"{NAMESPACE}.{table_name}").scan().to_arrow().to_pylist()


def lake_counts_per_day(table_name: str, time_column: str) -> Counter:
    return Counter(row[time_column].astimezone(UTC).date().isoformat() for row in lake_rows(table_name))


def warehouse_counts_per_day(table_name: str, time_column: str) -> Counter:
    _, rows = query(
        f"select cast(cast({time_column} at time zone 'UTC' as date) as varchar), count(*) "
        f"from raw_vehicles.{table_name} group by 1"
    )
    return Counter(dict(rows))


def count_files(folder: Path) -> int:
    """Data files in a lifecycle folder (failed/ also holds <file>.error.json beside each)."""
    if not folder.is_dir():
        return 0
    return sum(1 for path in folder.glob("*.json") if not path.name.endswith(".error.json"))
