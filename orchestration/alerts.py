"""Alerts: a person hears when a run fails or crashes, the dbt gate is red, a source is stale or
vehicle files went to failed/ (README: Alerts).

The flows declare `on_completion`, `on_failure` and `on_crashed` hooks (FLOW_HOOKS, in
orchestration/flows.py), so every deployment of prefect.yaml, served or run by a worker, and a
command-line run alert alike, with or without a Prefect server; an automation would need the
server's events. A run's hook turns what the run saw into an Observation: the incidents it found
and what it checked. Incidents are grouped by key: an open incident seen again is not announced
again unless its specifics (signature) change; a run that checked a key and found it healthy
announces the recovery once. The open incidents live in <data dir>/alerts/incidents.json, read
and written under a file lock and replaced atomically, so concurrent runs neither lose nor
repeat an announcement.

Destinations, from the environment or the secret chain (core/secrets.py), never from a file:
a webhook (ELT_ALERT_WEBHOOK_URL, ELT_ALERT_WEBHOOK_FORMAT slack|teams|json) and email over SMTP
(ELT_ALERT_SMTP_HOST, ELT_ALERT_EMAIL_TO, ...). Nothing configured: nothing is sent or stored.
A destination that fails is one warning; it never fails the run.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import smtplib
import socket
import ssl
import tempfile
import urllib.request
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from core.secrets import SecretsError, alert_secrets, is_true
from core.settings import data_dir, environment
from orchestration.dbt_gate import DbtGateFailed, GateResult, TestFailure, what_went_wrong

log = logging.getLogger(__name__)

WEBHOOK_FORMATS = ("slack", "teams", "json")
SEND_TIMEOUT_SECONDS = 10
FRESHNESS_PASS = "pass"
STATE_FILE = "incidents.json"
GATE_ARTIFACT = "dbt-gate"


# ---- what a run saw ------------------------------------------------------------------------


@dataclass(frozen=True)
class Incident:
    key: str  # what is broken: at most one open incident per key
    signature: str  # its specifics: a change while open is announced again
    title: str
    details: tuple[str, ...] = ()


@dataclass(frozen=True)
class Observation:
    incidents: tuple[Incident, ...]
    checked: frozenset[str]  # keys the run looked at: open ones it did not see there have recovered


@dataclass(frozen=True)
class RunContext:
    flow: str
    deployment: str | None
    flow_run: str
    flow_run_id: str
    environment: str
    link: str | None = None

    @property
    def scope(self) -> str:
        """Runs of one deployment (or of one flow outside deployments) share their run and gate incidents."""
        return f"{self.flow}/{self.deployment}" if self.deployment else self.flow


def run_key(scope: str) -> str:
    return f"run:{scope}"


def gate_key(scope: str) -> str:
    return f"gate:{scope}"


# Freshness and failed files belong to the environment's warehouse and data dir, whichever run saw them.
FRESHNESS_KEY = "freshness"
FAILED_FILES_KEY = "failed-files"


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def failing_rows_table(failure: TestFailure) -> str | None:
    """`test_failures.<name>` from the stored failures' relation ("db"."test_failures"."name")."""
    if not failure.relation:
        return None
    parts = [part.strip('"') for part in failure.relation.split(".")]
    return ".".join(parts[-2:])


def describe_test_failure(failure: TestFailure) -> str:
    table = failing_rows_table(failure)
    where = f"; rows in {table}" if table and failure.failures else ""
    return f"{failure.test} on {failure.model or '?'}: {what_went_wrong(failure)}{where}"


def gate_incident(scope: str, result: GateResult) -> Incident:
    tests = sorted(failure.test for failure in result.errors)
    return Incident(
        key=gate_key(scope),
        signature=",".join(tests),
        title=f"dbt gate red in {scope}: {plural(len(tests), 'failing test')}, nothing published",
        details=(
            *map(describe_test_failure, result.errors),
            f"Where: the `{GATE_ARTIFACT}` artifact of the flow run (failing tests, sample rows); "
            "the failing rows in the test_failures tables named above.",
        ),
    )


def stale_sources(freshness: Mapping[str, str]) -> dict[str, str]:
    return {name: status for name, status in sorted(freshness.items()) if status != FRESHNESS_PASS}


def freshness_incident(stale: Mapping[str, str]) -> Incident:
    return Incident(
        key=FRESHNESS_KEY,
        signature=",".join(f"{name}={status}" for name, status in sorted(stale.items())),
        title=f"{plural(len(stale), 'source')} stale ({', '.join(sorted(stale))})",
        details=(
            *(f"{name}: {status}" for name, status in sorted(stale.items())),
            "Where: `python -m loaders status` (Source freshness); dbt_target/sources.json in the data dir.",
        ),
    )


def failed_files_of(outcome: Mapping[str, Any], reasons_on_disk: Mapping[str, tuple[str, str]]) -> dict[str, str]:
    """{failed/<type>/<file>: reason} for the files this run moved to failed/: refused by discovery
    (their reason read back from <file>.error.json) or by the lake job."""
    failed = {}
    for name in (outcome.get("discovery") or {}).get("failed", []):
        file_type, reason = reasons_on_disk.get(name, ("?", "refused at discovery"))
        failed[f"failed/{file_type}/{name}"] = reason
    for batch in outcome.get("lake") or []:
        for name, reason in batch["failed_files"].items():
            failed[f"failed/{batch['file_type']}/{name}"] = reason
    return failed


def failed_files_incident(failed: Mapping[str, str]) -> Incident:
    # Grouped by folder and reason, not by file: the next bad file of the same kind is the same incident.
    kinds = sorted({f"{path.rsplit('/', 1)[0]}: {reason}" for path, reason in failed.items()})
    return Incident(
        key=FAILED_FILES_KEY,
        signature="|".join(kinds),
        title=f"{plural(len(failed), 'vehicle file')} moved to failed/",
        details=(
            *(f"{path}: {reason}" for path, reason in sorted(failed.items())),
            "Where: <file>.error.json beside each file in the data dir; `python -m loaders status`.",
        ),
    )


def observe_steps(outcome: Mapping[str, Any], reasons_on_disk: Mapping) -> Observation:
    """What a run's steps saw, as far as it got: freshness and the files it moved to failed/."""
    incidents: list[Incident] = []
    checked = set()
    if "freshness" in outcome:
        checked.add(FRESHNESS_KEY)
        if stale := stale_sources(outcome["freshness"]):
            incidents.append(freshness_incident(stale))
    if "discovery" in outcome or "lake" in outcome:
        checked.add(FAILED_FILES_KEY)
        if failed := failed_files_of(outcome, reasons_on_disk):
            incidents.append(failed_files_incident(failed))
    return Observation(tuple(incidents), frozenset(checked))


def observe_completed(scope: str, outcome: Mapping[str, Any], reasons_on_disk: Mapping) -> Observation:
    """A completed run: its steps' findings; the run and, when it ran, the gate are healthy."""
    steps = observe_steps(outcome, reasons_on_disk)
    checked = {run_key(scope)}
    if "tests" in outcome or outcome.get("gate_skipped"):
        checked.add(gate_key(scope))  # a skipped gate means the last build from these inputs passed
    return Observation(steps.incidents, steps.checked | checked)


def observe_failed(
    scope: str, error: BaseException | None, message: str, outcome: Mapping[str, Any], reasons_on_disk: Mapping
) -> Observation:
    """A failed run: a red gate is its own incident, anything else the run's failure; what the
    steps saw before it failed counts too."""
    steps = observe_steps(outcome, reasons_on_disk)
    if isinstance(error, DbtGateFailed) and error.result is not None:
        failure = gate_incident(scope, error.result)
    else:
        kind = type(error).__name__ if error is not None else "failed"
        failure = Incident(run_key(scope), signature=kind, title=f"run of {scope} failed ({kind})", details=(message,))
    return Observation((failure, *steps.incidents), steps.checked)


def observe_crashed(scope: str, message: str) -> Observation:
    incident = Incident(run_key(scope), signature="crashed", title=f"run of {scope} crashed", details=(message,))
    return Observation((incident,), frozenset())


# ---- grouping: which observations are announced ---------------------------------------------


@dataclass(frozen=True)
class Notice:
    event: str  # opened | changed | resolved
    key: str
    title: str
    details: tuple[str, ...]
    opened_at: str
    repeats: int = 0


def reconcile(open_incidents: Mapping[str, dict], observation: Observation, now: str) -> tuple[dict, list[Notice]]:
    """The open incidents after this observation, and what to announce. A repeat of an open
    incident only counts; a changed one is announced again; a checked key not seen is resolved."""
    state = {key: dict(record) for key, record in open_incidents.items()}
    notices = []
    for incident in observation.incidents:
        known = state.get(incident.key)
        if known and known["signature"] == incident.signature:
            known["repeats"] += 1
            known["last_seen_at"] = now
            continue
        opened_at = known["opened_at"] if known else now
        state[incident.key] = {**asdict(incident), "opened_at": opened_at, "last_seen_at": now, "repeats": 0}
        notices.append(
            Notice("changed" if known else "opened", incident.key, incident.title, incident.details, opened_at)
        )
    seen = {incident.key for incident in observation.incidents}
    for key in sorted(observation.checked - seen):
        if resolved := state.pop(key, None):
            notices.append(Notice("resolved", key, resolved["title"], (), resolved["opened_at"], resolved["repeats"]))
    return state, notices


# ---- messages ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    event: str
    key: str
    title: str
    text: str

    @property
    def is_recovery(self) -> bool:
        return self.event == "resolved"


def render(notice: Notice, context: RunContext) -> Message:
    prefix = {"opened": "ALERT", "changed": "ALERT (changed)", "resolved": "RESOLVED"}[notice.event]
    title = f"[{context.environment}] {prefix}: {notice.title}"
    # The link ends its line: a trailing period would become part of the URL in chat clients.
    run = f"flow run {context.flow_run} of {context.scope}" + (f": {context.link}" if context.link else "")
    if notice.event == "resolved":
        lines = [
            f"Open since {notice.opened_at}; {repeats_not_announced(notice.repeats)}.",
            f"Healthy again in {run}",
        ]
    else:
        lines = [*notice.details, "Repeats are not announced again until this changes or recovers.", f"Seen in {run}"]
    return Message(notice.event, notice.key, title, "\n".join(lines))


def repeats_not_announced(repeats: int) -> str:
    return f"{plural(repeats, 'repeat')} {'was' if repeats == 1 else 'were'} not announced"


def slack_payload(message: Message) -> dict:
    return {"text": f"*{message.title}*\n{message.text}"}


def teams_payload(message: Message) -> dict:
    """An Adaptive Card message, what Teams' Workflows webhooks take (Office 365 connectors and
    their MessageCard are being retired)."""
    return {
        "type": "message",
        "attachments": [
            {
                "contentType": "application/vnd.microsoft.card.adaptive",
                "content": {
                    "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                    "type": "AdaptiveCard",
                    "version": "1.4",
                    "body": [
                        {
                            "type": "TextBlock",
                            "text": message.title,
                            "weight": "Bolder",
                            "size": "Medium",
                            "color": "Good" if message.is_recovery else "Attention",
                            "wrap": True,
                        },
                        *({"type": "TextBlock", "text": line, "wrap": True} for line in message.text.splitlines()),
                    ],
                },
            }
        ],
    }


def json_payload(message: Message) -> dict:
    return asdict(message)


PAYLOADS = {"slack": slack_payload, "teams": teams_payload, "json": json_payload}


def email_message(message: Message, sender: str, recipients: tuple[str, ...]) -> EmailMessage:
    email = EmailMessage()
    email["Subject"] = message.title
    email["From"] = sender
    email["To"] = ", ".join(recipients)
    email.set_content(message.text)
    return email


# ---- configuration and delivery ------------------------------------------------------------


@dataclass(frozen=True)
class Smtp:
    host: str
    port: int
    sender: str
    recipients: tuple[str, ...]
    starttls: bool
    user: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Destinations:
    webhook_url: str | None = field(default=None, repr=False)  # a Slack/Teams URL is itself a secret
    webhook_format: str = "json"
    smtp: Smtp | None = None

    @property
    def any(self) -> bool:
        return bool(self.webhook_url or self.smtp)


def destinations(environ: Mapping[str, str] = os.environ, secrets: Mapping[str, str] | None = None) -> Destinations:
    """Where alerts go: ELT_ALERT_* variables; the URL and SMTP login may come from the secret chain."""
    secrets = alert_secrets(environ) if secrets is None else secrets
    webhook_format = environ.get("ELT_ALERT_WEBHOOK_FORMAT") or "json"
    if webhook_format not in WEBHOOK_FORMATS:
        log.warning("ELT_ALERT_WEBHOOK_FORMAT=%r is not one of %s: sending json", webhook_format, WEBHOOK_FORMATS)
        webhook_format = "json"
    smtp = None
    host, recipients = environ.get("ELT_ALERT_SMTP_HOST"), environ.get("ELT_ALERT_EMAIL_TO")
    if host and recipients:
        starttls = is_true(environ.get("ELT_ALERT_SMTP_STARTTLS", "false"))
        smtp = Smtp(
            host=host,
            port=int(environ.get("ELT_ALERT_SMTP_PORT") or (587 if starttls else 25)),
            sender=environ.get("ELT_ALERT_EMAIL_FROM") or f"elt-alerts@{socket.getfqdn()}",
            recipients=tuple(address.strip() for address in recipients.split(",") if address.strip()),
            starttls=starttls,
            user=secrets.get("ELT_ALERT_SMTP_USER"),
            password=secrets.get("ELT_ALERT_SMTP_PASSWORD"),
        )
    return Destinations(secrets.get("ELT_ALERT_WEBHOOK_URL"), webhook_format, smtp)


def post_webhook(message: Message, url: str, webhook_format: str) -> None:
    """urllib, not requests: urllib3 logs each request's URL (the secret) at DEBUG."""
    body = json.dumps(PAYLOADS[webhook_format](message)).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=SEND_TIMEOUT_SECONDS):
        pass  # urlopen raises HTTPError for any answer but 2xx/3xx


def send_email(message: Message, smtp: Smtp) -> None:
    with smtplib.SMTP(smtp.host, smtp.port, timeout=SEND_TIMEOUT_SECONDS) as server:
        if smtp.starttls:
            server.starttls(context=ssl.create_default_context())
        if smtp.user and smtp.password:
            server.login(smtp.user, smtp.password)
        server.send_message(email_message(message, smtp.sender, smtp.recipients))


def deliver(message: Message, to: Destinations) -> bool:
    """True when at least one destination took the message. A failure is one warning naming the
    destination kind and the error's type: the URL (a token) and the server's reply stay out of logs."""
    sent = False
    for kind, send in (
        ("webhook", (lambda: post_webhook(message, to.webhook_url, to.webhook_format)) if to.webhook_url else None),
        ("email", (lambda: send_email(message, to.smtp)) if to.smtp else None),
    ):
        if send is None:
            continue
        try:
            send()
            sent = True
        except Exception as error:  # any failure of a destination: the run goes on
            log.warning("alert %r not sent by %s: %s", message.title, kind, type(error).__name__)
    return sent


# ---- the open incidents, shared by concurrent runs ------------------------------------------


def state_path() -> Path:
    return data_dir() / "alerts" / STATE_FILE


@contextlib.contextmanager
def locked_state(path: Path) -> Iterator[dict]:
    """The open incidents, under an exclusive lock for the whole read-announce-write; written back
    through a temporary file and os.replace, so a run killed mid-write leaves the old file whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = json.loads(path.read_text()) if path.exists() else {}
        yield state
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=".incidents-", delete=False) as temporary:
            json.dump(state, temporary, indent=2, sort_keys=True)
            temporary.flush()
            os.fsync(temporary.fileno())
        os.replace(temporary.name, path)


def configured_destinations() -> Destinations | None:
    """The destinations, None when there are none (or their secret cannot be read: one warning)."""
    try:
        to = destinations()
    except SecretsError as error:
        log.warning("alerts not sent: %s", error)
        return None
    return to if to.any else None


def announce(observation: Observation, context: RunContext, to: Destinations | None = None) -> list[Message]:
    """Reconcile the observation with the open incidents and send what is new; returns what was
    sent. An announcement no destination took is not recorded, so the next run tries again."""
    if to is None:
        to = configured_destinations()
    if to is None or not to.any:
        return []
    sent = []
    with locked_state(state_path()) as state:
        before = dict(state)
        after, notices = reconcile(before, observation, datetime.now(UTC).isoformat(timespec="seconds"))
        for notice in notices:
            message = render(notice, context)
            if deliver(message, to):
                sent.append(message)
            elif notice.key in before:
                after[notice.key] = before[notice.key]
            else:
                after.pop(notice.key, None)
        state.clear()
        state.update(after)
    return sent


# ---- Prefect hooks -------------------------------------------------------------------------


def run_context(flow, flow_run) -> RunContext:
    return RunContext(
        flow=flow.name,
        deployment=deployment_name(flow_run.deployment_id),
        flow_run=flow_run.name,
        flow_run_id=str(flow_run.id),
        environment=environment(),
        link=flow_run_link(flow_run.id),
    )


def deployment_name(deployment_id) -> str | None:
    if deployment_id is None:
        return None
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            return client.read_deployment(deployment_id).name
    except Exception as error:  # the API is unreachable: the alert names the id instead
        log.warning("deployment %s not read (%s)", deployment_id, type(error).__name__)
        return str(deployment_id)


def flow_run_link(flow_run_id) -> str | None:
    from prefect.settings import get_current_settings

    ui = get_current_settings().ui_url
    return f"{ui.rstrip('/')}/runs/flow-run/{flow_run_id}" if ui else None


def reasons_of_failed_files() -> dict[str, tuple[str, str]]:
    from loaders.status import failed_files

    return {failed.name: (failed.file_type, failed.reason) for failed in failed_files()}


# The outcome dict of the latest flow runs in this process, as each fills it: a run that fails
# still reports what it saw, and a completed run's outcome does not hang on its final state's
# data, which Prefect replaces by the API's copy (without data) when the server rejects a
# repeated Completed proposal. Bounded: a serving process runs flows for ever.
_outcomes: OrderedDict[str, dict] = OrderedDict()
KEPT_OUTCOMES = 32


def outcome_so_far(outcome: dict) -> dict:
    """Called by a flow with its outcome dict as it starts filling it."""
    from prefect.runtime import flow_run

    if flow_run.id:
        _outcomes[str(flow_run.id)] = outcome
        while len(_outcomes) > KEPT_OUTCOMES:
            _outcomes.popitem(last=False)
    return outcome


def run_outcome(flow_run_id, state=None) -> dict:
    """The outcome the run filled in; else its final state's result, when that has one."""
    if (recorded := _outcomes.get(str(flow_run_id))) is not None:
        return recorded
    result = final_result(state) if state is not None else None
    return result if isinstance(result, Mapping) else {}


def final_result(state):
    from prefect.exceptions import MissingResult

    try:
        return state.result(raise_on_failure=False)
    except MissingResult:
        return None


def announce_run(flow, flow_run, observe: Callable[[str], Observation]) -> None:
    """A hook's announcement; nothing is looked up when no destination is configured."""
    if to := configured_destinations():
        context = run_context(flow, flow_run)
        announce(observe(context.scope), context, to)


def on_completion(flow, flow_run, state) -> None:
    outcome = run_outcome(flow_run.id, state)
    announce_run(flow, flow_run, lambda scope: observe_completed(scope, outcome, reasons_of_failed_files()))


def on_failure(flow, flow_run, state) -> None:
    outcome = run_outcome(flow_run.id)
    error = final_result(state)
    error = error if isinstance(error, BaseException) else None
    announce_run(
        flow,
        flow_run,
        lambda scope: observe_failed(scope, error, state.message or "", outcome, reasons_of_failed_files()),
    )


def on_crashed(flow, flow_run, state) -> None:
    announce_run(flow, flow_run, lambda scope: observe_crashed(scope, state.message or ""))


# Declared on each flow in orchestration/flows.py: every deployment of that flow alerts.
FLOW_HOOKS = {"on_completion": [on_completion], "on_failure": [on_failure], "on_crashed": [on_crashed]}
