"""Vehicle lake job: processing/<type>/*.json ──Spark or DuckDB──▶ Parquet ──pyiceberg──▶ raw_vehicles.<table>.

For each active file type (registry, DESIGN §6) all waiting files are read in one batch by one
engine: Spark for bulk batches and on a cluster, in-process DuckDB (spark_jobs/duckdb_engine.py)
for batches below the small-batch threshold (LAKE_ENGINE, README). Both validate with the SQL
that spark_jobs/record_rules.py compiles from the registry (no Python UDFs, no row in Python),
and write Parquet with one file per day under the Iceberg table's data folder; pyiceberg then
commits them in one snapshot per batch (DESIGN §4). Invalid records go to `<table>_rejected`,
files that are not JSON (or hold no records) to failed/<type>/, committed files to processed/.

Crash safety: each commit records its source files in the snapshot summary (the ledger). A
re-run first moves files the ledger already has, and never commits a file's rows twice, so a
kill at any point followed by a re-run ends with exact counts.

    python -m spark_jobs.vehicle_lake            # or: spark-submit spark_jobs/vehicle_lake.py
"""

from __future__ import annotations

import json
import logging
import os
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

if __package__ in (None, ""):  # spark-submit runs this file as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyiceberg.table import Table

from core.cli import exit_promptly
from core.settings import data_dir_or_exit, lake_engine, lake_small_batch_bytes
from lake import files as lifecycle
from lake.catalog import catalog
from lake.registry import DEFAULT_MAX_FILE_BYTES, FileType, Registry
from spark_jobs.lake_commit import (
    commit_batch,
    committed_files,
    ensure_tables,
    parquet_files,
    publish_staged_output,
    staged_output,
)
from spark_jobs.record_rules import (
    NOT_AN_OBJECT,
    NOT_JSON_FILE,
    SPARK,
    first_character_sql,
    no_records_key_problem,
    raw_record_sql,
    reason_sql,
    record_keys,
    typed_name,
    typed_sql,
)
from spark_jobs.session import spark_master, spark_session, task_slots

log = logging.getLogger("spark_jobs.vehicle_lake")


@dataclass
class TypeReport:
    file_type: str
    engine: str
    batch_id: str | None = None
    committed_files: list[str] = field(default_factory=list)
    recovered_files: list[str] = field(default_factory=list)
    failed_files: dict[str, str] = field(default_factory=dict)
    rows: int = 0
    rejected: int = 0


def new_batch_id(now: datetime) -> str:
    """Sortable by commit order (the lake→warehouse load reads batches after the last one)."""
    return f"{now:%Y%m%dT%H%M%S%f}Z-{uuid.uuid4().hex[:8]}"


# --- the Spark engine --------------------------------------------------------------------


def _record_schema(file_type: FileType):
    from pyspark.sql import types as T

    return T.StructType([T.StructField(name, T.StringType()) for name in record_keys(file_type)])


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
    # input_file_name(), not _metadata.file_path: for the latter Spark 3.5 builds the whole
    # _metadata struct beside each file's text, one more copy of the file per task (measured: a
    # file at max_file_bytes in each of 2 task slots then needed ~0.25 GB more heap).
    text = spark.read.text([p.resolve().as_uri() for p in paths], wholetext=True).select(
        F.element_at(F.split(F.input_file_name(), "/"), -1).alias("source_file"), "value"
    )
    first = F.expr(first_character_sql("value", SPARK))
    keys = file_type.record_keys
    as_array = _records(F.col("value"), record, None)
    keyed = _records(F.col("value"), record, keys) if keys else F.lit(None)
    records = F.when(first == "[", as_array).when(first == "{", keyed)
    is_json_object = F.from_json("value", T.MapType(T.StringType(), T.StringType())).isNotNull()
    problem = (
        F.when(records.isNotNull(), F.lit(None))
        .when(
            (first == "{") & is_json_object,
            F.lit(no_records_key_problem(keys)),
        )
        .otherwise(F.lit(NOT_JSON_FILE))
    )
    parsed = text.select("source_file", records.alias("records"), problem.alias("file_problem"))
    return parsed.select(
        "source_file", "file_problem", F.posexplode_outer("records").alias("source_position", "record")
    )


@dataclass(frozen=True)
class BatchOutput:
    """Where an engine writes one batch of a type: Parquet folders (local, or staged for object storage)."""

    batch_id: str
    ingested_at: datetime
    data_folder: str
    rejected_folder: str
    already_rejected: frozenset[str]  # the batch's files whose rejected rows a crashed run already committed


class SparkEngine:
    name = "spark"
    batches_side_by_side = True

    def __init__(self, file_sizes: list[int]) -> None:
        self.spark = spark_session("vehicle_lake", file_sizes=file_sizes)
        conf = self.spark.sparkContext.getConf()
        log.info("Spark master %s, driver heap %s", conf.get("spark.master"), conf.get("spark.driver.memory"))

    def write_batch(self, file_type: FileType, paths: list[Path], output: BatchOutput) -> dict[str, str]:
        """Good rows as Parquet, one file per day, and rejected rows in one file; returns the
        files that are no batch at all (not JSON, no records key) with their reason.

        The batch is parsed and validated once, by the good write, which also observes which
        files hold a rejected record and which are refused whole (a few names per file, not
        rows). Only the files holding rejected records are read again, for the rejected write:
        none in a clean batch; at worst a second parse, about what caching every row cost."""
        from pyspark.sql import Observation
        from pyspark.sql import functions as F

        observation = Observation("files with rejected records or refused")
        rows = _validated_rows(_parse_files(self.spark, file_type, paths), file_type).observe(
            observation,
            F.to_json(F.collect_set(F.when(F.col("_elt_reason") != "", F.col("source_file")))).alias("rejecting"),
            F.to_json(
                F.collect_set(
                    F.when(F.col("_elt_file_problem").isNotNull(), F.array("source_file", "_elt_file_problem"))
                )
            ).alias("refused"),
        )
        batch_id = F.lit(output.batch_id).alias("batch_id")
        ingested_at = F.to_timestamp(F.lit(output.ingested_at.isoformat()))
        fields = [f.name for f in file_type.fields]
        # One task per day, so one file per day (pyiceberg refuses a file spanning two days); the
        # batch's constants are added after the shuffle, which then moves less.
        good = (
            rows.where("_elt_reason = ''").select(*fields, "source_file", "source_position", "day").repartition("day")
        )
        good = good.select(*fields, "source_file", "source_position", batch_id, ingested_at.alias("ingested_at"), "day")
        good.write.partitionBy("day").parquet(staged_output(output.data_folder))
        files = {name: json.loads(value) for name, value in observation.get.items()}

        rejecting = set(files["rejecting"]) - output.already_rejected
        if rejecting:
            again = _parse_files(self.spark, file_type, [path for path in paths if path.name in rejecting])
            rejected = _validated_rows(again, file_type).where("_elt_reason <> ''")
            rejected = rejected.select(
                "source_file",
                "source_position",
                F.col("_elt_reason").alias("reason"),
                F.col("_elt_raw_record").alias("raw_record"),
                batch_id,
                ingested_at.alias("rejected_at"),
            )
            rejected.repartition(1).write.parquet(staged_output(output.rejected_folder))
        return dict(files["refused"])


def _validated_rows(parsed, file_type: FileType):
    """One row per record (or per refused file): its typed fields, lineage, day, its reason
    ('' when valid, NULL for a refused file) and, when rejected, its raw record. Each typed value
    is computed once, for the reason and the row (a select of its own, which Spark keeps apart
    rather than compute an expensive expression twice). The engine's own columns start with
    "_elt_", which no registry field name can."""
    from pyspark.sql import functions as F

    typed = parsed.select(
        "record",
        "source_file",
        F.col("file_problem").alias("_elt_file_problem"),
        F.col("source_position").cast("bigint").alias("source_position"),
        *(F.expr(typed_sql(f, SPARK)).alias(typed_name(f)) for f in file_type.fields),
    )
    is_record = F.col("_elt_file_problem").isNull() & F.col("source_position").isNotNull()
    validated = typed.select(
        *typed.columns, F.when(is_record, F.expr(reason_sql(file_type, SPARK))).alias("_elt_reason")
    )
    return validated.select(
        "source_file",
        "_elt_file_problem",
        "source_position",
        "_elt_reason",
        *(F.col(typed_name(f)).alias(f.name) for f in file_type.fields),
        F.to_date(typed_name(file_type.field(file_type.time_column))).alias("day"),
        F.when(F.col("_elt_reason") != "", F.expr(raw_record_sql(file_type, SPARK))).alias("_elt_raw_record"),
    )


@dataclass
class PendingBatch:
    """A type's batch between its preparation and its commit: what waits for the engine and where it goes."""

    file_type: FileType
    report: TypeReport
    table: Table
    rejected_table: Table
    todo: list[Path]
    output: BatchOutput | None


def prepare_type(engine_name: str, lake, file_type: FileType, paths: list[Path], now: datetime) -> PendingBatch:
    """Moves the files the ledger already has, refuses empty and oversized files, and names the
    batch the engine writes (no batch when nothing is left to write)."""
    report = TypeReport(file_type.file_type, engine_name)
    table, rejected_table = ensure_tables(lake, file_type)
    in_table, in_rejected = committed_files(table), committed_files(rejected_table)

    todo = []
    for path in paths:
        if path.name in in_table:  # committed before a crash, not yet moved
            lifecycle.move(path, lifecycle.state_dir("processed", file_type.file_type))
            report.recovered_files.append(path.name)
        elif (size := path.stat().st_size) == 0:
            report.failed_files[path.name] = "empty file"
        elif not within_size_limit(size, file_type):
            # Refused before an engine reads it: a file is read as one value, so its size bounds memory.
            report.failed_files[path.name] = f"file larger than max_file_bytes={max_file_bytes(file_type)}"
        else:
            todo.append(path)
    for name, reason in report.failed_files.items():
        lifecycle.fail(lifecycle.state_dir("processing", file_type.file_type) / name, file_type.file_type, reason)
    output = None
    if todo:
        batch_id = report.batch_id = new_batch_id(now)
        output = BatchOutput(
            batch_id=batch_id,
            ingested_at=now,
            data_folder=f"{table.location()}/data/batch_id={batch_id}",
            rejected_folder=f"{rejected_table.location()}/data/batch_id={batch_id}",
            already_rejected=frozenset(path.name for path in todo if path.name in in_rejected),
        )
    return PendingBatch(file_type, report, table, rejected_table, todo, output)


def commit_type(pending: PendingBatch, bad_files: dict[str, str]) -> TypeReport:
    """After the engine wrote the batch: refused files to failed/, the Parquet committed, the
    committed files to processed/."""
    file_type, report, output = pending.file_type, pending.report, pending.output
    for name, reason in bad_files.items():
        lifecycle.fail(lifecycle.state_dir("processing", file_type.file_type) / name, file_type.file_type, reason)
        report.failed_files[name] = reason
    committed = [p.name for p in pending.todo if p.name not in bad_files]
    for folder in (output.rejected_folder, output.data_folder):
        publish_staged_output(folder)
    # The rejected table first: the main table's commit is the one that marks a file done.
    report.rejected = commit_batch(
        pending.rejected_table, parquet_files(output.rejected_folder), output.batch_id, committed
    )
    report.rows = commit_batch(pending.table, parquet_files(output.data_folder), output.batch_id, committed)
    for name in committed:
        lifecycle.move(
            lifecycle.state_dir("processing", file_type.file_type) / name,
            lifecycle.state_dir("processed", file_type.file_type),
        )
    report.committed_files = committed
    return report


def process_types(engine, lake, work: list[tuple[FileType, list[Path]]], now: datetime) -> list[TypeReport]:
    """Each type's batch prepared, written by the engine and committed, the types in registry
    order. An engine that runs batches side by side (Spark: one job per type, whose tasks fill the
    cores another type's job leaves idle) writes them all at once; the commits still follow one
    another in registry order, each as soon as its batch is written."""
    pending = [prepare_type(engine.name, lake, file_type, paths, now) for file_type, paths in work]
    if not engine.batches_side_by_side:
        return [
            commit_type(p, engine.write_batch(p.file_type, p.todo, p.output)) if p.output else p.report for p in pending
        ]
    with ThreadPoolExecutor(max_workers=len(pending)) as pool:
        writes = [pool.submit(engine.write_batch, p.file_type, p.todo, p.output) if p.output else None for p in pending]
        return [commit_type(p, write.result()) if write else p.report for p, write in zip(pending, writes, strict=True)]


def max_file_bytes(file_type: FileType) -> int:
    return int(file_type.processing.get("max_file_bytes", DEFAULT_MAX_FILE_BYTES))


def within_size_limit(size: int, file_type: FileType) -> bool:
    return size <= max_file_bytes(file_type)


def choose_engine(setting: str, waiting_bytes: int, small_batch_bytes: int, spark_configured: bool) -> str:
    """LAKE_ENGINE spark|duckdb is obeyed; auto sends a batch to Spark when a cluster (or
    spark-submit) is configured or the waiting JSON reaches the small-batch threshold, where a
    JVM start stops costing more than the work."""
    if setting != "auto":
        return setting
    return "spark" if spark_configured or waiting_bytes >= small_batch_bytes else "duckdb"


def spark_configured() -> bool:
    """SPARK_MASTER names a cluster (not local[...]), or spark-submit started this driver (its gateway is up)."""
    return task_slots(spark_master()) is None or "PYSPARK_GATEWAY_PORT" in os.environ


def start_engine(name: str, file_sizes: list[int]):
    """`file_sizes`: the bytes of each file the engine will read (Spark sizes its default heap by them)."""
    if name == "spark":
        return SparkEngine(file_sizes)
    from spark_jobs.duckdb_engine import DuckDBEngine

    return DuckDBEngine()


def run(registry: Registry | None = None) -> list[TypeReport]:
    """Process every active type's waiting files; an engine starts only if there is work."""
    registry = registry or Registry()
    work = {}
    for file_type in registry.list():
        folder = lifecycle.state_dir("processing", file_type.file_type)
        paths = sorted(folder.glob("*.json")) if folder.is_dir() else []
        if file_type.is_active and paths:
            work[file_type.file_type] = (file_type, paths)
    if not work:
        return []
    sizes = [(file_type, path.stat().st_size) for file_type, paths in work.values() for path in paths]
    waiting_bytes = sum(size for _, size in sizes)
    name = choose_engine(lake_engine(), waiting_bytes, lake_small_batch_bytes(), spark_configured())
    log.info("%s engine for %d bytes of waiting JSON, %d file type(s)", name, waiting_bytes, len(work))
    engine = start_engine(name, [size for file_type, size in sizes if within_size_limit(size, file_type)])
    lake = catalog()
    now = datetime.now(UTC).replace(tzinfo=None)
    return process_types(engine, lake, list(work.values()), now)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("py4j").setLevel(logging.WARNING)
    data_dir_or_exit()
    for report in run():
        print(
            f"vehicle_lake {report.file_type} on {report.engine}: batch {report.batch_id}, "
            f"{len(report.committed_files)} files committed "
            f"({report.rows} rows, {report.rejected} rejected), {len(report.recovered_files)} recovered, "
            f"{len(report.failed_files)} failed"
        )
        for name, reason in report.failed_files.items():
            print(f"  failed {name}: {reason}")
    return 0


if __name__ == "__main__":
    exit_promptly(main())
