"""dlt source: new lake rows → warehouse schema raw_vehicles, incrementally and Arrow end to end.

Each lake table (every processed type's table and its rejected table) becomes one append-only
resource. Rows carry the `batch_id` of the lake commit that wrote them, and batch ids sort in
commit order, so the incremental cursor on `batch_id` loads exactly the batches committed since
the last load. pyiceberg prunes data files by their batch_id statistics, and Arrow record
batches go to dlt as they are read: no per-row Python.
"""

from __future__ import annotations

from collections.abc import Iterator

import dlt
import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.expressions import AlwaysTrue, GreaterThan

from lake.catalog import NAMESPACE, catalog, identifier

DATASET = "raw_vehicles"


def lake_table(lake: Catalog, table_name: str):
    @dlt.resource(name=table_name, write_disposition="append")
    def rows(
        batch_id: dlt.sources.incremental[str] = dlt.sources.incremental(
            "batch_id", initial_value="", range_start="open"
        ),
    ) -> Iterator[pa.RecordBatch]:
        table = lake.load_table(identifier(table_name))
        since = batch_id.last_value
        scan = table.scan(row_filter=GreaterThan("batch_id", since) if since else AlwaysTrue())
        for batch in scan.to_arrow_batch_reader():
            if batch.num_rows:
                yield batch

    rows.__doc__ = f"Rows of the lake table {identifier(table_name)} committed since the last load."
    return rows


@dlt.source(name="vehicles_lake")
def vehicles_lake():
    """One resource per table in the lake (every processed type's table and its rejects): the
    lake, not the warehouse's registry, says what there is, so a new warehouse loads it all."""
    lake = catalog()
    return [lake_table(lake, name) for _, name in sorted(lake.list_tables(NAMESPACE))]
