"""Alerts (orchestration/alerts.py) from real `elt` runs (real Prefect, dbt, DuckDB) to real
receivers on 127.0.0.1 started here: an HTTP server keeping each POST's JSON body, and aiosmtpd
keeping each email."""

from __future__ import annotations

import email
import json
import logging
import os
import threading
from collections.abc import Iterator
from email.message import Message as EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from core.warehouse import connect, execute
from loaders.vehicles.generate import generate
from orchestration import alerts
from orchestration.dbt_gate import DbtGateFailed
from orchestration.flows import elt, maintenance

from .processes import free_port
from .test_secrets import manager  # noqa: F401  (moto's Secrets Manager, a fixture)

# Alerts read a run's outcome, not the warehouse: DuckDB only.
pytestmark = [pytest.mark.integration, pytest.mark.one_target]

RED_TEST = "source_not_null_vehicles_vehicle_events_vehicle_id"
ALERT_VARIABLES = (
    "ELT_ALERT_WEBHOOK_URL",
    "ELT_ALERT_WEBHOOK_FORMAT",
    "ELT_ALERT_SMTP_HOST",
    "ELT_ALERT_SMTP_PORT",
    "ELT_ALERT_SMTP_STARTTLS",
    "ELT_ALERT_SMTP_USER",
    "ELT_ALERT_SMTP_PASSWORD",
    "ELT_ALERT_EMAIL_FROM",
    "ELT_ALERT_EMAIL_TO",
)


class Webhook:
    """A webhook receiver: every POST's JSON body, in order; answers `status`."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.bodies.append(json.loads(body))
                self.send_response(receiver.status)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/T000/B000/secret-token"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def texts(self) -> list[str]:
        return [json.dumps(body) for body in self.bodies]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


class Mailbox:
    """aiosmtpd's handler: each message received, parsed."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []

    async def handle_DATA(self, server, session, envelope) -> str:
        self.messages.append(email.message_from_bytes(envelope.content))
        return "250 OK"


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    receiver = Webhook()
    yield receiver
    receiver.stop()


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    from aiosmtpd.controller import Controller

    box = Mailbox()
    controller = Controller(box, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield box, controller.port
    controller.stop()


@pytest.fixture
def no_alert_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*ALERT_VARIABLES, "ELT_SECRETS"):
        monkeypatch.delenv(name, raising=False)


def body_of(message: EmailMessage) -> str:
    return message.get_payload(decode=True).decode()


def alter_raw_events(sql: str) -> None:
    with connect(read_only=False) as connection:
        execute(connection, sql)


def test_red_gate_repeat_recovery_failed_files_and_stale_source_each_alert_once(
    prefect_api, data_dir, no_alert_settings, webhook, mailbox, monkeypatch
):
    box, smtp_port = mailbox
    monkeypatch.setenv("ELT_MODE", "live")  # only the files delivered here
    generate(data_dir / "incoming", files=1, events_per_file=40)

    # 1. Nothing configured: a run completes, nothing is sent and nothing is stored.
    elt(sources=["vehicles"], selector="vehicles")
    assert webhook.bodies == [] and box.messages == []
    assert not (data_dir / "alerts").exists()

    monkeypatch.setenv("ELT_ALERT_WEBHOOK_URL", webhook.url)
    monkeypatch.setenv("ELT_ALERT_WEBHOOK_FORMAT", "slack")
    monkeypatch.setenv("ELT_ALERT_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("ELT_ALERT_SMTP_PORT", str(smtp_port))
    monkeypatch.setenv("ELT_ALERT_EMAIL_FROM", "elt@example.test")
    monkeypatch.setenv("ELT_ALERT_EMAIL_TO", "oncall@example.test, data@example.test")

    # 2. Rows without a vehicle id reach the raw table and an empty file arrives: the gate is red
    #    (exactly one alert names the failing test) and the file moved to failed/ is its own alert.
    alter_raw_events(
        "insert into raw_vehicles.vehicle_events select * replace (null as vehicle_id) "
        "from raw_vehicles.vehicle_events limit 2"
    )
    (data_dir / "incoming" / "vehicles_events_20251103050000.json").write_bytes(b"")
    with pytest.raises(DbtGateFailed):
        elt(sources=["vehicles"], selector="vehicles")
    assert len(webhook.bodies) == 2 and len(box.messages) == 2
    [gate] = [body["text"] for body in webhook.bodies if RED_TEST in body["text"]]
    assert gate.startswith("*[dev] ALERT: dbt gate red in elt: 1 failing test, nothing published*")
    assert f"{RED_TEST} on source.elt.vehicles.vehicle_events: fail, 2 failing rows" in gate
    assert f"test_failures.{RED_TEST}" in gate and "`dbt-gate` artifact" in gate
    [mail] = [message for message in box.messages if "dbt gate red" in message["Subject"]]
    assert mail["Subject"] == "[dev] ALERT: dbt gate red in elt: 1 failing test, nothing published"
    assert mail["From"] == "elt@example.test" and mail["To"] == "oncall@example.test, data@example.test"
    assert f"{RED_TEST} on source.elt.vehicles.vehicle_events: fail, 2 failing rows" in body_of(mail)
    [failed] = [body["text"] for body in webhook.bodies if RED_TEST not in body["text"]]
    assert failed.startswith("*[dev] ALERT: 1 vehicle file moved to failed/*")
    assert "failed/vehicles_events/vehicles_events_20251103050000.json: empty file" in failed
    print(f"\n--- a red gate (Slack text) ---\n{gate}\n\n--- failed files ---\n{failed}")

    # 3. The same failure in the next run (dbt retry): no second alert.
    with pytest.raises(DbtGateFailed):
        elt(sources=[], selector="vehicles")
    assert len(webhook.bodies) == 2 and len(box.messages) == 2

    # 4. The bad rows are gone: the gate's recovery is announced once, and so is the files'
    #    (this run's discovery and lake job failed none).
    alter_raw_events("delete from raw_vehicles.vehicle_events where vehicle_id is null")
    outcome = elt(sources=["vehicles"], selector="vehicles")
    assert outcome["dbt_command"] == ["retry"]
    recoveries = sorted(body["text"] for body in webhook.bodies[2:])
    assert len(recoveries) == 2 and len(box.messages) == 4
    assert recoveries[0].startswith("*[dev] RESOLVED: 1 vehicle file moved to failed/*")
    assert recoveries[1].startswith("*[dev] RESOLVED: dbt gate red in elt: 1 failing test, nothing published*")
    assert "1 repeat was not announced" in recoveries[1]
    print(f"\n--- the gate's recovery (Slack text) ---\n{recoveries[1]}")

    # 5. The events were last loaded 5 hours ago (warn after 3): one stale-source alert.
    alter_raw_events("update raw_vehicles.vehicle_events set ingested_at = ingested_at - interval 5 hour")
    outcome = elt(sources=[], selector="vehicles")
    assert outcome["freshness"]["vehicles.vehicle_events"] == "warn"
    assert len(webhook.bodies) == 5 and len(box.messages) == 5
    stale = webhook.bodies[4]["text"]
    assert stale.startswith("*[dev] ALERT: 1 source stale (vehicles.vehicle_events)*")
    assert "vehicles.vehicle_events: warn" in stale
    assert set(json.loads((data_dir / "alerts" / "incidents.json").read_text())) == {"freshness"}
    print(f"\n--- a stale source (Slack text) ---\n{stale}")


def test_a_failed_run_alerts_once_and_the_next_completed_run_recovers(
    prefect_api, data_dir, no_alert_settings, webhook, monkeypatch
):
    monkeypatch.setenv("ELT_ALERT_WEBHOOK_URL", webhook.url)
    monkeypatch.setenv("ICEBERG_CATALOG_URI", f"sqlite:///{data_dir}/no-such-folder/catalog.db")
    for _ in range(2):
        with pytest.raises(Exception, match="unable to open database file"):
            maintenance()
    [failed] = webhook.bodies
    assert failed["event"] == "opened" and failed["key"] == "run:maintenance"
    assert failed["title"] == "[dev] ALERT: run of maintenance failed (OperationalError)"
    assert "unable to open database file" in failed["text"]
    monkeypatch.delenv("ICEBERG_CATALOG_URI")
    maintenance()
    assert [body["event"] for body in webhook.bodies] == ["opened", "resolved"]
    assert webhook.bodies[1]["title"] == "[dev] RESOLVED: run of maintenance failed (OperationalError)"


# --- the same announcements, without a flow run ------------------------------------------------

CONTEXT = alerts.RunContext("elt", "daily-summary", "brave-otter", "0000", "prod", "http://prefect.test/runs/x")
STALE = alerts.Observation((alerts.freshness_incident({"vehicles.vehicle_events": "error"}),), frozenset())
FRESH = alerts.Observation((), frozenset({alerts.FRESHNESS_KEY}))


@pytest.mark.parametrize("webhook_format", ["slack", "teams", "json"])
def test_each_webhook_format_has_its_receiver_s_shape(data_dir, no_alert_settings, webhook, webhook_format):
    to = alerts.Destinations(webhook.url, webhook_format)
    alerts.announce(STALE, CONTEXT, to)
    alerts.announce(FRESH, CONTEXT, to)
    opened, resolved = webhook.bodies
    title = "[prod] ALERT: 1 source stale (vehicles.vehicle_events)"
    if webhook_format == "slack":
        assert set(opened) == {"text"} and opened["text"].startswith(f"*{title}*\n")
        assert "vehicles.vehicle_events: error" in opened["text"]
    elif webhook_format == "teams":
        assert opened["type"] == "message"
        [attachment] = opened["attachments"]
        assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
        card = attachment["content"]
        assert card["type"] == "AdaptiveCard" and card["version"] == "1.4"
        assert card["body"][0] == {
            "type": "TextBlock",
            "text": title,
            "weight": "Bolder",
            "size": "Medium",
            "color": "Attention",
            "wrap": True,
        }
        assert {"type": "TextBlock", "text": "vehicles.vehicle_events: error", "wrap": True} in card["body"]
        assert resolved["attachments"][0]["content"]["body"][0]["color"] == "Good"
    else:
        assert opened["event"] == "opened" and opened["key"] == "freshness" and opened["title"] == title
        assert "flow run brave-otter of elt/daily-summary: http://prefect.test/runs/x" in opened["text"]
        assert resolved["event"] == "resolved"


def test_concurrent_runs_seeing_the_same_incident_alert_once(data_dir, no_alert_settings, webhook):
    to = alerts.Destinations(webhook.url, "json")
    start = threading.Barrier(6)

    def run() -> None:
        start.wait()
        alerts.announce(STALE, CONTEXT, to)

    threads = [threading.Thread(target=run) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(webhook.bodies) == 1
    state = json.loads((data_dir / "alerts" / "incidents.json").read_text())
    assert state["freshness"]["repeats"] == 5


def test_a_failing_destination_is_one_warning_never_the_url_and_is_tried_again(
    data_dir, no_alert_settings, webhook, caplog
):
    webhook.status = 500
    to = alerts.Destinations(webhook.url, "slack")
    with caplog.at_level(logging.WARNING, logger="orchestration.alerts"):
        assert alerts.announce(STALE, CONTEXT, to) == []
    [warning] = [record for record in caplog.records if record.name == "orchestration.alerts"]
    assert "not sent by webhook: HTTPError" in warning.getMessage()
    assert "secret-token" not in caplog.text
    webhook.status = 200
    [sent] = alerts.announce(STALE, CONTEXT, to)  # not recorded as announced: the next run sends it
    assert sent.event == "opened" and len(webhook.bodies) == 2


def test_an_unreachable_mail_server_does_not_stop_the_webhook(data_dir, no_alert_settings, webhook, caplog):
    smtp = alerts.Smtp("127.0.0.1", free_port(), "elt@example.test", ("oncall@example.test",), starttls=False)
    to = alerts.Destinations(webhook.url, "json", smtp)
    with caplog.at_level(logging.WARNING, logger="orchestration.alerts"):
        [sent] = alerts.announce(STALE, CONTEXT, to)
    assert sent.event == "opened" and len(webhook.bodies) == 1
    assert "not sent by email: ConnectionRefusedError" in caplog.text


def test_the_webhook_url_can_come_from_the_secret_manager(
    data_dir,
    no_alert_settings,
    webhook,
    manager,  # noqa: F811
    monkeypatch,
    caplog,
):
    manager.create_secret(Name="elt/dev/alerts", SecretString=json.dumps({"webhook_url": webhook.url}))
    monkeypatch.setenv("ELT_ALERT_WEBHOOK_FORMAT", "slack")
    with caplog.at_level(logging.DEBUG):
        [sent] = alerts.announce(STALE, CONTEXT)
    assert sent.event == "opened" and len(webhook.bodies) == 1
    assert "ELT_ALERT_WEBHOOK_URL" not in os.environ
    assert "secret-token" not in caplog.text
    assert not any("secret-token" in path.read_text() for path in Path(data_dir).rglob("*") if path.is_file())


def test_a_completed_run_s_outcome_survives_a_final_state_read_back_without_its_data(prefect_api):
    """Prefect hands back the API's copy of the final state, which holds no data, when the server
    rejects a repeated Completed proposal: the hook and the CLI read the outcome the run filled."""
    from prefect import flow, get_client
    from prefect.exceptions import MissingResult

    @flow
    def fills_its_outcome() -> dict:
        return alerts.outcome_so_far({"tables": [{"table": "marts.daily_summary", "rows": 3}]})

    state = fills_its_outcome(return_state=True)
    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        from_the_api = client.read_flow_run(flow_run_id).state
    with pytest.raises(MissingResult):
        from_the_api.result()
    assert alerts.run_outcome(flow_run_id, from_the_api) == {"tables": [{"table": "marts.daily_summary", "rows": 3}]}
