"""dbt as the data-quality gate: build into marts_audit, publish only when no error-severity
test failed (write-audit-publish), and explain failures in a Prefect artifact.

dbt runs in the flow's process, in the step that calls it; each node's result is a row of the
`dbt-nodes` artifact. ELT_DBT_NODE_TASKS=true runs it through prefect-dbt's PrefectDbtRunner
instead, which gives each node its own Prefect task (README: The gate). Its target folder lives
in the data dir and is kept between runs, so a run after a failed one can resume with `dbt
retry` (failed and skipped nodes only).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from core.secrets import is_true
from core.settings import DBT_PROFILES_DIR, DBT_PROJECT_DIR, data_dir, target
from core.warehouse import query
from orchestration.build_plan import VARS, selector_nodes
from orchestration.concurrency import run_logger

log = logging.getLogger(__name__)

AUDIT_VARS = json.dumps({"audit": True, **VARS})
FAILED = ("fail", "error")
SAMPLE_ROWS = 5
PUBLISHED_INPUTS = "published_inputs.json"
PARTIAL_PARSE = "partial_parse.msgpack"
LOAD_MARKERS = ("_dlt_load_id", "batch_id")
PROJECT_OUTPUT_DIRS = ("target", "logs", "dbt_packages")


class DbtGateFailed(RuntimeError):
    """Error-severity dbt failures: nothing was published. The message names each failure; the
    result carries them for the alert (orchestration/alerts.py)."""

    def __init__(self, message: str, result: GateResult | None = None) -> None:
        super().__init__(message)
        self.result = result


class DbtCommandFailed(RuntimeError):
    """dbt could not run the command at all (no node results to gate on)."""


@dataclass
class TestFailure:
    test: str
    model: str | None
    status: str
    failures: int | None
    message: str
    sample: list[dict] = field(default_factory=list)
    relation: str | None = None  # where store_failures kept the failing rows


@dataclass
class GateResult:
    command: list[str]
    counts: dict[str, int]
    errors: list[TestFailure]
    warnings: list[TestFailure]

    @property
    def passed(self) -> bool:
        return not self.errors


def target_dir() -> Path:
    return data_dir() / "dbt_target"


def seed_partial_parse() -> None:
    """A target dir without a parse starts from the one in dbt's default target dir, which the
    image bakes at build time (deploy/Containerfile), so a container's first run does not parse
    the whole project. dbt checks the seed itself: different vars, profile or files re-parse."""
    baked = DBT_PROJECT_DIR / "target" / PARTIAL_PARSE
    seeded = target_dir() / PARTIAL_PARSE
    if baked.exists() and not seeded.exists():
        seeded.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(baked, seeded)


def node_tasks() -> bool:
    """ELT_DBT_NODE_TASKS: each dbt node as its own Prefect task. Off by default: on the bundled
    sample the gate's 141 nodes take dbt ~5 s, and their tasks ~30 s of CPU more (README)."""
    return is_true(os.environ.get("ELT_DBT_NODE_TASKS", ""))


def _project_options() -> list[str]:
    return ["--project-dir", str(DBT_PROJECT_DIR), "--profiles-dir", str(DBT_PROFILES_DIR)]


def invoke(args: list[str]):
    """Run one dbt command in this process (through PrefectDbtRunner, one task per node, when
    node_tasks()); raise when dbt itself failed (a parse error, a lost connection, an unknown
    selector), as PrefectDbtRunner does: failing nodes are in the result, not raised. Nothing of
    dbt's goes to the console; its log file is in dbt's log path (dbt_project/logs, DBT_LOG_PATH).

    Every command shares one target folder, so each reuses the previous one's parse (with the
    same vars). Only build and retry write run_results.json there: `dbt retry` reads it;
    freshness writes sources.json and parse the manifest instead; anything else runs with
    --no-write-json."""
    # This process lives on after dbt: dbt-duckdb must let go of the warehouse file when the
    # command ends, or the next run's turn could not open it (profiles.yml, keep_open).
    os.environ["DBT_DUCKDB_KEEP_OPEN"] = "False"
    if args[0] not in ("build", "retry", "source", "parse"):
        args = [*args, "--no-write-json"]
    seed_partial_parse()
    log.info("dbt %s", " ".join(args))
    if node_tasks():
        from prefect_dbt import PrefectDbtRunner, PrefectDbtSettings

        settings = PrefectDbtSettings(
            project_dir=DBT_PROJECT_DIR, profiles_dir=DBT_PROFILES_DIR, target_path=target_dir()
        )
        return PrefectDbtRunner(settings=settings, raise_on_failure=False).invoke(args)

    quiet = ["--log-level", "none", "--log-level-file", "info"]
    result = dbt_runner().invoke([*args, *_project_options(), "--target-path", str(target_dir()), *quiet])
    if not result.success and result.exception:
        raise DbtCommandFailed(f"dbt {' '.join(args)} failed: {result.exception}")
    return result


def listed(selector: str) -> list[str]:
    """A selector's nodes as dbt selections: dbt ls on the target dir's parse, not through Prefect
    (PrefectDbtRunner refuses --log-level none, and a listing is no task)."""
    options = [*_project_options(), "--target-path", str(target_dir()), "--vars", AUDIT_VARS, "--no-write-json"]
    seed_partial_parse()
    return selector_nodes(dbt_runner(), selector, *options)


def dbt_runner():
    """dbt's own runner, in this process, its unattached warnings logged to the run that made it."""
    from dbt.cli.main import dbtRunner

    # dbt fires events from its worker threads too, which do not carry the Prefect run's context:
    # the run's logger is taken here, in the run's own thread.
    return dbtRunner(callbacks=[functools.partial(log_unattached_warning, logger=run_logger())])


def log_unattached_warning(event, logger: logging.Logger | logging.LoggerAdapter) -> None:
    """dbt's warnings that belong to no node (a selection that matches nothing, a deprecation, a
    config that applies to nothing) go to the run's log, since nothing of dbt's goes to the
    console; the nodes' own warnings the gate reports from run_results.json."""
    node = getattr(event.data, "node_info", None)
    attached = node is not None and node.unique_id
    # dbt repeats each deprecation in a summary at the end of the command.
    if event.info.level == "warn" and not attached and event.info.name != "DeprecationsSummary":
        logger.warning("dbt: %s", event.info.msg)


def manifest() -> dict:
    return json.loads((target_dir() / "manifest.json").read_text())


def inputs_fingerprint(selector: str | None, version: str) -> str | None:
    """A digest of everything a build reads: the dbt project's files (their `version`), the
    selector and target, and per source table of the last build's manifest its row count and
    newest load marker (dlt's _dlt_load_id, the lake's batch_id). None before the first build."""
    manifest = target_dir() / "manifest.json"
    if not manifest.exists():
        return None
    digest = hashlib.sha256(json.dumps([target(), selector, version]).encode())
    sources = json.loads(manifest.read_text())["sources"]
    for unique_id in sorted(sources):
        source = sources[unique_id]
        digest.update(
            json.dumps([unique_id, _table_state(source["schema"], source["identifier"])], default=str).encode()
        )
    return digest.hexdigest()


def project_file_digests() -> list[str]:
    """`<path>:<sha256>` of every file of the dbt project (not dbt's own outputs), sorted."""
    lines = []
    for path in sorted(DBT_PROJECT_DIR.rglob("*")):
        relative = path.relative_to(DBT_PROJECT_DIR)
        if path.is_file() and relative.parts[0] not in PROJECT_OUTPUT_DIRS:
            lines.append(f"{relative}:{hashlib.sha256(path.read_bytes()).hexdigest()}")
    return lines


def project_version() -> str:
    """The dbt project's version as its files' digest: what promotion compares between the
    build that published staging's marts and the project being promoted."""
    return hashlib.sha256("\n".join(project_file_digests()).encode()).hexdigest()


def _table_state(schema: str, table: str) -> list:
    _, columns = query(
        "select column_name from information_schema.columns where table_schema = %s and table_name = %s",
        [schema, table],
    )
    if not columns:
        return ["missing"]
    markers = [name for (name,) in columns if name in LOAD_MARKERS]
    relation = ".".join('"' + part.replace('"', '""') + '"' for part in (schema, table))
    _, [state] = query(f"select count(*){''.join(f', max({marker})' for marker in markers)} from {relation}")
    return list(state)


def already_published(fingerprint: str | None) -> bool:
    """True when the last build was published from exactly these inputs (and did not fail since)."""
    recorded = target_dir() / PUBLISHED_INPUTS
    if fingerprint is None or not recorded.exists() or build_failed(run_results()):
        return False
    return json.loads(recorded.read_text()).get("fingerprint") == fingerprint


def record_published(fingerprint: str | None, version: str) -> None:
    """What the last publish was built from: its inputs, and the project version promotion checks
    (taken before the build, so a file edited during it does not pass for what was built)."""
    if fingerprint is not None:
        record = {"fingerprint": fingerprint, "project_version": version}
        (target_dir() / PUBLISHED_INPUTS).write_text(json.dumps(record))


def last_publish(folder: Path | None = None) -> dict | None:
    """The record of the last publish in a dbt target folder, None when its last build or retry
    failed (or nothing was ever published): only a green gate's marts are published."""
    folder = folder or target_dir()
    recorded = folder / PUBLISHED_INPUTS
    if not recorded.exists() or build_failed(run_results(folder)):
        return None
    return json.loads(recorded.read_text())


def run_results(folder: Path | None = None, required: bool = False) -> dict | None:
    """The last dbt command's run_results.json in `folder` (the flow's target folder); None when
    there is none, unless it is `required`."""
    path = (folder or target_dir()) / "run_results.json"
    if not path.exists() and not required:
        return None
    return json.loads(path.read_text())


def of_a_build(document: dict | None) -> bool:
    """Whether run_results.json (`document`, None when there is none) is a build's or a retry's."""
    return document is not None and document.get("args", {}).get("which") in ("build", "retry")


def build_failed(document: dict | None) -> bool:
    """Whether run_results.json (`document`, None when there is none) is a build's or retry's in
    which a node failed or was skipped."""
    if not of_a_build(document):
        return False
    return any(result["status"] in (*FAILED, "skipped") for result in document["results"])


def excluded(document: dict | None) -> list[str]:
    """What a build or retry left out (--exclude), as its run_results.json (`document`) records it."""
    return ((document or {}).get("args") or {}).get("exclude") or []


def summarise(command: list[str], document: dict, folder: Path | None = None) -> GateResult:
    """From run_results.json (`document`) and the manifest in `folder`: what failed, on which
    model, with sample rows."""
    folder = folder or target_dir()
    results = document["results"]
    nodes = json.loads((folder / "manifest.json").read_text())["nodes"]
    counts: dict[str, int] = {}
    errors, warnings = [], []
    for result in results:
        counts[result["status"]] = counts.get(result["status"], 0) + 1
        if result["status"] not in (*FAILED, "warn"):
            continue
        node = nodes.get(result["unique_id"], {})
        failure = TestFailure(
            test=node.get("name", result["unique_id"]),
            model=node.get("attached_node") or next(iter(node.get("depends_on", {}).get("nodes", [])), None),
            status=result["status"],
            failures=result.get("failures"),
            message=(result.get("message") or "").strip(),
            sample=_sample_rows(result.get("relation_name")),
            relation=result.get("relation_name"),
        )
        (warnings if result["status"] == "warn" else errors).append(failure)
    return GateResult(command, counts, errors, warnings)


def node_results(document: dict) -> list[dict]:
    """One row per node of a build or retry (its run_results.json, `document`): the `dbt-nodes` artifact."""
    return [
        {
            "node": result["unique_id"],
            "status": result["status"],
            "seconds": round(result.get("execution_time") or 0, 2),
            "failures": result.get("failures"),
            "message": (result.get("message") or "").strip()[:300],
        }
        for result in document["results"]
    ]


def plain_target_dir() -> Path:
    """Where `make build` or a plain `dbt build` writes: dbt reads DBT_TARGET_PATH, relative to the project."""
    return DBT_PROJECT_DIR / os.environ.get("DBT_TARGET_PATH", "target")


def last_gate() -> tuple[datetime, GateResult] | None:
    """When the last dbt build or retry ran and its result, from the elt flow's target folder or
    a plain `dbt build`'s, whichever ran last; None when neither has run."""
    candidates = []
    for folder in (target_dir(), plain_target_dir()):
        document = run_results(folder)
        if of_a_build(document) and (folder / "manifest.json").exists():
            finished = datetime.fromisoformat(document["metadata"]["generated_at"].replace("Z", "+00:00"))
            candidates.append((finished, folder, document))
    if not candidates:
        return None
    finished, folder, document = max(candidates, key=lambda candidate: candidate[0])
    return finished, summarise([document["args"]["which"]], document, folder)


def _sample_rows(relation: str | None) -> list[dict]:
    """A few failing rows from the test's store_failures table, when there is one."""
    if not relation:
        return []
    try:
        columns, rows = query(f"select * from {relation} limit {SAMPLE_ROWS}")
    except Exception as error:  # the table may not exist for a test that errored before running
        log.debug("no stored failures at %s: %s", relation, error)
        return []
    return [dict(zip(columns, row, strict=True)) for row in rows]


def markdown_report(result: GateResult) -> str:
    lines = [
        f"# dbt gate: {'passed' if result.passed else 'FAILED - nothing published'}",
        "",
        f"`dbt {' '.join(result.command)}`: " + ", ".join(f"{n} {s}" for s, n in sorted(result.counts.items())),
        "",
    ]
    for title, failures in (("Errors (block publishing)", result.errors), ("Warnings (do not block)", result.warnings)):
        if not failures:
            continue
        lines += [f"## {title}", "", "| test | model | status | failing rows |", "| --- | --- | --- | --- |"]
        lines += [
            f"| {f.test} | {f.model or '-'} | {f.status} | {f.failures if f.failures is not None else '-'} |"
            for f in failures
        ]
        lines.append("")
        for failure in failures:
            if failure.sample:
                lines += [
                    f"### {failure.test}: sample failing rows",
                    "",
                    "```",
                    *map(_json_line, failure.sample),
                    "```",
                    "",
                ]
            elif failure.status == "error" and failure.message:
                lines += [f"### {failure.test}", "", "```", failure.message[:1500], "```", ""]
    return "\n".join(lines)


def _json_line(row: dict) -> str:
    return json.dumps(row, default=str)


def failure_message(result: GateResult) -> str:
    named = "; ".join(f"{f.test} on {f.model or '?'} ({what_went_wrong(f)})" for f in result.errors)
    return f"dbt gate failed, nothing published: {named}"


def what_went_wrong(failure: TestFailure) -> str:
    if failure.failures is not None:
        return f"{failure.status}, {failure.failures} failing rows"
    first_line = next((line.strip() for line in failure.message.splitlines() if line.strip()), "no message")
    return f"{failure.status}: {first_line[:200]}"
