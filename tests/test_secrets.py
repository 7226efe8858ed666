"""Secrets (core/secrets.py, loaders/secrets_provider.py): environment → local files → AWS
Secrets Manager, against moto's Secrets Manager server on 127.0.0.1 with a real boto3 client,
real Postgres and real dbt."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from core.secrets import SecretsError, football_api_token, resolve_into_environment
from core.settings import PROJECT_ROOT, postgres_credentials
from loaders.football_api import FootballApiError, football_api
from loaders.pipelines import pipeline

from .api_replay import TOKEN
from .conftest import QUIET_TOOLS, require_postgres, run_dbt
from .processes import moto_server
from .test_football_api import FAST, columns_containing

pytestmark = pytest.mark.integration
SECRET_VARIABLES = (
    "ELT_ENV",
    "ELT_SECRETS_PREFIX",
    "ELT_SECRETS_FAIL_CLOSED",
    "ELT_SECRETS_FILLED",
    "SOURCES__FOOTBALL_API__API_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_PROFILE",
)


def isolate(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    """The manager at `endpoint`; nothing from the caller's environment picks secrets for us."""
    for name in SECRET_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in {
        "ELT_SECRETS": "aws",
        "AWS_ENDPOINT_URL_SECRETSMANAGER": endpoint,
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def manager(monkeypatch: pytest.MonkeyPatch) -> Iterator:
    """moto's Secrets Manager on loopback; the boto3 client the test writes secrets with."""
    import boto3

    with moto_server() as endpoint:
        isolate(monkeypatch, endpoint)
        yield boto3.client("secretsmanager", endpoint_url=endpoint, region_name="us-east-1")


@pytest.fixture
def manager_down(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """ELT_SECRETS=aws pointing at a server that hangs up on every connection; yields the count
    of connections it saw (one element), so a test can tell how often it was asked."""
    listener = socket.create_server(("127.0.0.1", 0))
    connections = [0]

    def hang_up() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            connections[0] += 1
            connection.close()

    thread = threading.Thread(target=hang_up, daemon=True)
    thread.start()
    isolate(monkeypatch, f"http://127.0.0.1:{listener.getsockname()[1]}")
    yield connections
    listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close() alone does not
    listener.close()
    thread.join(timeout=5)


def api_source(api, **options):
    """The football_api source without an api_token argument: dlt resolves it through the chain."""
    return football_api(
        competitions=["BL1"], season=2022, base_url=api.base_url, calls_per_minute=0, policy=FAST, **options
    )


def tokens_sent(api) -> set[str | None]:
    return {token for _, _, token in api.log}


@pytest.mark.one_target
def test_the_token_from_the_manager_is_sent_and_written_nowhere(data_dir, replay_api, manager, caplog, capfd):
    manager.create_secret(Name="elt/dev/football-api-token", SecretString=TOKEN)
    with caplog.at_level(logging.DEBUG):
        pipeline("football_api", "raw_football_api").run(api_source(replay_api))
    assert tokens_sent(replay_api) == {TOKEN}
    assert TOKEN not in caplog.text
    captured = capfd.readouterr()
    assert TOKEN not in captured.out + captured.err
    written = [path for path in data_dir.rglob("*") if path.is_file()]
    assert any("landing" in str(path) for path in written)
    assert any(".dlt_pipelines" in str(path) for path in written)  # dlt's state is scanned too
    for path in written:
        assert TOKEN.encode() not in path.read_bytes(), path
    assert columns_containing(TOKEN) == []


@pytest.mark.one_target
def test_an_environment_variable_beats_the_manager(data_dir, replay_api, manager, monkeypatch):
    manager.create_secret(Name="elt/dev/football-api-token", SecretString="the-managers-token")
    monkeypatch.setenv("SOURCES__FOOTBALL_API__API_TOKEN", TOKEN)
    api_source(replay_api)
    assert tokens_sent(replay_api) == {TOKEN}


@pytest.mark.one_target
def test_a_rotated_token_is_seen_by_the_next_run(data_dir, replay_api, manager):
    manager.create_secret(Name="elt/dev/football-api-token", SecretString=TOKEN)
    api_source(replay_api)
    manager.put_secret_value(SecretId="elt/dev/football-api-token", SecretString="rotated-token-7c2e")
    with pytest.raises(FootballApiError):  # the replay API knows only TOKEN
        api_source(replay_api)
    assert [token for _, _, token in replay_api.log] == [TOKEN, "rotated-token-7c2e"]


def test_staging_and_prod_prefixes_are_kept_apart(manager, monkeypatch):
    manager.create_secret(Name="elt/staging/football-api-token", SecretString="staging-token")
    manager.create_secret(Name="elt/prod/football-api-token", SecretString="prod-token")
    manager.create_secret(Name="elt/prod/postgres", SecretString=json.dumps({"username": "prod_user", "password": "p"}))
    monkeypatch.setenv("ELT_ENV", "staging")
    environ = {"ELT_ENV": "staging", **{k: v for k, v in os.environ.items() if not k.startswith("PG")}}
    assert football_api_token() == "staging-token"
    assert resolve_into_environment(environ) == {}
    assert "PGUSER" not in environ
    monkeypatch.setenv("ELT_ENV", "prod")
    assert football_api_token() == "prod-token"
    monkeypatch.delenv("ELT_ENV")
    assert football_api_token() is None  # dev has none
    monkeypatch.setenv("ELT_SECRETS_PREFIX", "elt/staging/")
    assert football_api_token() == "staging-token"


def test_a_local_postgres_user_beats_the_secret_which_is_never_half_used(manager, tmp_path):
    secret = {"host": "db.example", "username": "secret_user", "password": "secret-pass-9d1", "dbname": "secret_db"}
    manager.create_secret(Name="elt/dev/postgres", SecretString=json.dumps(secret))
    local = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    environ = {**local, "PGUSER": "postgres"}
    assert resolve_into_environment(environ, tmp_path / "no.env") == {}
    assert "PGPASSWORD" not in environ  # not the secret's password with a local user
    assert "PGHOST" not in environ  # nor its host: the connection is the local one

    environ = {**local, "PGHOST": "127.0.0.1"}
    (tmp_path / ".env").write_text("PGDATABASE=from_dotenv\n")
    sources = resolve_into_environment(environ, tmp_path / ".env")
    assert (environ["PGHOST"], environ["PGDATABASE"]) == ("127.0.0.1", "from_dotenv")  # env, .env first
    assert (environ["PGUSER"], environ["PGPASSWORD"]) == ("secret_user", "secret-pass-9d1")
    assert sources == {"PGDATABASE": ".env", "PGUSER": "secret manager", "PGPASSWORD": "secret manager"}


def test_manager_down_in_dev_is_one_warning_and_local_values(manager_down, replay_api, monkeypatch, caplog, tmp_path):
    for name in ("PGUSER", "PGPASSWORD"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / ".env").write_text(f"SOURCES__FOOTBALL_API__API_TOKEN={TOKEN}\n")
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        resolve_into_environment(dotenv_file=tmp_path / ".env")
        resolve_into_environment(dotenv_file=tmp_path / ".env")  # a second entry point in the same process
        api_source(replay_api)
        monkeypatch.delenv("SOURCES__FOOTBALL_API__API_TOKEN")
        assert football_api_token() is None  # asked of the manager: no second warning
    assert time.monotonic() - started < 10
    warnings = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert len(warnings) == 1, [record.getMessage() for record in warnings]
    assert "elt/dev/postgres" in warnings[0].getMessage()
    assert manager_down == [1]  # asked once: no retries, and not again once found down
    assert tokens_sent(replay_api) == {TOKEN}  # the .env value was used


def test_secrets_all_set_locally_never_ask_a_down_manager(manager_down, monkeypatch, caplog):
    monkeypatch.setenv("PGUSER", "postgres")
    monkeypatch.setenv("PGPASSWORD", "local")
    with caplog.at_level(logging.WARNING):
        assert resolve_into_environment(dotenv_file=PROJECT_ROOT / "no-such.env") == {}
    assert caplog.records == []
    assert manager_down == [0]


def test_manager_down_in_prod_fails_closed_naming_the_secret(manager_down, monkeypatch):
    monkeypatch.setenv("ELT_ENV", "prod")
    monkeypatch.setenv("SOURCES__FOOTBALL_API__API_TOKEN", "local-token-5e8a")
    for name in ("PGUSER", "PGPASSWORD"):
        monkeypatch.delenv(name, raising=False)
    env = {**os.environ, **QUIET_TOOLS}
    result = subprocess.run(
        [sys.executable, "-m", "loaders", "status"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "secret 'elt/prod/postgres' could not be read" in result.stderr
    assert "Traceback" not in result.stderr
    assert "local-token-5e8a" not in result.stdout + result.stderr
    monkeypatch.setenv("ELT_SECRETS_FAIL_CLOSED", "false")  # prod may choose dev's fallback
    assert resolve_into_environment(dotenv_file=PROJECT_ROOT / "no-such.env") == {}


def test_the_token_fails_closed_in_prod_through_dlt(manager_down, replay_api, monkeypatch, tmp_path):
    monkeypatch.setenv("ELT_ENV", "prod")
    with pytest.raises(SecretsError, match="'elt/prod/football-api-token' could not be read"):
        api_source(replay_api)
    assert replay_api.log == []

    env = {**os.environ, **QUIET_TOOLS, "PGUSER": "postgres", "ELT_DATA_DIR": str(tmp_path / "data")}
    command = ["-m", "loaders", "football-api", "--base-url", replay_api.base_url, "--competitions", "BL1"]
    result = subprocess.run(
        [sys.executable, *command, "--season", "2022"], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        "error: secret 'elt/prod/football-api-token' could not be read from the secret manager "
        "(ConnectionClosedError) and ELT_ENV=prod fails closed (ELT_SECRETS_FAIL_CLOSED)"
    ]
    assert replay_api.log == []


@pytest.fixture
def postgres_role() -> Iterator[tuple[str, str, str]]:
    """A login role of the test's own and a database it owns: (role, password, database)."""
    import psycopg2

    require_postgres()
    suffix = uuid.uuid4().hex[:10]
    role, password, database = f"elt_secret_{suffix}", f"pw-{suffix}", f"elt_test_secret_{suffix}"
    admin = psycopg2.connect(postgres_credentials())
    admin.autocommit = True
    try:
        admin.cursor().execute(f"create role {role} login password %s", [password])
        admin.cursor().execute(f'create database "{database}" owner {role}')
        yield role, password, database
    finally:
        admin.cursor().execute(f'drop database if exists "{database}" with (force)')
        admin.cursor().execute(f"drop role if exists {role}")
        admin.close()


def test_postgres_credentials_from_the_secret_are_used_by_dlt_dbt_and_the_catalog(
    manager, postgres_role, monkeypatch, tmp_path
):
    from lake.catalog import catalog

    role, password, database = postgres_role
    secret = {"host": "127.0.0.1", "port": 5432, "username": role, "password": password, "dbname": database}
    manager.create_secret(Name="elt/dev/postgres", SecretString=json.dumps(secret))
    for name in ("PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ELT_TARGET", "postgres")
    monkeypatch.setenv("ELT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("ICEBERG_CATALOG_URI", "postgresql+psycopg2://")  # libpq takes the rest from PG*
    # The command line gets the test's database locally (so a broken chain cannot write to the
    # server's default one), and its credentials only from the secret.
    unresolved = {**os.environ, **QUIET_TOOLS, "ELT_DATA_DIR": str(tmp_path / "cli-data"), "PGDATABASE": database}
    resolve_into_environment(dotenv_file=tmp_path / "no.env")
    assert os.environ["PGUSER"] == role

    pipeline("secrets_probe", "secrets_probe").run([{"id": 1}], table_name="probe")
    lake = catalog()
    with lake.engine.connect() as connection:
        catalog_user = connection.exec_driver_sql("select current_user").scalar()
    dbt = run_dbt("show", "--inline", "select current_user as dbt_user", "--output", "json", data_dir=tmp_path / "data")

    import psycopg2

    admin = psycopg2.connect(host="127.0.0.1", user="postgres", dbname=database)
    try:
        cursor = admin.cursor()
        cursor.execute("select tableowner from pg_tables where schemaname = 'secrets_probe' and tablename = 'probe'")
        assert cursor.fetchall() == [(role,)]  # dlt's load connected as the secret's user
        # A command line resolves the chain itself, at its start.
        command = [sys.executable, "-m", "loaders", "football-csv", "--divisions", "E0"]
        result = subprocess.run(command, cwd=PROJECT_ROOT, env=unresolved, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        cursor.execute("select distinct tableowner from pg_tables where schemaname = 'raw_football'")
        assert cursor.fetchall() == [(role,)]
    finally:
        admin.close()
    assert catalog_user == role
    assert f'"dbt_user": "{role}"' in dbt.stdout


def test_object_storage_keys_come_from_the_secret_and_the_manager_keeps_its_own(manager, monkeypatch, tmp_path):
    from core.secrets import AwsSecretsManager, secrets_config

    credentials = tmp_path / "aws-credentials"
    credentials.write_text("[manager]\naws_access_key_id = manager-key\naws_secret_access_key = manager-secret\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_PROFILE", "manager")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("PGUSER", "postgres")  # the Postgres connection is local here
    name = "elt/dev/object-storage"
    manager.create_secret(Name=name, SecretString=json.dumps({"access_key_id": "lake-1", "secret_access_key": "s-1"}))
    resolve_into_environment(dotenv_file=tmp_path / "no.env")
    assert (os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]) == ("lake-1", "s-1")

    # A later resolution (a child process, a served run) reaches the manager with its own
    # credentials, not the lake's now in the environment, and sees the rotated keys.
    manager.put_secret_value(
        SecretId=name, SecretString=json.dumps({"access_key_id": "lake-2", "secret_access_key": "s-2"})
    )
    client = AwsSecretsManager(secrets_config()).client()
    assert client._request_signer._credentials.access_key == "manager-key"  # boto3 has no public getter
    resolve_into_environment(dotenv_file=tmp_path / "no.env")
    assert os.environ["AWS_ACCESS_KEY_ID"] == "lake-2"


@pytest.mark.parametrize("flow_name", ["elt", "maintenance"])
def test_a_flow_run_outside_a_command_line_resolves_the_chain_itself(
    manager, monkeypatch, tmp_path, flow_name, prefect_api
):
    """Served deployments and worker Jobs run the flow itself (a flow run on their Prefect API), not main()."""
    from orchestration import flows

    secret = {"username": "flow_user", "password": "flow-pass-1b7"}
    manager.create_secret(Name="elt/dev/postgres", SecretString=json.dumps(secret))
    for name in ("PGUSER", "PGPASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ELT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("ICEBERG_CATALOG_URI", raising=False)
    if flow_name == "elt":
        flows.elt(sources=[], build=False)
    else:
        flows.maintenance()
    assert os.environ["PGUSER"] == "flow_user"
