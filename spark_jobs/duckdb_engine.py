"""The lake job's in-process engine: DuckDB writes a small batch with no JVM to start.

The same batch as the Spark engine (spark_jobs/vehicle_lake.py), read the same way: each file
as one text, its records from a bare array or from under a records key, every key the registry
reads as text. Each document is parsed once, straight into its records' structs; typed values,
reasons and raw records are the SQL spark_jobs/record_rules.py compiles from the registry, in
DuckDB's dialect, each computed once for both writes. The Parquet it writes (one file per day,
timestamps as UTC microseconds, no field ids) is what pyiceberg's add_files takes from Spark.
Only extensions built into the wheel are used (json, parquet, icu): DuckDB must not download any
(DESIGN §4).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb

from core.settings import data_dir
from lake.registry import FileType
from spark_jobs.lake_commit import staged_output
from spark_jobs.record_rules import (
    DUCKDB,
    NOT_AN_OBJECT,
    NOT_JSON_FILE,
    first_character_sql,
    no_records_key_problem,
    raw_record_sql,
    reason_sql,
    record_keys,
    typed_column,
    typed_sql,
)

NO_DOWNLOADS = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}


def engine_config() -> dict[str, str | bool]:
    # A batch bigger than memory spills under the data dir, not into the working directory.
    return {**NO_DOWNLOADS, "temp_directory": str(data_dir() / "lake_staging" / "duckdb_spill")}


def _quoted(text: str) -> str:
    return DUCKDB.literal(text)


def _json_path(key: str) -> str:
    return _quoted('$."' + key.replace("\\", "\\\\").replace('"', '\\"') + '"[*]')


def _record_struct(file_type: FileType) -> dict[str, str]:
    """Every key the registry reads, as text (a nested value as its JSON text)."""
    return dict.fromkeys(record_keys(file_type), "VARCHAR")


def _files_sql(file_type: FileType) -> str:
    """One row per file: (source_file, file_problem, records, elements). Each document is parsed
    once, straight into the records' structs: the elements of a bare array, else of the first
    records key holding an array. An element that is not an object comes out as a struct with
    every key NULL (or NULL itself), so a file holding such a struct keeps its elements' JSON
    texts too, to tell them apart (the rare slow path; a valid document's first character tells
    an array from an object without parsing it again)."""
    record = _record_struct(file_type)
    keys = file_type.record_keys
    keyed = _quoted(json.dumps({key: [record] for key in keys}))
    under_keys = [f"keyed.{DUCKDB.column(key)}" for key in keys]
    elements_under_keys = " ".join(
        f"when keyed.{DUCKDB.column(key)} is not null then json_extract(value, {_json_path(key)})" for key in keys
    )
    all_keys_null = " and ".join(f"r.{DUCKDB.column(key)} is null" for key in record)
    # A JSON object: parsed under the records keys, or only checked when the type has none.
    as_object = f"try(json_transform(value, {keyed}))" if keys else "case when json_valid(value) then true end"
    return f"""
        with texts as (
            select parse_filename(filename) as source_file, try(decode(content)) as value
            from read_blob($paths)
        ),
        documents as (
            select source_file, value, {first_character_sql("value", DUCKDB)} as first_character from texts
        ),
        parsed as (
            select source_file, value, first_character,
                case when first_character = '[' then try(json_transform(value, {_quoted(json.dumps([record]))}))
                    end as bare_array,
                case when first_character = '{{' then {as_object} end as keyed
            from documents
        ),
        files as (
            select source_file, value, first_character, keyed,
                coalesce(bare_array, {", ".join(under_keys) or "null"}) as records
            from parsed
        )
        select source_file,
            case when records is not null then null
                when keyed is not null then {_quoted(no_records_key_problem(keys))}
                else {_quoted(NOT_JSON_FILE)} end as file_problem,
            records,
            case when list_bool_or(list_transform(records, r -> r is null or ({all_keys_null}))) then
                case when first_character = '[' then json_extract(value, '$[*]') {elements_under_keys} end
            end as elements
        from files
    """


def batch_rows_sql(file_type: FileType) -> str:
    """One row per record, or per refused file (its _elt_file_problem set): its position, its
    typed fields, its reason ('' when valid) and, when rejected, its raw record. The text of each
    key is read once from the parsed struct; each typed value is computed once, for the reason
    and the good write."""
    keys = record_keys(file_type)

    def key_column(key: str) -> str:
        value = f"record.{DUCKDB.column(key)}"
        if key == NOT_AN_OBJECT:  # an element that is not an object keeps its raw text here
            value = f"case when is_object then {value} else json_extract_string(element, '$') end"
        return f"{value} as {DUCKDB.column(key)}"

    typed = ", ".join(f"{typed_sql(f, DUCKDB)} as {typed_column(f, DUCKDB)}" for f in file_type.fields)
    fields = ", ".join(f"{typed_column(f, DUCKDB)} as {DUCKDB.column(f.name)}" for f in file_type.fields)
    return f"""
        with files as ({_files_sql(file_type)}),
        elements as (
            select source_file, file_problem,
                unnest(range(len(coalesce(records, [null])))) as position,
                unnest(coalesce(records, [null])) as record,
                unnest(elements) as element
            from files
        ),
        objects as (
            select *, element is null or json_type(element) = 'OBJECT' as is_object from elements
        ),
        texts as (
            select source_file, file_problem, position,
                case when is_object and file_problem is null then true end as _elt_record,
                {", ".join(key_column(key) for key in keys)}
            from objects
        ),
        typed as (select *, {typed} from texts),
        validated as (
            select *, case when file_problem is null then {reason_sql(file_type, DUCKDB)} end as reason
            from typed
        )
        select source_file, file_problem as _elt_file_problem,
            case when file_problem is null then position end as source_position,
            {fields}, reason as _elt_reason,
            case when reason <> '' then {raw_record_sql(file_type, DUCKDB)} end as _elt_raw_record
        from validated
    """


def good_rows_sql(file_type: FileType) -> str:
    fields = ", ".join(DUCKDB.column(f.name) for f in file_type.fields)
    day = f"cast({DUCKDB.column(file_type.time_column)} as date)"  # a UTC day: the session zone is UTC
    return f"""
        select {fields}, source_file, source_position, $batch_id as batch_id,
            $ingested_at::timestamptz as ingested_at, {day} as day
        from batch_rows where _elt_reason = ''
    """


REJECTED_ROWS = """
        select source_file, source_position, _elt_reason as reason, _elt_raw_record as raw_record,
            $batch_id as batch_id, $ingested_at::timestamptz as rejected_at
        from batch_rows where _elt_reason <> '' and not list_contains($already_rejected, source_file)
"""


def split_by_size(paths: list[Path], parts: int) -> list[list[Path]]:
    """At most `parts` groups of about equal bytes (the largest file first into the lightest group)."""
    groups: list[list[Path]] = [[] for _ in range(min(parts, len(paths)))]
    sizes = [0] * len(groups)
    for size, path in sorted(((path.stat().st_size, path) for path in paths), reverse=True):
        lightest = sizes.index(min(sizes))
        groups[lightest].append(path)
        sizes[lightest] += size
    return groups


class DuckDBEngine:
    name = "duckdb"
    batches_side_by_side = False  # each batch already runs on every core

    def __init__(self) -> None:
        self.connection = duckdb.connect(config=engine_config())
        # Naive times are UTC, as in Spark's session zone (DESIGN §4), on every connection
        # (a cursor starts from the global settings, not from this connection's).
        self.connection.execute("set global TimeZone = 'UTC'")
        self.threads = self.connection.execute("select current_setting('threads')").fetchone()[0]

    def write_batch(self, file_type: FileType, paths: list[Path], output) -> dict[str, str]:
        """Good rows as Parquet, one file per day, and rejected rows in one file; returns the
        files that are no batch at all (not JSON, no records key) with their reason."""
        bad_files, tables = self._read(file_type, paths)
        parameters = {"batch_id": output.batch_id, "ingested_at": output.ingested_at.isoformat()}
        self._write_good_rows(file_type, parameters, _local_folder(staged_output(output.data_folder)))
        self._write_rejected_rows(
            {**parameters, "already_rejected": sorted(output.already_rejected)},
            _local_folder(staged_output(output.rejected_folder)),
        )
        self.connection.execute("drop view batch_rows")
        for table in tables:
            self.connection.execute(f"drop table {table}")
        return bad_files

    def _read(self, file_type: FileType, paths: list[Path]) -> tuple[dict[str, str], list[str]]:
        """The batch's rows, parsed and validated once for both writes, in tables of its parts;
        returns the files refused whole and the parts' tables (the view batch_rows unites them).

        DuckDB reads a list of files on one thread (its other threads only add overhead there),
        so each of its threads reads a part of the batch of about equal bytes, on a connection of
        its own; the writes then run on all threads again."""
        parts = split_by_size(paths, self.threads)
        tables = [f"batch_rows_{number}" for number in range(len(parts))]
        statement = batch_rows_sql(file_type)

        def read_part(table: str, part: list[Path]) -> None:
            with self.connection.cursor() as connection:
                connection.execute(f"create table {table} as {statement}", {"paths": [str(p) for p in part]})

        self.connection.execute("set global threads = 1")
        try:
            with ThreadPoolExecutor(len(parts)) as pool:
                list(pool.map(read_part, tables, parts))
        finally:
            self.connection.execute(f"set global threads = {self.threads}")
        self.connection.execute(f"create view batch_rows as {' union all '.join(f'from {t}' for t in tables)}")
        refused = self.connection.execute(
            "select distinct source_file, _elt_file_problem from batch_rows where _elt_file_problem is not null"
        )
        return dict(refused.fetchall()), tables

    def _write_good_rows(self, file_type: FileType, parameters: dict, folder: Path) -> None:
        folder.parent.mkdir(parents=True, exist_ok=True)
        self.connection.execute(
            f"copy ({good_rows_sql(file_type)}) to {_quoted(str(folder))} "
            "(format parquet, partition_by (day), filename_pattern 'part-{uuid}')",
            parameters,
        )

    def _write_rejected_rows(self, parameters: dict, folder: Path) -> None:
        """The rejected rows in one file; no file when there are none (as on Spark)."""
        if not self.connection.execute(f"select exists ({REJECTED_ROWS})", parameters).fetchone()[0]:
            return
        folder.mkdir(parents=True, exist_ok=True)
        self.connection.execute(
            f"copy ({REJECTED_ROWS}) to {_quoted(str(folder / 'part-00000.parquet'))} (format parquet)",
            parameters,
        )


def _local_folder(uri_or_path: str) -> Path:
    return Path(uri_or_path.removeprefix("file://"))
