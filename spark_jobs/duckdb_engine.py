"""The lake job's in-process engine: DuckDB writes a small batch with no JVM to start.

The same batch as the Spark engine (spark_jobs/vehicle_lake.py), read the same way: each file
as one text, its records from a bare array or from under a records key, one row per record with
every key the registry reads as text. Validation, typed values and raw records are the SQL
spark_jobs/record_rules.py compiles from the registry, in DuckDB's dialect; the Parquet it writes
(one file per day, timestamps as UTC microseconds, no field ids) is what pyiceberg's add_files
takes from Spark. Only extensions built into the wheel are used (json, parquet, icu): DuckDB
must not download any (DESIGN §4).
"""

from __future__ import annotations

import json
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
    typed_sql,
)

NO_DOWNLOADS = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}


def engine_config() -> dict[str, str | bool]:
    # A batch bigger than memory spills under the data dir, not into the working directory.
    return {**NO_DOWNLOADS, "temp_directory": str(data_dir() / "lake_staging" / "duckdb_spill")}


def _quoted(text: str) -> str:
    return DUCKDB.literal(text)


def _json_path_text(key: str) -> str:
    return '$."' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _json_path(key: str) -> str:
    return _quoted(_json_path_text(key))


def _items_sql(record_keys_of_file: tuple[str, ...]) -> str:
    """A file's records as a list of JSON values: the elements of the document when it is an
    array, else of the first records key holding one; NULL when there are none. (A valid
    document's first character tells an array from an object, without parsing it again.)"""
    under_a_key = [
        f"when json_type(document, {_json_path(key)}) = 'ARRAY' "
        f"then json_extract(document, {_quoted(_json_path_text(key) + '[*]')})"
        for key in record_keys_of_file
    ]
    keyed = f"case {' '.join(under_a_key)} end" if under_a_key else "null"
    return (
        "case when document is null then null "
        "when first_character = '[' then json_extract(document, '$[*]') "
        f"when first_character = '{{' then {keyed} end"
    )


def files_sql(file_type: FileType) -> str:
    """One row per file: (source_file, file_problem, items)."""
    return f"""
        with texts as (
            select parse_filename(filename) as source_file, try(decode(content)) as value
            from read_blob($paths)
        ),
        documents as (
            select source_file, {first_character_sql("value", DUCKDB)} as first_character,
                try_cast(value as json) as document
            from texts
        ),
        files as (select source_file, first_character, document,
            {_items_sql(file_type.record_keys)} as items from documents)
        select source_file,
            case when items is not null then null
                when first_character = '{{' and document is not null
                    then {_quoted(no_records_key_problem(file_type.record_keys))}
                else {_quoted(NOT_JSON_FILE)} end as file_problem,
            items
        from files
    """


def records_sql(file_type: FileType) -> str:
    """One row per record of the files that are fine: its position, whether it is an object
    (_elt_record NULL when not) and each key the registry reads, as text (nested values as
    their JSON text), parsed once per record."""
    keys = record_keys(file_type)
    as_text = _quoted(json.dumps(dict.fromkeys(keys, "VARCHAR")))

    def key_column(key: str) -> str:
        value = f"text_values.{DUCKDB.column(key)}"
        if key == NOT_AN_OBJECT:  # an element that is not an object keeps its raw text here
            value = f"case when is_object then {value} else json_extract_string(element, '$') end"
        return f"{value} as {DUCKDB.column(key)}"

    return f"""
        with elements as (
            select source_file, unnest(range(len(items))) as source_position, unnest(items) as element
            from batch_files where file_problem is null
        ),
        objects as (select *, json_type(element) = 'OBJECT' as is_object from elements),
        parsed as (
            select *, case when is_object then json_transform(element, {as_text}) end as text_values from objects
        )
        select source_file, source_position, case when is_object then true end as _elt_record,
            {", ".join(key_column(key) for key in keys)}
        from parsed
    """


def good_rows_sql(file_type: FileType) -> str:
    fields = ", ".join(f"{typed_sql(f, DUCKDB)} as {DUCKDB.column(f.name)}" for f in file_type.fields)
    return f"""
        select {fields}, source_file, source_position::bigint as source_position,
            $batch_id as batch_id, $ingested_at::timestamptz as ingested_at
        from batch_records where reason = ''
    """


def rejected_rows_sql(file_type: FileType) -> str:
    return f"""
        select source_file, source_position::bigint as source_position, reason,
            {raw_record_sql(file_type, DUCKDB)} as raw_record,
            $batch_id as batch_id, $ingested_at::timestamptz as rejected_at
        from batch_records where reason <> '' and not list_contains($already_rejected, source_file)
    """


class DuckDBEngine:
    name = "duckdb"

    def __init__(self) -> None:
        self.connection = duckdb.connect(config=engine_config())
        # Naive times are UTC, as in Spark's session zone (DESIGN §4).
        self.connection.execute("set TimeZone = 'UTC'")

    def write_batch(self, file_type: FileType, paths: list[Path], output) -> dict[str, str]:
        """Good rows as Parquet, one file per day, and rejected rows in one file; returns the
        files that are no batch at all (not JSON, no records key) with their reason."""
        bad_files = self._read(file_type, paths)
        parameters = {"batch_id": output.batch_id, "ingested_at": output.ingested_at.isoformat()}
        self._write_good_rows(file_type, parameters, _local_folder(staged_output(output.data_folder)))
        self._write_rejected_rows(
            file_type,
            {**parameters, "already_rejected": sorted(output.already_rejected)},
            _local_folder(staged_output(output.rejected_folder)),
        )
        self.connection.execute("drop table batch_records")
        return bad_files

    def _read(self, file_type: FileType, paths: list[Path]) -> dict[str, str]:
        """The batch's records with their reasons, computed once for both writes, in the temp
        table batch_records; returns the files refused whole."""
        db = self.connection
        files = {"paths": [str(path) for path in paths]}
        db.execute(f"create or replace temp table batch_files as {files_sql(file_type)}", files)
        refused = db.execute("select source_file, file_problem from batch_files where file_problem is not null")
        bad_files = dict(refused.fetchall())
        db.execute(f"create or replace temp view batch_elements as {records_sql(file_type)}")
        reason = reason_sql(file_type, DUCKDB)
        db.execute(f"create or replace temp table batch_records as select *, {reason} as reason from batch_elements")
        db.execute("drop view batch_elements")
        db.execute("drop table batch_files")
        return bad_files

    def _write_good_rows(self, file_type: FileType, parameters: dict, folder: Path) -> None:
        folder.parent.mkdir(parents=True, exist_ok=True)
        day = f"cast({DUCKDB.column(file_type.time_column)} as date)"  # a UTC day: the session zone is UTC
        self.connection.execute(
            f"copy (select *, {day} as day from ({good_rows_sql(file_type)})) to {_quoted(str(folder))} "
            "(format parquet, partition_by (day), filename_pattern 'part-{uuid}')",
            parameters,
        )

    def _write_rejected_rows(self, file_type: FileType, parameters: dict, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.connection.execute(
            f"copy ({rejected_rows_sql(file_type)}) to {_quoted(str(folder / 'part-00000.parquet'))} (format parquet)",
            parameters,
        )


def _local_folder(uri_or_path: str) -> Path:
    return Path(uri_or_path.removeprefix("file://"))
