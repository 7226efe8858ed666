"""What a build can use: on a warehouse where some sources were never loaded, build everything
the loaded ones feed and say what was left out and why; a source dropped after loading is an error.

The warehouse is the one source of truth, the same for every machine that builds from it. A
source table dbt declares is
- loaded when it exists;
- never loaded when it does not and dlt never created it: the dataset's `_dlt_version` (dlt's
  stored schema, written with every load) has no table by that name that has seen data. A
  schema dropped as a whole is therefore a source never loaded, to be loaded again;
- vanished when it does not exist but dlt created it: `SourcesVanished`, nothing is built.

The plan, computed from the manifest: a node whose source ancestors are all never loaded is
skipped; a model that a built model still reads is built even so, from empty stand-ins of its
never-loaded tables (macros/never_loaded_sources.sql, under `never_loaded_as_empty`), so an
optional enrichment (the API teams behind fct_matches' team keys) never holds back a fact.
A test is skipped too when a model it reads is skipped.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache

from core.warehouse import query

# dbt vars of every planned build: missing source tables, checked here to be never loaded, are
# read as empty stand-ins where a built model needs them.
VARS = {"never_loaded_as_empty": True}
TESTS = ("test", "unit_test")


class SourcesVanished(RuntimeError):
    """Source tables that were loaded once and are gone: the message names each one."""


@dataclass(frozen=True)
class SourceTable:
    unique_id: str
    source_name: str
    name: str
    schema: str
    identifier: str


@dataclass(frozen=True)
class Node:
    unique_id: str
    resource_type: str
    name: str
    fqn: tuple[str, ...]
    parents: tuple[str, ...]


@dataclass(frozen=True)
class BuildPlan:
    never_loaded: dict[str, str]  # source table unique_id -> why it counts as never loaded
    skipped: tuple[str, ...]  # node unique_ids left out of the build
    stand_ins: tuple[str, ...]  # never-loaded source tables that built models read as empty


def source_tables(manifest: dict) -> list[SourceTable]:
    return [
        SourceTable(uid, source["source_name"], source["name"], source["schema"], source["identifier"])
        for uid, source in sorted(manifest["sources"].items())
    ]


def nodes(manifest: dict) -> dict[str, Node]:
    """Models, seeds, snapshots, data tests and unit tests, with their parents."""
    return {
        uid: Node(
            uid, node["resource_type"], node["name"], tuple(node["fqn"]), tuple(node["depends_on"].get("nodes", []))
        )
        for uid, node in (*manifest["nodes"].items(), *manifest.get("unit_tests", {}).items())
    }


def classify(
    tables: Iterable[SourceTable], existing: set[tuple[str, str]], created_by_dlt: dict[str, set[str]]
) -> tuple[dict[str, str], list[SourceTable]]:
    """(never loaded: unique_id -> reason, vanished), from the tables that exist and, per
    schema, those dlt created."""
    never_loaded: dict[str, str] = {}
    vanished: list[SourceTable] = []
    schemas = {schema for schema, _ in existing}
    for table in tables:
        if (table.schema, table.identifier) in existing:
            continue
        if table.identifier in created_by_dlt.get(table.schema, set()):
            vanished.append(table)
        elif table.schema not in schemas:
            never_loaded[table.unique_id] = f"no tables in {table.schema}"
        else:
            never_loaded[table.unique_id] = f"dlt has not created {table.schema}.{table.identifier}"
    return never_loaded, vanished


def _ancestors_in(graph: dict[str, Node], roots: Iterable[str]):
    """uid -> the members of `roots` (source tables) among its ancestors."""
    roots = frozenset(roots)

    @cache
    def ancestors(uid: str) -> frozenset[str]:
        if uid in roots:
            return frozenset([uid])
        node = graph.get(uid)
        return frozenset().union(*map(ancestors, node.parents)) if node else frozenset()

    return ancestors


def plan(manifest: dict, never_loaded: dict[str, str]) -> BuildPlan:
    graph = nodes(manifest)
    sources_of = _ancestors_in(graph, manifest["sources"])

    def reads_only_never_loaded(uid: str) -> bool:
        return bool(sources_of(uid)) and sources_of(uid) <= never_loaded.keys()

    built: set[str] = set()
    pending = [
        uid for uid, node in graph.items() if node.resource_type not in TESTS and not reads_only_never_loaded(uid)
    ]
    while pending:  # what a built model reads is built too, from stand-ins if need be
        uid = pending.pop()
        if uid not in built:
            built.add(uid)
            pending += [parent for parent in graph[uid].parents if parent in graph]
    skipped = [
        uid
        for uid, node in graph.items()
        if uid not in built
        and (
            node.resource_type not in TESTS
            or reads_only_never_loaded(uid)
            or any(parent in graph and parent not in built for parent in node.parents)
        )
    ]
    stand_ins = {parent for uid in built for parent in graph[uid].parents if parent in never_loaded}
    return BuildPlan(never_loaded, tuple(sorted(skipped)), tuple(sorted(stand_ins)))


def messages(manifest: dict, plan: BuildPlan) -> list[str]:
    """One line per source whose never-loaded tables cost something: what was skipped, which
    built models read an empty stand-in."""
    graph = nodes(manifest)
    tables = {table.unique_id: table for table in source_tables(manifest)}
    never_loaded_of = _ancestors_in(graph, plan.never_loaded)

    def reads(uid: str, source_name: str) -> bool:
        return any(tables[table].source_name == source_name for table in never_loaded_of(uid))

    lines = []
    for source_name in sorted({tables[uid].source_name for uid in plan.never_loaded}):
        absent = [tables[uid] for uid in plan.never_loaded if tables[uid].source_name == source_name]
        skipped = [graph[uid] for uid in plan.skipped if reads(uid, source_name)]
        readers = sorted(
            node.name
            for node in graph.values()
            if node.unique_id not in plan.skipped
            and any(parent in plan.stand_ins and reads(parent, source_name) for parent in node.parents)
        )
        if not skipped and not readers:
            continue
        reasons = "; ".join(sorted({plan.never_loaded[table.unique_id] for table in absent}))
        if len(absent) == sum(table.source_name == source_name for table in tables.values()):
            line = f"skipped source {source_name} (never loaded: {reasons}): "
        else:
            names = ", ".join(sorted(f"{source_name}.{table.name}" for table in absent))
            line = f"never-loaded source tables {names} ({reasons}): skipped "
        models = sorted(node.name for node in skipped if node.resource_type not in TESTS)
        line += f"{len(models)} models, {sum(node.resource_type in TESTS for node in skipped)} tests"
        line += f" — {', '.join(models)}" if models else ""
        line += f"; read as empty by {', '.join(readers)}" if readers else ""
        lines.append(line)
    return lines


def excluded(manifest: dict, plan: BuildPlan) -> list[str]:
    """dbt selectors of the skipped nodes (by full name: exact)."""
    graph = nodes(manifest)
    return ["fqn:" + ".".join(graph[uid].fqn) for uid in plan.skipped]


def exclude_args(selectors: list[str]) -> list[str]:
    return ["--exclude", *selectors] if selectors else []


def selection_args(selector: str | None, excluded: list[str], listed: Callable[[str], list[str]]) -> list[str]:
    """dbt build arguments for a named selector (dbt_project/selectors.yml; None: everything) less
    the skipped nodes. dbt ignores --exclude beside --selector, so when nodes are skipped the
    selector's nodes, as `listed` by dbt ls, are selected instead."""
    if selector is None:
        return exclude_args(excluded)
    if not excluded:
        return ["--selector", selector]
    return ["--select", *listed(selector), *exclude_args(excluded)]


def selector_nodes(runner, selector: str, *options: str) -> list[str]:
    """A selector's nodes (tests and unit tests too) as dbt selections, listed by dbt ls through
    `runner` (a dbtRunner) with the caller's project, target and vars `options`."""
    listing = runner.invoke(
        ["ls", "--selector", selector, "--resource-type", "all", "--output", "selector", "--log-level", "none"]
        + list(options)
    )
    if not listing.success:
        raise RuntimeError(f"dbt ls --selector {selector} failed: {listing.exception}")
    return list(listing.result)


def split_selector(argv: list[str]) -> tuple[str | None, list[str]]:
    """(the --selector of dbt command-line arguments, the other arguments)."""
    rest: list[str] = []
    selector = None
    arguments = iter(argv)
    for argument in arguments:
        if argument == "--selector":
            selector = next(arguments, None)
        elif argument.startswith("--selector="):
            selector = argument.removeprefix("--selector=")
        else:
            rest.append(argument)
    return selector, rest


def freshness_exclude_args(manifest: dict) -> list[str]:
    """dbt source freshness arguments that leave out the never-loaded tables (a vanished one is
    checked, and fails there too)."""
    never_loaded, _ = table_states(manifest)
    return exclude_args(
        [f"source:{t.source_name}.{t.name}" for t in source_tables(manifest) if t.unique_id in never_loaded]
    )


def skipped_marts(manifest: dict, plan: BuildPlan) -> list[str]:
    return sorted(
        manifest["nodes"][uid]["name"]
        for uid in plan.skipped
        if uid in manifest["nodes"] and manifest["nodes"][uid]["config"].get("schema") == "marts"
    )


@dataclass(frozen=True)
class Skips:
    """What the dbt commands of one build leave out, and why (JSON-serialisable for Prefect)."""

    messages: list[str]
    excluded: list[str]  # dbt selectors of the skipped nodes
    marts: list[str]


def skips(manifest: dict) -> Skips:
    """The build plan for this warehouse as dbt arguments; SourcesVanished when a source table
    was dropped after loading."""
    planned = check(manifest)
    return Skips(
        messages(manifest, planned),
        excluded(manifest, planned),
        skipped_marts(manifest, planned),
    )


def table_states(manifest: dict) -> tuple[dict[str, str], list[SourceTable]]:
    """(never loaded: unique_id -> reason, vanished) for the source tables of a manifest."""
    tables = source_tables(manifest)
    existing = _existing_tables({table.schema for table in tables})
    incomplete = {table.schema for table in tables if (table.schema, table.identifier) not in existing}
    created = {schema: _created_by_dlt(schema) for schema in incomplete if (schema, "_dlt_version") in existing}
    return classify(tables, existing, created)


def check(manifest: dict) -> BuildPlan:
    """The plan for this warehouse; SourcesVanished when a source table was dropped after loading."""
    never_loaded, vanished = table_states(manifest)
    if vanished:
        raise SourcesVanished("; ".join(_vanished_message(table) for table in vanished))
    return plan(manifest, never_loaded)


def _vanished_message(table: SourceTable) -> str:
    return (
        f"source {table.source_name} was loaded but {table.schema}.{table.identifier} is gone (dlt created it, "
        f"see {table.schema}._dlt_version): restore it, or drop schema {table.schema} and load the source again"
    )


def _existing_tables(schemas: set[str]) -> set[tuple[str, str]]:
    if not schemas:
        return set()
    placeholders = ", ".join(["%s"] * len(schemas))
    _, found = query(
        f"select table_schema, table_name from information_schema.tables where table_schema in ({placeholders})",
        sorted(schemas),
    )
    return set(found)


def _created_by_dlt(schema: str) -> set[str]:
    """Tables that have seen data in the latest stored version of each dlt schema of a dataset."""
    relation = f'"{schema}"."_dlt_version"'
    _, versions = query(
        f"select schema from {relation} as versions "
        f"where inserted_at = (select max(inserted_at) from {relation} as latest "
        "where latest.schema_name = versions.schema_name)"
    )
    return {
        name
        for (document,) in versions
        for name, table in json.loads(document)["tables"].items()
        if table.get("x-normalizer", {}).get("seen-data")
    }
