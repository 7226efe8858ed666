"""The file-type registry: the table `file_types` in the lake's SQL database, beside the Iceberg
catalog's tables (DESIGN §2, §6), so the lake side never opens the warehouse.

A file type says which table its records land in, their fields (types, nullability, allowed
values, patterns), the time column the lake is partitioned by, and whether files of the type
are processed (`active`) or parked in pending/ (`inactive`). New types need no code: they are
registered from the seed YAML or inferred from a file, and activated with the CLI.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy
import yaml

from lake.catalog_database import catalog_uri
from lake.identifiers import IDENTIFIER, RegistryError, validate_identifier

SEED = Path(__file__).with_name("file_types.yml")
FIELD_TYPES = ("string", "long", "double", "boolean", "timestamp", "json")
STATUSES = ("active", "inactive")
# A file larger than its type's processing.max_file_bytes is never read (the lake job reads a
# file as one value); a type without the setting, or not yet registered, gets this one.
DEFAULT_MAX_FILE_BYTES = 64 << 20
# Lake lineage columns added to every table; a registry field may not use these names.
LINEAGE_COLUMNS = ("source_file", "source_position", "batch_id", "ingested_at")


@dataclass(frozen=True)
class Field:
    name: str
    type: str = "string"
    nullable: bool = True
    aliases: tuple[str, ...] = ()
    allowed: tuple[str, ...] = ()
    pattern: str | None = None

    def __post_init__(self) -> None:
        validate_identifier(self.name, "field name")
        if self.name in LINEAGE_COLUMNS:
            raise RegistryError(f"field name {self.name!r} is reserved for lake lineage")
        if self.type not in FIELD_TYPES:
            raise RegistryError(f"field {self.name!r} has type {self.type!r}; expected one of {', '.join(FIELD_TYPES)}")
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as error:
                raise RegistryError(f"field {self.name!r} has an invalid pattern: {error}") from None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Field:
        return cls(
            name=data["name"],
            type=data.get("type", "string"),
            nullable=bool(data.get("nullable", True)),
            aliases=tuple(data.get("aliases") or ()),
            allowed=tuple(str(value) for value in data.get("allowed") or ()),
            pattern=data.get("pattern"),
        )


@dataclass(frozen=True)
class FileType:
    file_type: str
    table_name: str
    fields: tuple[Field, ...]
    time_column: str | None
    record_keys: tuple[str, ...] = ()
    primary_key: tuple[str, ...] = ()
    processing: dict[str, Any] = field(default_factory=dict)
    status: str = "inactive"

    def __post_init__(self) -> None:
        validate_identifier(self.file_type, "file type")
        validate_identifier(self.table_name, "table name")
        if self.status not in STATUSES:
            raise RegistryError(f"status {self.status!r} is not one of {', '.join(STATUSES)}")
        names = [f.name for f in self.fields]
        if len(set(names)) != len(names):
            raise RegistryError(f"{self.file_type}: duplicate field names in {names}")
        if self.time_column is not None and self.field(self.time_column).type != "timestamp":
            raise RegistryError(f"{self.file_type}: time column {self.time_column!r} must be a timestamp field")
        for key in self.primary_key:
            self.field(key)

    def field(self, name: str) -> Field:
        for candidate in self.fields:
            if candidate.name == name:
                return candidate
        raise RegistryError(f"{self.file_type} has no field {name!r}")

    @property
    def rejected_table_name(self) -> str:
        return f"{self.table_name}_rejected"

    @property
    def is_active(self) -> bool:
        return self.status == "active"

    def definition(self) -> dict[str, Any]:
        """Everything but the identity and status, as stored in file_types.definition."""
        data = asdict(self)
        for key in ("file_type", "table_name", "status"):
            data.pop(key)
        return data

    @classmethod
    def from_dict(cls, file_type: str, data: dict[str, Any]) -> FileType:
        try:
            return cls(
                file_type=file_type,
                table_name=data.get("table_name", file_type),
                fields=tuple(Field.from_dict(item) for item in data["fields"]),
                time_column=data.get("time_column"),
                record_keys=tuple(data.get("record_keys") or ()),
                primary_key=tuple(data.get("primary_key") or ()),
                processing=dict(data.get("processing") or {}),
                status=data.get("status", "inactive"),
            )
        except (KeyError, TypeError) as error:
            raise RegistryError(f"file type {file_type!r}: malformed definition ({error})") from None


def seed_file_types(path: Path = SEED) -> list[FileType]:
    document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return [FileType.from_dict(name, data) for name, data in (document.get("file_types") or {}).items()]


# --- inference for unknown types -------------------------------------------------------------

_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:?\d{2})?")


def records_of(document: Any, record_keys: tuple[str, ...] = ()) -> tuple[str | None, list]:
    """(key, records) of a vehicle file: a bare array, or an object holding one under a key."""
    if isinstance(document, list):
        return None, document
    if isinstance(document, dict):
        for key in record_keys or tuple(k for k, v in document.items() if isinstance(v, list)):
            if isinstance(document.get(key), list):
                return key, document[key]
    raise RegistryError("the file holds neither an array of records nor an object with one")


def _value_type(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "long"
    if isinstance(value, float):
        return "double"
    if isinstance(value, dict | list):
        return "json"
    return "timestamp" if _TIMESTAMP.fullmatch(str(value)) else "string"


def infer_file_type(file_type: str, document: Any) -> FileType:
    """An inactive registry entry guessed from one file: every field nullable, the first
    timestamp field as the time column. Review it (`registry show`) before activating."""
    validate_identifier(file_type, "file type")
    key, records = records_of(document)
    seen: dict[str, set[str]] = {}
    for record in records[:1000]:
        if not isinstance(record, dict):
            continue
        for name, value in record.items():
            types = seen.setdefault(name, set())
            if (kind := _value_type(value)) is not None:
                types.add(kind)
    fields = []
    for name, types in seen.items():
        if not IDENTIFIER.fullmatch(name) or name in LINEAGE_COLUMNS:
            continue  # such keys cannot become columns; the raw record keeps them
        kind = types.pop() if len(types) == 1 else ("double" if types == {"long", "double"} else "string")
        fields.append(Field(name=name, type=kind))
    if not fields:
        raise RegistryError(f"no usable fields found in a {file_type} file")
    time_column = next((f.name for f in fields if f.type == "timestamp"), None)
    return FileType(
        file_type=file_type,
        table_name=file_type,
        fields=tuple(fields),
        time_column=time_column,
        record_keys=(key,) if key else (),
        status="inactive",
    )


# --- file_types, in the lake's SQL database ----------------------------------------------------

# Portable DDL (SQLite and Postgres); `if not exists` because discovery and the lake job may
# both be first. In Postgres the table lands in the catalog's schema (first on the search_path).
_DDL = """create table if not exists file_types (
    file_type varchar(63) primary key,
    table_name varchar(63) not null,
    status varchar(16) not null,
    definition text not null,
    origin varchar(16) not null,
    created_at timestamp not null,
    updated_at timestamp not null
)"""
_COLUMNS = "file_type, table_name, status, definition"


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _row_to_file_type(row: tuple) -> FileType:
    file_type, table_name, status, definition = row
    return FileType.from_dict(file_type, {**json.loads(definition), "table_name": table_name, "status": status})


class Registry:
    """`file_types` beside the Iceberg catalog, through the catalog's own SQLAlchemy URI."""

    def __init__(self, engine: sqlalchemy.Engine | None = None) -> None:
        self._engine = engine or sqlalchemy.create_engine(catalog_uri())

    def ensure(self) -> None:
        with self._engine.begin() as connection:
            connection.exec_driver_sql(_DDL)

    def sync_seed(self, seed: list[FileType] | None = None) -> None:
        """Upsert the seed's definitions; a status set with activate/deactivate is kept."""
        self.ensure()
        for file_type in seed if seed is not None else seed_file_types():
            existing = self.find(file_type.file_type)
            if existing is None:
                self._insert(file_type, origin="seed")
            else:
                self._update(file_type, status=existing.status)

    def register(self, file_type: FileType, origin: str) -> FileType:
        self.ensure()
        if self.find(file_type.file_type) is not None or not self._insert(file_type, origin):
            raise RegistryError(f"file type {file_type.file_type!r} is already registered")
        return file_type

    def list(self) -> list[FileType]:
        self.ensure()
        with self._engine.connect() as connection:
            rows = connection.execute(sqlalchemy.text(f"select {_COLUMNS} from file_types order by 1")).all()
        return [_row_to_file_type(tuple(row)) for row in rows]

    def find(self, file_type: str) -> FileType | None:
        with self._engine.connect() as connection:
            row = connection.execute(
                sqlalchemy.text(f"select {_COLUMNS} from file_types where file_type = :file_type"),
                {"file_type": file_type},
            ).first()
        return _row_to_file_type(tuple(row)) if row else None

    def get(self, file_type: str) -> FileType:
        self.ensure()
        found = self.find(file_type)
        if found is None:
            known = ", ".join(item.file_type for item in self.list()) or "none"
            raise RegistryError(f"unknown file type {file_type!r}; registered: {known}")
        return found

    def set_status(self, file_type: str, status: str) -> FileType:
        current = self.get(file_type)
        if status == "active" and current.time_column is None:
            raise RegistryError(
                f"{file_type} has no timestamp field to partition by; edit its definition before activating"
            )
        updated = FileType.from_dict(
            file_type, {**current.definition(), "table_name": current.table_name, "status": status}
        )
        self._update(updated, status=status)
        return updated

    def _insert(self, file_type: FileType, origin: str) -> bool:
        """False when another process registered the type first (the first one wins)."""
        now = _now()
        with self._engine.begin() as connection:
            inserted = connection.execute(
                sqlalchemy.text(
                    "insert into file_types values "
                    "(:file_type, :table_name, :status, :definition, :origin, :created_at, :updated_at) "
                    "on conflict (file_type) do nothing"
                ),
                {
                    "file_type": file_type.file_type,
                    "table_name": file_type.table_name,
                    "status": file_type.status,
                    "definition": json.dumps(file_type.definition()),
                    "origin": origin,
                    "created_at": now,
                    "updated_at": now,
                },
            )
        return inserted.rowcount == 1

    def _update(self, file_type: FileType, status: str) -> None:
        with self._engine.begin() as connection:
            connection.execute(
                sqlalchemy.text(
                    "update file_types set table_name = :table_name, status = :status, "
                    "definition = :definition, updated_at = :updated_at where file_type = :file_type"
                ),
                {
                    "table_name": file_type.table_name,
                    "status": status,
                    "definition": json.dumps(file_type.definition()),
                    "updated_at": _now(),
                    "file_type": file_type.file_type,
                },
            )
