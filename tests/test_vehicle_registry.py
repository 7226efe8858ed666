"""The vehicle file-type registry (in the lake's SQL database) and file naming rules (no Spark)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys

import pytest

from core.settings import warehouse_path
from core.warehouse import connect, execute
from lake.files import SAMPLE_DIR, discover, file_type_of, stage_sample, state_dir
from lake.registry import (
    FileType,
    Registry,
    RegistryError,
    infer_file_type,
    records_of,
    seed_file_types,
    validate_identifier,
)

from .conftest import rows


def test_the_seed_defines_events_and_status():
    seed = {item.file_type: item for item in seed_file_types()}
    assert seed["vehicles_events"].table_name == "vehicle_events"
    assert seed["vehicles_status"].table_name == "vehicle_status"
    assert seed["vehicles_events"].time_column == "event_time"
    assert seed["vehicles_events"].field("event_extra_data").aliases == ("event_extra_data:",)
    assert all(item.is_active for item in seed.values())


@pytest.mark.parametrize(
    "name",
    ["vehicles_events_20251108143712.json", "vehicles_status_20251108000000.json", "fleet_v2_20250101000000.json"],
)
def test_file_types_come_from_the_name(name):
    assert file_type_of(name) == name.rsplit("_", 1)[0]


@pytest.mark.parametrize(
    "name",
    [
        "vehicles_events.json",
        "vehicles_events_2025110814.json",
        "../vehicles_events_20251108143712.json",
        "vehicle events_20251108143712.json",
        "x;drop table meta.file_types;--_20251108143712.json",
        "Vehicles_20251108143712.json",
        "_20251108143712.json",
    ],
)
def test_unsafe_or_malformed_names_are_refused(name):
    with pytest.raises(RegistryError):
        file_type_of(name)


@pytest.mark.parametrize("name", ["a-b", "1abc", "abc def", "x" * 64, "drop table;", ""])
def test_identifiers_from_data_are_validated(name):
    with pytest.raises(RegistryError, match="not a safe identifier"):
        validate_identifier(name, "table name")


def test_schema_inference_for_an_unknown_type():
    document = {
        "vehicles_trips": [
            {"vehicle_id": "ab12", "started_at": "2025-11-08T14:37:12Z", "distance_km": 12.5, "passengers": 2},
            {"vehicle_id": "cd34", "started_at": "2025-11-08T15:00:00", "distance_km": 3, "meta": {"a": 1}},
        ]
    }
    inferred = infer_file_type("vehicles_trips", document)
    types = {f.name: f.type for f in inferred.fields}
    assert types == {
        "vehicle_id": "string",
        "started_at": "timestamp",
        "distance_km": "double",
        "passengers": "long",
        "meta": "json",
    }
    assert inferred.time_column == "started_at" and inferred.status == "inactive"
    assert inferred.record_keys == ("vehicles_trips",)
    assert records_of(document["vehicles_trips"]) == (None, document["vehicles_trips"])
    with pytest.raises(RegistryError, match="neither an array"):
        records_of({"count": 3})


def test_registry_round_trip_and_status_changes(data_dir):
    registry = Registry()
    registry.sync_seed()
    assert [item.file_type for item in registry.list()] == ["vehicles_events", "vehicles_status"]
    registry.set_status("vehicles_status", "inactive")
    registry.sync_seed()  # a re-sync keeps the operator's choice
    assert registry.get("vehicles_status").status == "inactive"
    assert registry.get("vehicles_status").field("status").allowed[0] == "driving"
    with pytest.raises(RegistryError, match="unknown file type 'nope'; registered: vehicles_events, vehicles_status"):
        registry.get("nope")


def test_a_type_without_a_timestamp_cannot_be_activated(data_dir):
    registry = Registry()
    registry.register(infer_file_type("vehicles_notes", [{"vehicle_id": "ab", "note": "x"}]), origin="inferred")
    with pytest.raises(RegistryError, match="no timestamp field"):
        registry.set_status("vehicles_notes", "active")


def test_discovery_sorts_incoming_files(data_dir):
    incoming = state_dir("incoming")
    incoming.mkdir(parents=True)
    (incoming / "vehicles_events_20251108000000.json").write_text('{"vehicles_events": []}')
    (incoming / "vehicles_trips_20251108000000.json").write_text('[{"vehicle_id": "ab", "t": "2025-11-08T00:00:00Z"}]')
    (incoming / "not a vehicle file.json").write_text("{}")
    (incoming / "vehicles_gps_20251108000000.json").write_text("<html>")
    report = discover()
    assert report.processing == ["vehicles_events_20251108000000.json"]
    assert report.pending == ["vehicles_trips_20251108000000.json"]
    assert report.registered == ["vehicles_trips"]
    assert sorted(report.failed) == ["not a vehicle file.json", "vehicles_gps_20251108000000.json"]
    assert (state_dir("failed", "_unrecognised") / "not a vehicle file.json.error.json").exists()
    assert (state_dir("pending", "vehicles_trips") / "vehicles_trips_20251108000000.json").exists()
    assert Registry().get("vehicles_trips").status == "inactive"
    assert not list(incoming.iterdir())


def test_field_names_are_validated_in_definitions():
    with pytest.raises(RegistryError, match="not a safe identifier"):
        FileType.from_dict("vehicles_x", {"fields": [{"name": "bad name"}], "time_column": None})
    with pytest.raises(RegistryError, match="reserved"):
        FileType.from_dict("vehicles_x", {"fields": [{"name": "batch_id"}], "time_column": None})


def test_the_bundled_sample_is_staged_once(data_dir):
    sample = sorted(path.name for path in SAMPLE_DIR.glob("*.json"))
    assert len(sample) == 24
    assert stage_sample() == sample
    assert sorted(path.name for path in state_dir("incoming").iterdir()) == sample
    discover()
    assert stage_sample() == []  # already in processing/: not delivered again
    assert not list(state_dir("incoming").iterdir())


def catalog_tables(target: str, data_dir) -> set[str]:
    """Tables in the lake's SQL database, read straight from it: the SQLite file in the lake, or
    the catalog's schema in the test's Postgres database."""
    if target == "postgres":
        import psycopg2

        from core.settings import postgres_credentials

        with psycopg2.connect(postgres_credentials()) as connection, connection.cursor() as cursor:
            cursor.execute("select table_name from information_schema.tables where table_schema = 'iceberg_catalog'")
            return {name for (name,) in cursor.fetchall()}
    import sqlite3

    with contextlib.closing(sqlite3.connect(data_dir / "lake" / "catalog.db")) as connection:
        return {name for (name,) in connection.execute("select name from sqlite_master where type = 'table'")}


def test_the_registry_lives_beside_the_iceberg_catalog_not_in_the_warehouse(target, data_dir):
    from lake.catalog import catalog

    catalog()
    Registry().sync_seed()
    assert {"file_types", "iceberg_tables"} <= catalog_tables(target, data_dir)
    if target == "duckdb":
        assert not warehouse_path().exists()
    else:
        assert rows("select count(*) from information_schema.schemata where schema_name = 'meta'") == [(0,)]


OLD_WAREHOUSE_REGISTRY = (
    "create schema meta",
    "create table meta.file_types (file_type varchar(63) primary key, table_name varchar(63) not null,"
    " status varchar(16) not null, definition text not null, origin varchar(16) not null,"
    " created_at timestamp not null, updated_at timestamp not null)",
)


def test_a_registry_kept_in_the_warehouse_by_an_earlier_version_is_taken_over(target, data_dir):
    trips = infer_file_type("vehicles_trips", [{"vehicle_id": "ab", "started_at": "2025-11-08T14:37:12Z"}])
    old_rows = [  # an inferred type activated by hand, and a seed type deactivated by hand
        ("vehicles_trips", "vehicles_trips", "active", json.dumps(trips.definition()), "inferred"),
        ("vehicles_status", "vehicle_status", "inactive", json.dumps({"fields": [{"name": "x"}]}), "seed"),
    ]
    with connect(read_only=False) as connection:
        for statement in OLD_WAREHOUSE_REGISTRY:
            execute(connection, statement)
        for row in old_rows:
            execute(connection, "insert into meta.file_types values (%s, %s, %s, %s, %s, now(), now())", row)

    result = subprocess.run(
        [sys.executable, "-m", "loaders", "registry", "import-from-warehouse"],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "taken over from the warehouse's meta.file_types: vehicles_status, vehicles_trips" in result.stdout
    registry = Registry()
    assert {item.file_type: item.status for item in registry.list()} == {
        "vehicles_events": "active",
        "vehicles_status": "inactive",
        "vehicles_trips": "active",
    }
    assert registry.get("vehicles_trips").time_column == "started_at"
    assert registry.get("vehicles_status").field("status").allowed[0] == "driving"  # the seed's definition
