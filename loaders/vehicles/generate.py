"""Realistic vehicle telemetry files (there is no public data set).

    python -m loaders.vehicles.generate --files 24 --events-per-file 500 --seed 7 [--quirks]
    python -m loaders.vehicles.generate --continuous --interval 60     # a file pair a minute

Each "file" is an hour of a fleet's life: `vehicles_events_<stamp>.json` with M events and
`vehicles_status_<stamp>.json` with a status report per tenth event. With --quirks a share of
the realistic defects DESIGN §6 lists is mixed in, and the returned manifest says exactly
which records are bad and the exact reason each must be rejected with (written here, from
the contract in DESIGN §6, not read from the registry), so tests can check that every good one
lands and every bad one is rejected with its reason.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from core.cli import exit_promptly
from lake.files import state_dir

EVENT_TYPES = (
    "start_drive",
    "end_drive",
    "door_open",
    "door_close",
    "accident",
    "parking",
    "speed_limit_exceeded",
    "engine_start",
    "engine_stop",
)
SOURCES = ("mobile", "device", "sensor")
STATUSES = ("driving", "parked", "accident", "garage", "maintenance", "offline")
DOORS = ("front_left", "front_right", "rear_left", "rear_right", "trunk")
START = datetime(2025, 11, 1, tzinfo=UTC)
HEX_ID = "^[0-9a-fA-F]+$"  # the contract's vehicle id pattern


@dataclass
class Manifest:
    """What was generated: the counts a correct pipeline must end with."""

    files: list[str] = field(default_factory=list)
    good: dict[str, int] = field(default_factory=lambda: {"vehicles_events": 0, "vehicles_status": 0})
    duplicates: dict[str, int] = field(default_factory=lambda: {"vehicles_events": 0, "vehicles_status": 0})
    rejected: dict[str, list[str]] = field(default_factory=lambda: {"vehicles_events": [], "vehicles_status": []})
    failed_files: dict[str, str] = field(default_factory=dict)


def fleet(rng: random.Random, size: int) -> list[str]:
    return [f"{rng.getrandbits(48):012x}" for _ in range(size)]


def _iso(moment: datetime, rng: random.Random, quirks: bool) -> str:
    if quirks and rng.random() < 0.05:
        return moment.strftime("%Y-%m-%dT%H:%M:%S")  # naive: UTC by convention
    if quirks and rng.random() < 0.05:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def event_value(event_type: str, rng: random.Random) -> str | None:
    match event_type:
        case "start_drive" | "end_drive":
            return str(rng.randint(1_000, 250_000))  # odometer, km
        case "door_open" | "door_close":
            return rng.choice(DOORS)
        case "accident":
            return rng.choice(("minor", "moderate", "severe"))
        case "speed_limit_exceeded":
            return str(rng.randint(55, 190))  # km/h
        case "parking":
            return rng.choice(("street", "garage", "lot"))
        case _:
            return None


def make_event(vehicle_id: str, moment: datetime, rng: random.Random, quirks: bool) -> dict:
    event_type = rng.choice(EVENT_TYPES)
    extra = {
        "location": {"lat": round(rng.uniform(45.0, 55.0), 5), "lon": round(rng.uniform(5.0, 15.0), 5)},
        "speed_kmh": rng.randint(0, 180),
        "battery_pct": rng.randint(5, 100),
    }
    key = "event_extra_data:" if quirks and rng.random() < 0.05 else "event_extra_data"
    return {
        "vehicle_id": vehicle_id,
        "event_time": _iso(moment, rng, quirks),
        "event_source": rng.choice(SOURCES),
        "event_type": event_type,
        "event_value": event_value(event_type, rng),
        key: extra,
    }


def make_status(vehicle_id: str, moment: datetime, rng: random.Random, quirks: bool) -> dict:
    return {
        "vehicle_id": vehicle_id,
        "report_time": _iso(moment, rng, quirks),
        "status_source": rng.choice(SOURCES),
        "status": rng.choice(STATUSES),
    }


def _hour_of_records(kind, vehicles, hour_end, count, rng, quirks, manifest, file_type):
    records = []
    for _ in range(count):
        moment = hour_end - timedelta(seconds=rng.randint(1, 3600), milliseconds=rng.randint(0, 999))
        record = kind(rng.choice(vehicles), moment, rng, quirks)
        if quirks and rng.random() < 0.03:
            record["vehicle_id"] = "VH-" + record["vehicle_id"][:6].upper() + "Z"  # not hex
            manifest.rejected[file_type].append(f"vehicle_id does not match {HEX_ID}: {record['vehicle_id']}")
        else:
            manifest.good[file_type] += 1
        records.append(record)
        if quirks and rng.random() < 0.02:
            records.append(dict(record))  # the same record delivered twice
            if record["vehicle_id"].startswith("VH-"):
                manifest.rejected[file_type].append(f"vehicle_id does not match {HEX_ID}: {record['vehicle_id']}")
            else:
                manifest.good[file_type] += 1
                manifest.duplicates[file_type] += 1
    return records


def rule_breakers(vehicle_id: str, moment: datetime) -> dict[str, list[tuple[object, str]]]:
    """Per file type, one record for each rule kind the registry can express (non-nullable,
    typed, pattern, allowed values, not an object), with the exact reason it must be rejected for."""
    at = moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    event = {"vehicle_id": vehicle_id, "event_time": at, "event_source": "device", "event_type": "parking"}
    event |= {"event_value": "street", "event_extra_data": {"location": {"lat": 50.0, "lon": 8.0}}}
    status = {"vehicle_id": vehicle_id, "report_time": at, "status_source": "sensor", "status": "parked"}

    def without(record: dict, key: str) -> dict:
        return {k: v for k, v in record.items() if k != key}

    types, sources, statuses = ", ".join(EVENT_TYPES), ", ".join(SOURCES), ", ".join(STATUSES)
    return {
        "vehicles_events": [
            (without(event, "vehicle_id"), "vehicle_id is missing"),
            ({**event, "event_time": None}, "event_time is missing"),
            ({**event, "event_time": "half past ten"}, "event_time is not a timestamp: half past ten"),
            (without(event, "event_type"), "event_type is missing"),
            ({**event, "event_type": "teleport"}, f"event_type teleport is not one of {types}"),
            ({**event, "event_source": "pigeon"}, f"event_source pigeon is not one of {sources}"),
            (
                without({**event, "vehicle_id": "VH-2"}, "event_time"),
                f"vehicle_id does not match {HEX_ID}: VH-2; event_time is missing",
            ),
            (None, "record is not a JSON object"),
            (5, "record is not a JSON object"),
        ],
        "vehicles_status": [
            (without(status, "status"), "status is missing"),
            ({**status, "status": "flying"}, f"status flying is not one of {statuses}"),
            ({**status, "report_time": "soon"}, "report_time is not a timestamp: soon"),
            ({**status, "status_source": "pigeon"}, f"status_source pigeon is not one of {sources}"),
            (None, "record is not a JSON object"),
            ([vehicle_id, at], "record is not a JSON object"),
        ],
    }


def generate(
    out: Path,
    files: int,
    events_per_file: int,
    seed: int = 7,
    quirks: bool = False,
    start: datetime = START,
    vehicles: int = 50,
    fleet_seed: int | None = None,
) -> Manifest:
    """`fleet_seed` keeps the fleet of an earlier call made with that seed (late or extra
    files for the same vehicles); by default the fleet comes from `seed`."""
    rng = random.Random(seed)
    fleet_ids = fleet(rng if fleet_seed is None else random.Random(fleet_seed), vehicles)
    out.mkdir(parents=True, exist_ok=True)
    manifest = Manifest()
    hours = [start + timedelta(hours=i + 1) for i in range(files)]
    if quirks:
        rng.shuffle(hours)  # files arrive out of chronological order
    for index, hour_end in enumerate(hours):
        stamp = hour_end.strftime("%Y%m%d%H%M%S")
        events = _hour_of_records(
            make_event, fleet_ids, hour_end, events_per_file, rng, quirks, manifest, "vehicles_events"
        )
        statuses = _hour_of_records(
            make_status, fleet_ids, hour_end, max(1, events_per_file // 10), rng, quirks, manifest, "vehicles_status"
        )
        if quirks and index == len(hours) - 1:
            breakers = rule_breakers(fleet_ids[0], hour_end - timedelta(minutes=30))
            for records, file_type in ((events, "vehicles_events"), (statuses, "vehicles_status")):
                records.extend(record for record, _ in breakers[file_type])
                manifest.rejected[file_type].extend(reason for _, reason in breakers[file_type])
        event_doc: object = {"vehicles_events": events}
        if quirks and index == 1:
            event_doc = events  # a bare array instead of the keyed object
        _write(out / f"vehicles_events_{stamp}.json", json.dumps(event_doc).encode(), manifest)
        _write(out / f"vehicles_status_{stamp}.json", json.dumps({"vehicle_status": statuses}).encode(), manifest)
    if quirks:
        last = max(hours) + timedelta(hours=1)
        truncated = f"vehicles_events_{last:%Y%m%d%H%M%S}.json"
        body = json.dumps({"vehicles_events": [make_event(fleet_ids[0], last, rng, False) for _ in range(5)]})
        _write(out / truncated, body[: len(body) // 2].encode(), manifest)
        manifest.failed_files[truncated] = "not valid JSON"
        empty = f"vehicles_status_{last:%Y%m%d%H%M%S}.json"
        _write(out / empty, b"", manifest)
        manifest.failed_files[empty] = "empty file"
        unkeyed = f"vehicles_events_{last + timedelta(hours=1):%Y%m%d%H%M%S}.json"
        body = json.dumps({"vehicle_events": [make_event(fleet_ids[0], last, rng, False)]})  # a misspelled key
        _write(out / unkeyed, body.encode(), manifest)
        manifest.failed_files[unkeyed] = "JSON object without a records key (vehicles_events)"
    return manifest


def _write(path: Path, body: bytes, manifest: Manifest) -> None:
    partial = path.with_name(f".{path.name}.partial")  # producers must not expose half a file
    partial.write_bytes(body)
    partial.replace(path)
    manifest.files.append(path.name)


def cleanup(out: Path) -> int:
    removed = 0
    for path in out.glob("vehicles_*_*.json"):
        path.unlink()
        removed += 1
    return removed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loaders.vehicles.generate", description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=24, help="hours of data, one events and one status file each")
    parser.add_argument("--events-per-file", type=int, default=500)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--quirks", action="store_true", help="mix in realistic defects")
    parser.add_argument("--out", type=Path, default=None, help="default: $ELT_DATA_DIR/incoming")
    parser.add_argument("--no-cleanup", action="store_true", help="keep generated files already in --out")
    parser.add_argument("--continuous", action="store_true", help="keep writing a batch every --interval seconds")
    parser.add_argument("--interval", type=float, default=60.0)
    parser.add_argument("--max-batches", type=int, default=None, help="stop --continuous after this many")
    args = parser.parse_args(argv)
    out = args.out or state_dir("incoming")
    if not args.no_cleanup:
        cleanup(out)
    start, batch = START, 0
    while True:
        manifest = generate(out, args.files, args.events_per_file, args.seed + batch, args.quirks, start)
        print(
            f"wrote {len(manifest.files)} files to {out}: {manifest.good} good records, "
            f"{ {k: len(v) for k, v in manifest.rejected.items()} } bad, {len(manifest.failed_files)} bad files"
        )
        batch += 1
        if not args.continuous or (args.max_batches and batch >= args.max_batches):
            return 0
        start += timedelta(hours=args.files)
        time.sleep(args.interval)


if __name__ == "__main__":
    exit_promptly(main())
