"""Housekeeping for the lake and the landing zone (run daily by the `maintenance` flow).

- expire Iceberg snapshots older than N days, always keeping the last K of each table;
- remove orphan files: Parquet under a table's data folder that no snapshot references
  (left by a job killed before its commit) and Spark `_temporary` folders, once older than a
  grace period so a running job's files are never touched;
- delete landing files older than the retention (default 30 days).

Expired snapshots drop their ledger entries too; that is safe because files move out of
processing/ right after their commit, and re-deliveries are caught by discovery.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from pyiceberg.table import Table

from core import storage
from core.settings import landing_location
from lake.catalog import NAMESPACE, catalog


def lake_tables() -> list[Table]:
    lake = catalog()
    return [lake.load_table(identifier) for identifier in lake.list_tables(NAMESPACE)]


def expire_snapshots(table: Table, older_than_days: float, keep_last: int) -> int:
    snapshots = sorted(table.metadata.snapshots, key=lambda snapshot: snapshot.timestamp_ms)
    keep = {snapshot.snapshot_id for snapshot in snapshots[-keep_last:]} if keep_last > 0 else set()
    if table.current_snapshot() is not None:
        keep.add(table.current_snapshot().snapshot_id)
    cutoff_ms = (datetime.now(UTC) - timedelta(days=older_than_days)).timestamp() * 1000
    expired = [s.snapshot_id for s in snapshots if s.timestamp_ms < cutoff_ms and s.snapshot_id not in keep]
    if expired:
        table.maintenance.expire_snapshots().by_ids(expired).commit()
    return len(expired)


def referenced_files(table: Table) -> set[str]:
    paths: set[str] = set()
    for snapshot in table.metadata.snapshots:
        paths.update(task.file.file_path for task in table.scan(snapshot_id=snapshot.snapshot_id).plan_files())
    return paths


def remove_orphan_files(table: Table, min_age_hours: float) -> list[str]:
    """Files under the table's data folder (local or object storage) that no snapshot
    references and that are older than the grace period: Parquet from a killed job and
    Spark's leftover `_temporary` files."""
    data = storage.join(table.location(), "data")
    referenced = {_without_file_scheme(path) for path in referenced_files(table)}
    cutoff = time.time() - min_age_hours * 3600
    removed = []
    for location, modified in storage.files_under(data):
        orphan = location.endswith(".parquet") and location not in referenced
        if (orphan or "/_temporary/" in location) and modified < cutoff:
            storage.delete(location)
            removed.append(location)
    return removed


def _without_file_scheme(location: str) -> str:
    return location.removeprefix("file://")


def delete_old_landing_files(retention_days: float, root: str | None = None) -> list[str]:
    cutoff = time.time() - retention_days * 86400
    removed = []
    for location, modified in storage.files_under(root or landing_location()):
        if modified < cutoff:
            storage.delete(location)
            removed.append(location)
    return removed
