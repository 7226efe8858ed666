"""Once, after upgrading: the registry that earlier versions kept in the warehouse
(`meta.file_types`) is taken over into the registry beside the Iceberg catalog, so types
inferred from files and statuses set by hand survive the move.

    python -m loaders registry import-from-warehouse

Loader side on purpose: the lake side (registry, catalog, lake job) never opens the warehouse.
"""

from __future__ import annotations

import json

from core.settings import target, warehouse_path
from core.warehouse import query
from lake.registry import FileType, Registry

OLD_TABLE = "meta.file_types"


def old_registry_exists() -> bool:
    if target() == "duckdb" and not warehouse_path().exists():
        return False
    _, [(count,)] = query(
        "select count(*) from information_schema.tables where table_schema = 'meta' and table_name = 'file_types'"
    )
    return count == 1


def take_over_warehouse_registry(registry: Registry) -> list[str]:
    """Types added to the registry, or whose status the warehouse's copy changes; the seed's
    definitions of known types are kept (they are the current ones)."""
    if not old_registry_exists():
        return []
    _, rows = query(f"select file_type, table_name, status, definition, origin from {OLD_TABLE} order by 1")
    taken = []
    for file_type, table_name, status, definition, origin in rows:
        current = registry.find(file_type)
        if current is None:
            old = FileType.from_dict(file_type, {**json.loads(definition), "table_name": table_name, "status": status})
            registry.register(old, origin=origin)
        elif current.status != status:
            registry.set_status(file_type, status)
        else:
            continue
        taken.append(file_type)
    return taken
