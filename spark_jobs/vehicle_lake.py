"""Vehicle lake job: processing/<type>/*.json ──Spark──▶ Parquet ──pyiceberg──▶ raw_vehicles.<table>.

For each active file type (registry, DESIGN §6) all waiting files are read in one Spark job with
the registry's explicit schema, validated with Spark SQL expressions only (no Python UDFs), and
written as Parquet with one file per day under the Iceberg table's data folder; pyiceberg then
commits them in one snapshot per batch (DESIGN §4). Invalid records go to `<table>_rejected`,
files that are not JSON (or hold no records) to failed/<type>/, committed files to processed/.

Crash safety: each commit records its source files in the snapshot summary (the ledger). A
re-run first moves files the ledger already has, and never commits a file's rows twice, so a
kill at any point followed by a re-run ends with exact counts.

    python -m spark_jobs.vehicle_lake            # or: spark-submit spark_jobs/vehicle_lake.py
"""

from __future__ import annotations

import logging
import sys
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

if __package__ in (None, ""):  # spark-submit runs this file as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.settings import data_dir_or_exit
from lake import files as lifecycle
from lake.catalog import catalog
from lake.registry import DEFAULT_MAX_FILE_BYTES, Field, FileType, Registry
from spark_jobs.lake_commit import (
    commit_batch,
    committed_files,
    ensure_tables,
    parquet_files,
    publish_spark_output,
    spark_output,
)
from spark_jobs.session import spark_session

log = logging.getLogger("spark_jobs.vehicle_lake")

# Holds the raw text of a record that is not a JSON object (registry fields cannot start with "_").
NOT_AN_OBJECT = "_elt_not_an_object"
SPARK_TYPES = {"string": "string", "json": "string", "long": "bigint", "double": "double", "boolean": "boolean"}


@dataclass
class TypeReport:
    file_type: str
    batch_id: str | None = None
    committed_files: list[str] = field(default_factory=list)
    recovered_files: list[str] = field(default_factory=list)
    failed_files: dict[str, str] = field(default_factory=dict)
    rows: int = 0
    rejected: int = 0


def new_batch_id(now: datetime) -> str:
    """Sortable by commit order (the lake→warehouse load reads batches after the last one)."""
    return f"{now:%Y%m%dT%H%M%S%f}Z-{uuid.uuid4().hex[:8]}"


# --- Spark SQL expressions built from the registry -------------------------------------------


def _record_schema(file_type: FileType):
    from pyspark.sql import types as T

    names = [name for f in file_type.fields for name in (f.name, *f.aliases)]
    return T.StructType([T.StructField(name, T.StringType()) for name in [*names, NOT_AN_OBJECT]])


def _value(record, f: Field):
    from pyspark.sql import functions as F

    return F.coalesce(*(record[name] for name in (f.name, *f.aliases)))


def _typed(value, f: Field):
    if f.type == "timestamp":
        # ISO 8601 with Z/offset, optional fraction, or naive (read as UTC: the session zone).
        return value.cast("timestamp")
    return value.cast(SPARK_TYPES[f.type])


def _problems(record, file_type: FileType):
    """One reason per broken rule, joined with '; ' (empty when the record is valid); a record
    that is not an object has that one reason, not one per field as well."""
    from pyspark.sql import functions as F

    checks = []
    for f in file_type.fields:
        value = _value(record, f)
        if not f.nullable:
            checks.append(F.when(value.isNull(), F.lit(f"{f.name} is missing")))
        if f.type not in ("string", "json"):
            checks.append(
                F.when(
                    value.isNotNull() & _typed(value, f).isNull(),
                    F.concat(F.lit(f"{f.name} is not a {f.type}: "), value),
                )
            )
        if f.pattern:
            checks.append(
                F.when(
                    value.isNotNull() & ~value.rlike(f.pattern),
                    F.concat(F.lit(f"{f.name} does not match {f.pattern}: "), value),
                )
            )
        if f.allowed:
            checks.append(
                F.when(
                    value.isNotNull() & ~value.isin(*f.allowed),
                    F.concat(F.lit(f"{f.name} "), value, F.lit(f" is not one of {', '.join(f.allowed)}")),
                )
            )
    not_an_object = record.isNull() | record[NOT_AN_OBJECT].isNotNull()
    return F.when(not_an_object, F.lit("record is not a JSON object")).otherwise(F.concat_ws("; ", *checks))


def _raw_record(record):
    """The rejected record as it came: its JSON, or the raw text of a value that is not an object."""
    from pyspark.sql import functions as F

    return F.coalesce(record[NOT_AN_OBJECT], F.to_json(record), F.lit("null"))


def _records(value, record, keys: list[str] | None):
    """The records of a file's array (its root when keys is None, else under one of `keys`), each parsed into the
    registry's struct. One element that is not an object makes Spark null the whole array, so such
    an array is read again element by element: a non-object element keeps its raw text in
    NOT_AN_OBJECT and is rejected alone; the rest of the file still loads."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    def parsed(element_type):
        if keys is None:
            return F.from_json(value, T.ArrayType(element_type))
        document = F.from_json(value, T.StructType([T.StructField(k, T.ArrayType(element_type)) for k in keys]))
        return F.coalesce(*(document[k] for k in keys))

    placeholders = [F.lit(None).cast("string").alias(f.name) for f in record.fields if f.name != NOT_AN_OBJECT]
    element_by_element = F.transform(
        parsed(T.StringType()),
        lambda raw: F.when(F.json_object_keys(raw).isNotNull(), F.from_json(raw, record)).when(
            raw.isNotNull(), F.struct(*placeholders, raw.alias(NOT_AN_OBJECT))
        ),
    )
    return F.coalesce(parsed(record), element_by_element)


def _parse_files(spark, file_type: FileType, paths: list[Path]):
    """One row per record: (source_file, file_problem, source_position, record)."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    record = _record_schema(file_type)
    text = spark.read.text([p.resolve().as_uri() for p in paths], wholetext=True).select(
        F.element_at(F.split(F.col("_metadata.file_path"), "/"), -1).alias("source_file"), "value"
    )
    first = F.substring(F.ltrim("value"), 1, 1)
    keys = file_type.record_keys
    as_array = _records(F.col("value"), record, None)
    keyed = _records(F.col("value"), record, keys) if keys else F.lit(None)
    records = F.when(first == "[", as_array).when(first == "{", keyed)
    is_json_object = F.from_json("value", T.MapType(T.StringType(), T.StringType())).isNotNull()
    problem = (
        F.when(records.isNotNull(), F.lit(None))
        .when(
            (first == "{") & is_json_object,
            F.lit(f"JSON object without a records key ({', '.join(keys) or '(none registered)'})"),
        )
        .otherwise(F.lit("not valid JSON (truncated, or not JSON at all)"))
    )
    parsed = text.select("source_file", records.alias("records"), problem.alias("file_problem"))
    return parsed.select(
        "source_file", "file_problem", F.posexplode_outer("records").alias("source_position", "record")
    )


def process_type(spark, lake, file_type: FileType, paths: list[Path], now: datetime) -> TypeReport:
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    report = TypeReport(file_type.file_type)
    table, rejected_table = ensure_tables(lake, file_type)
    in_table, in_rejected = committed_files(table), committed_files(rejected_table)

    todo = []
    for path in paths:
        if path.name in in_table:  # committed before a crash, not yet moved
            lifecycle.move(path, lifecycle.state_dir("processed", file_type.file_type))
            report.recovered_files.append(path.name)
        elif path.stat().st_size == 0:
            report.failed_files[path.name] = "empty file"
        elif path.stat().st_size > (limit := int(file_type.processing.get("max_file_bytes", DEFAULT_MAX_FILE_BYTES))):
            # Refused before Spark reads it: a file is one row of wholetext, so its size bounds memory.
            report.failed_files[path.name] = f"file larger than max_file_bytes={limit}"
        else:
            todo.append(path)
    for name, reason in report.failed_files.items():
        lifecycle.fail(lifecycle.state_dir("processing", file_type.file_type) / name, file_type.file_type, reason)
    if not todo:
        return report

    batch_id = report.batch_id = new_batch_id(now)
    rows = _parse_files(spark, file_type, todo).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        bad_files = {
            row.source_file: row.file_problem for row in rows.where("file_problem is not null").distinct().collect()
        }
        records = rows.where("file_problem is null and source_position is not null").withColumn(
            "reason", _problems(F.col("record"), file_type)
        )
        good = (
            records.where("reason = ''")
            .select(
                *(_typed(_value(F.col("record"), f), f).alias(f.name) for f in file_type.fields),
                "source_file",
                F.col("source_position").cast("bigint").alias("source_position"),
                F.lit(batch_id).alias("batch_id"),
                F.to_timestamp(F.lit(now.isoformat())).alias("ingested_at"),
            )
            .withColumn("day", F.to_date(file_type.time_column))
        )
        rejected = records.where(f"reason <> '' and source_file not in ({_sql_list(in_rejected)})").select(
            "source_file",
            F.col("source_position").cast("bigint").alias("source_position"),
            "reason",
            _raw_record(F.col("record")).alias("raw_record"),
            F.lit(batch_id).alias("batch_id"),
            F.to_timestamp(F.lit(now.isoformat())).alias("rejected_at"),
        )
        data_folder = f"{table.location()}/data/batch_id={batch_id}"
        rejected_folder = f"{rejected_table.location()}/data/batch_id={batch_id}"
        good.repartition("day").write.partitionBy("day").parquet(spark_output(data_folder))
        rejected.coalesce(1).write.parquet(spark_output(rejected_folder))
    finally:
        rows.unpersist()

    for name, reason in bad_files.items():
        lifecycle.fail(lifecycle.state_dir("processing", file_type.file_type) / name, file_type.file_type, reason)
        report.failed_files[name] = reason
    committed = [p.name for p in todo if p.name not in bad_files]
    for folder in (rejected_folder, data_folder):
        publish_spark_output(folder)
    # The rejected table first: the main table's commit is the one that marks a file done.
    report.rejected = commit_batch(rejected_table, parquet_files(rejected_folder), batch_id, committed)
    report.rows = commit_batch(table, parquet_files(data_folder), batch_id, committed)
    for name in committed:
        lifecycle.move(
            lifecycle.state_dir("processing", file_type.file_type) / name,
            lifecycle.state_dir("processed", file_type.file_type),
        )
    report.committed_files = committed
    return report


def _sql_list(names: set[str]) -> str:
    quoted = ", ".join("'" + name.replace("'", "''") + "'" for name in sorted(names))
    return quoted or "''"


def run(registry: Registry | None = None) -> list[TypeReport]:
    """Process every active type's waiting files; Spark starts only if there is work."""
    registry = registry or Registry()
    work = {}
    for file_type in registry.list():
        folder = lifecycle.state_dir("processing", file_type.file_type)
        paths = sorted(folder.glob("*.json")) if folder.is_dir() else []
        if file_type.is_active and paths:
            work[file_type.file_type] = (file_type, paths)
    if not work:
        return []
    spark = spark_session("vehicle_lake")
    log.info("Spark master %s, %d file type(s) to process", spark.sparkContext.master, len(work))
    lake = catalog()
    now = datetime.now(UTC).replace(tzinfo=None)
    return [process_type(spark, lake, file_type, paths, now) for file_type, paths in work.values()]


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("py4j").setLevel(logging.WARNING)
    data_dir_or_exit()
    for report in run():
        print(
            f"vehicle_lake {report.file_type}: batch {report.batch_id}, {len(report.committed_files)} files committed "
            f"({report.rows} rows, {report.rejected} rejected), {len(report.recovered_files)} recovered, "
            f"{len(report.failed_files)} failed"
        )
        for name, reason in report.failed_files.items():
            print(f"  failed {name}: {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
