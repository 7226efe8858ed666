"""The registry's record rules compiled into SQL, once, for every lake engine (DESIGN §2).

Both engines hand the compiler the same shape of input: one row per record, with each key the
registry reads (every field name, every alias, and NOT_AN_OBJECT) as a text column, and the
record itself, NULL when the element is not a JSON object. From the registry's Field rules
(nullable, type, pattern, allowed values) the compiler writes plain SQL that both engines
accept: CASE, IS NULL, IN, `||`, concat_ws. Only a handful of spellings differ between Spark SQL
and DuckDB (quoting, regex match, parsing text into a typed value, a record as JSON): those are
a Dialect's few functions, and nothing in a Dialect knows about any rule.

So every reject reason is built by the same SQL text in both engines: byte for byte the same.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from lake.registry import Field, FileType

# Holds the raw text of a record that is not a JSON object (registry fields cannot start with "_").
NOT_AN_OBJECT = "_elt_not_an_object"
NOT_AN_OBJECT_REASON = "record is not a JSON object"
REASON_SEPARATOR = "; "
# Why a whole file is refused, after it was read (empty and oversized files are refused before).
NOT_JSON_FILE = "not valid JSON (truncated, or not JSON at all)"
# JSON's whitespace is space, tab, LF and CR (RFC 8259); a regex both engines read alike.
FIRST_AFTER_JSON_WHITESPACE = r"^[ \t\n\r]*([^ \t\n\r])"


def no_records_key_problem(record_keys: tuple[str, ...]) -> str:
    return f"JSON object without a records key ({', '.join(record_keys) or '(none registered)'})"


@dataclass(frozen=True)
class Dialect:
    """How one engine spells the few things plain SQL does not settle."""

    name: str
    column: Callable[[str], str]  # a key of the record, as a column reference
    identifier: Callable[[str], str]  # a column of the row the engine computes, as a reference
    record: str  # the record itself: NULL when the element is not an object
    literal: Callable[[str], str]  # a string literal
    matches: Callable[[str, str], str]  # (text sql, pattern literal) -> true when the pattern is found in it
    parse: Mapping[str, Callable[[str], str]]  # field type -> (text sql) -> typed value, NULL when it does not parse
    record_as_json: Callable[[tuple[str, ...]], str]  # the record's keys -> its JSON text (NULL keys left out)


def first_character_sql(text: str, dialect: Dialect) -> str:
    """The first character of a text after JSON whitespace; '' when there is none."""
    return f"regexp_extract({text}, {dialect.literal(FIRST_AFTER_JSON_WHITESPACE)}, 1)"


def record_keys(file_type: FileType) -> tuple[str, ...]:
    """Every key an engine extracts from a record as text, in the order Spark's struct holds them."""
    return (*(name for f in file_type.fields for name in (f.name, *f.aliases)), NOT_AN_OBJECT)


def typed_name(f: Field) -> str:
    """The column where an engine keeps a field's typed value (typed_sql) before the row takes the
    field's name (registry field names cannot start with "_": no clash with a record's keys)."""
    return f"_elt_typed_{f.name}"


def typed_column(f: Field, dialect: Dialect) -> str:
    return dialect.identifier(typed_name(f))


def value_sql(f: Field, dialect: Dialect) -> str:
    """The field's text: under its own name, else under the first alias that has it."""
    columns = [dialect.column(name) for name in (f.name, *f.aliases)]
    return columns[0] if len(columns) == 1 else f"coalesce({', '.join(columns)})"


def typed_sql(f: Field, dialect: Dialect) -> str:
    return dialect.parse[f.type](value_sql(f, dialect))


def _field_checks(f: Field, dialect: Dialect, typed: str) -> list[str]:
    """One SQL expression per rule of the field (`typed` its typed value): its reason text when
    broken, else NULL."""
    value, text = value_sql(f, dialect), dialect.literal
    checks = []
    if not f.nullable:
        checks.append(f"case when {value} is null then {text(f'{f.name} is missing')} end")
    if f.type not in ("string", "json"):
        checks.append(
            f"case when {value} is not null and {typed} is null "
            f"then {text(f'{f.name} is not a {f.type}: ')} || {value} end"
        )
    if f.pattern:
        checks.append(
            f"case when {value} is not null and not {dialect.matches(value, text(f.pattern))} "
            f"then {text(f'{f.name} does not match {f.pattern}: ')} || {value} end"
        )
    if f.allowed:
        allowed = ", ".join(text(item) for item in f.allowed)
        checks.append(
            f"case when {value} is not null and {value} not in ({allowed}) "
            f"then {text(f'{f.name} ')} || {value} || {text(' is not one of ' + ', '.join(f.allowed))} end"
        )
    return checks


def not_an_object_sql(dialect: Dialect) -> str:
    return f"({dialect.record} is null or {dialect.column(NOT_AN_OBJECT)} is not null)"


def reason_sql(file_type: FileType, dialect: Dialect) -> str:
    """Every broken rule's reason joined with '; ', empty when the record is valid; a record that
    is not an object has that one reason, not one per field as well. It reads each field's typed
    value from the column typed_name(field), which the engine computes first (once, for the
    checks and the row)."""
    checks = [check for f in file_type.fields for check in _field_checks(f, dialect, typed_column(f, dialect))]
    joined = f"concat_ws({dialect.literal(REASON_SEPARATOR)}, {', '.join(checks)})" if checks else "''"
    return f"case when {not_an_object_sql(dialect)} then {dialect.literal(NOT_AN_OBJECT_REASON)} else {joined} end"


def raw_record_sql(file_type: FileType, dialect: Dialect) -> str:
    """The rejected record as it came: its keys as JSON, or the raw text of a value that is not an object."""
    as_json = dialect.record_as_json(record_keys(file_type))
    return f"coalesce({dialect.column(NOT_AN_OBJECT)}, {as_json}, 'null')"


# --- the two dialects -----------------------------------------------------------------------


def _spark_literal(text: str) -> str:
    # Spark SQL string literals treat a backslash as an escape (spark.sql.parser.escapedStringLiterals=false).
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _spark_identifier(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _spark_column(name: str) -> str:
    return "record." + _spark_identifier(name)


SPARK = Dialect(
    name="spark",
    column=_spark_column,
    identifier=_spark_identifier,
    record="record",
    literal=_spark_literal,
    matches=lambda value, pattern: f"({value} rlike {pattern})",
    parse={
        "string": lambda value: value,
        "json": lambda value: value,
        "long": lambda value: f"cast({value} as bigint)",
        "double": lambda value: f"cast({value} as double)",
        "boolean": lambda value: f"cast({value} as boolean)",
        # ISO 8601 with Z/offset, optional fraction, or naive (read as UTC: the session zone).
        "timestamp": lambda value: f"cast({value} as timestamp)",
    },
    record_as_json=lambda keys: "to_json(record)",
)


def _duckdb_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _duckdb_column(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# DuckDB's own casts differ from Spark's at the edges (Spark trims whitespace and control
# characters, truncates "1.5" to a long, reads "yes" as a boolean and "1d" as a double, accepts
# "2025-11" as a timestamp but not hour 24...), so the DuckDB side spells out the text Spark's
# cast accepts. Known gaps, refused by DuckDB where Spark accepts them: zone names
# ("Europe/Paris", "UTC+1"), a time without a date, a signed year, hexadecimal doubles.
_SPARK_BLANK = r"[\x00-\x20]"


def _spark_trimmed(value: str) -> str:
    return f"regexp_replace({value}, '^{_SPARK_BLANK}+|{_SPARK_BLANK}+$', '', 'g')"


# The usual text, taken by a plain cast: the same value as the Spark-accepted-text path below
# gives it, since it has no blanks to trim and needs no completing (a subset of what that path reads).
_PLAIN_LONG = "[+-]?[0-9]{1,18}"
_PLAIN_TIMESTAMP = r"[0-9]{4}-[0-9]{2}-[0-9]{2}T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]([.][0-9]{1,6})?Z"


def _duckdb_long(value: str) -> str:
    trimmed = _spark_trimmed(value)
    return (
        f"case when regexp_full_match({value}, '{_PLAIN_LONG}') then cast({value} as bigint) "
        f"when regexp_full_match({trimmed}, '[+-]?([0-9]+([.][0-9]*)?|[.][0-9]*)') "
        f"then try_cast(coalesce(nullif(regexp_extract({trimmed}, '^[+-]?[0-9]+'), ''), '0') as bigint) end"
    )


def _duckdb_double(value: str) -> str:
    # Java's parseDouble takes a trailing d or f (a double or float literal).
    return f"try_cast(regexp_replace({_spark_trimmed(value)}, '([0-9.])[dDfF]$', '\\1') as double)"


def _duckdb_boolean(value: str) -> str:
    word = f"lower({_spark_trimmed(value)})"
    return (
        f"case when {word} in ('t', 'true', 'y', 'yes', '1') then true "
        f"when {word} in ('f', 'false', 'n', 'no', '0') then false end"
    )


# Spark's accepted timestamp text: a year, then optional month, day, time (hours 0-23), fraction
# and zone (Z, UTC, GMT, or an offset of hours with optional minutes), 'T' or a space before the time.
_SPARK_TIMESTAMP = (
    r"[0-9]{4}(-[0-9]{1,2}(-[0-9]{1,2}([T ]([01]?[0-9]|2[0-3]):[0-9]{1,2}(:[0-9]{1,2}([.][0-9]*)?)?"
    r"(Z| ?UTC| ?GMT|[+-][0-9]{1,2}(:?[0-9]{2})?)?)?)?)?"
)


def _duckdb_timestamp(value: str) -> str:
    trimmed = _spark_trimmed(value)
    # DuckDB wants at least a full date, and no zone name: a year alone is its January 1st.
    completed = (
        f"regexp_replace(case when regexp_full_match({trimmed}, '[0-9]{{4}}') then {trimmed} || '-01-01' "
        f"when regexp_full_match({trimmed}, '[0-9]{{4}}-[0-9]{{1,2}}') then {trimmed} || '-01' "
        f"else {trimmed} end, ' ?(UTC|GMT)$', 'Z')"
    )
    return (
        f"case when regexp_full_match({value}, '{_PLAIN_TIMESTAMP}') then try_cast({value} as timestamptz) "
        f"when regexp_full_match({trimmed}, '{_SPARK_TIMESTAMP}') then try_cast({completed} as timestamptz) end"
    )


def _duckdb_record_as_json(keys: tuple[str, ...]) -> str:
    """Spark's to_json of the record struct: its keys in order, NULL ones left out."""
    members = ", ".join(
        f"case when {_duckdb_column(key)} is not null "
        f"then {_duckdb_literal(json.dumps(key, ensure_ascii=False) + ':')} || to_json({_duckdb_column(key)}) end"
        for key in keys
    )
    return f"case when _elt_record is not null then '{{' || concat_ws(',', {members}) || '}}' end"


DUCKDB = Dialect(
    name="duckdb",
    column=_duckdb_column,
    identifier=_duckdb_column,
    record="_elt_record",
    literal=_duckdb_literal,
    matches=lambda value, pattern: f"regexp_matches({value}, {pattern})",
    parse={
        "string": lambda value: value,
        "json": lambda value: value,
        "long": _duckdb_long,
        "double": _duckdb_double,
        "boolean": _duckdb_boolean,
        "timestamp": _duckdb_timestamp,
    },
    record_as_json=_duckdb_record_as_json,
)
