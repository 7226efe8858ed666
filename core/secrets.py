"""One chain of secrets (DESIGN §8): environment variables → local files (`.env` here,
`.dlt/secrets.toml` through dlt's own providers) → a secret manager, when one is configured.

`ELT_SECRETS=aws` turns on AWS Secrets Manager; its secrets are named `<prefix><name>` with the
prefix `elt/<ELT_ENV>/` unless `ELT_SECRETS_PREFIX` says otherwise:

- `football-api-token`: the football-data.org token (plain text);
- `postgres`: an RDS-style JSON secret {host, port, username, password, dbname} → PG*;
- `object-storage`: JSON {access_key_id, secret_access_key} → AWS_ACCESS_KEY_ID/SECRET;
- `alerts`: JSON {webhook_url, smtp_user, smtp_password} → ELT_ALERT_WEBHOOK_URL, ELT_ALERT_SMTP_USER,
  ELT_ALERT_SMTP_PASSWORD, read only when an alert is sent (alert_secrets), never into the environment.

An unreachable manager is one warning in dev (the local value is used) and an error naming the
secret when failing closed (`ELT_SECRETS_FAIL_CLOSED`, default true in prod). Values are never
logged: messages name secrets, never show them. This module must not import dlt (DESIGN §10);
loaders/secrets_provider.py adapts it to dlt.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from io import StringIO
from pathlib import Path

from core import settings
from core.settings import PROJECT_ROOT

log = logging.getLogger(__name__)

MANAGERS = ("aws",)
FOOTBALL_API_TOKEN = "football-api-token"
POSTGRES = "postgres"
OBJECT_STORAGE = "object-storage"
ALERTS = "alerts"
# Which variable each field of a JSON secret fills.
POSTGRES_VARIABLES = {
    "host": "PGHOST",
    "port": "PGPORT",
    "username": "PGUSER",
    "password": "PGPASSWORD",
    "dbname": "PGDATABASE",
}
OBJECT_STORAGE_VARIABLES = {"access_key_id": "AWS_ACCESS_KEY_ID", "secret_access_key": "AWS_SECRET_ACCESS_KEY"}
ALERT_VARIABLES = {
    "webhook_url": "ELT_ALERT_WEBHOOK_URL",
    "smtp_user": "ELT_ALERT_SMTP_USER",
    "smtp_password": "ELT_ALERT_SMTP_PASSWORD",
}
# Variables this process (or its parent) took from the manager: a later resolution asks again.
FILLED_MARKER = settings.SECRETS_FILLED_MARKER
DOTENV_FILE = PROJECT_ROOT / ".env"


class SecretsError(RuntimeError):
    """A secret could not be read where failing closed; the message names it, never its value."""


class ManagerUnreachable(Exception):
    """The manager did not answer (network, credentials, permissions)."""


@dataclass(frozen=True)
class SecretsConfig:
    manager: str | None
    environment: str
    prefix: str
    fail_closed: bool
    region: str | None
    endpoint: str | None


def is_true(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


def secrets_config(environ: Mapping[str, str] = os.environ) -> SecretsConfig:
    manager = environ.get("ELT_SECRETS") or None
    if manager is not None and manager not in MANAGERS:
        raise SecretsError(f"ELT_SECRETS={manager!r} is not one of {', '.join(MANAGERS)} (or unset)")
    environment = settings.environment(environ)
    fail_closed = environ.get("ELT_SECRETS_FAIL_CLOSED")
    return SecretsConfig(
        manager=manager,
        environment=environment,
        prefix=environ.get("ELT_SECRETS_PREFIX") or f"elt/{environment}/",
        fail_closed=is_true(fail_closed) if fail_closed else environment == "prod",
        region=environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION"),
        endpoint=environ.get("AWS_ENDPOINT_URL_SECRETSMANAGER") or environ.get("AWS_ENDPOINT_URL"),
    )


def parse_dotenv(text: str) -> dict[str, str]:
    """KEY=VALUE lines (optional `export`, quotes, comments), as python-dotenv reads them."""
    import dotenv

    return {key: value for key, value in dotenv.dotenv_values(stream=StringIO(text)).items() if value is not None}


def dotenv_values(path: Path = DOTENV_FILE) -> dict[str, str]:
    return parse_dotenv(path.read_text()) if path.is_file() else {}


def filled_by_manager(environ: Mapping[str, str] = os.environ) -> set[str]:
    return {name for name in environ.get(FILLED_MARKER, "").split(",") if name}


def local_value(variable: str, environ: Mapping[str, str] = os.environ, dotenv: Mapping[str, str] = {}) -> str | None:
    """The variable from the environment, else from .env; a value the manager filled earlier does
    not count as local (so the next resolution sees a rotated secret)."""
    if variable in environ and variable not in filled_by_manager(environ):
        return environ[variable]
    return dotenv.get(variable)


# Managers found unreachable in this process: in dev they are not asked again (one warning, one
# timeout at most per process); failing closed asks each time.
_unreachable: set[tuple[str | None, str | None]] = set()


class AwsSecretsManager:
    """boto3's Secrets Manager client with a short timeout and no retries: a manager that is not
    there costs one quick failure, not a storm."""

    def __init__(self, config: SecretsConfig) -> None:
        self.config = config
        self._client = None

    def client(self):
        if self._client is None:
            import boto3
            import botocore.session
            from botocore.config import Config

            # botocore logs response bodies (the secret values) at DEBUG and where it found
            # credentials at INFO: neither belongs in a run's output, whatever the level.
            logging.getLogger("botocore").setLevel(logging.WARNING)
            core_session = botocore.session.Session()
            if {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & filled_by_manager():
                # Those keys are the lake's, taken from the manager; the manager is reached as before.
                core_session.get_component("credential_provider").remove("env")
            self._client = boto3.Session(botocore_session=core_session).client(
                "secretsmanager",
                region_name=self.config.region,
                endpoint_url=self.config.endpoint,
                config=Config(connect_timeout=2, read_timeout=5, retries={"total_max_attempts": 1}),
            )
        return self._client

    def read(self, name: str) -> str | None:
        """The secret's current string value; None when it does not exist."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self.client().get_secret_value(SecretId=name)["SecretString"]
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
                return None
            raise ManagerUnreachable(error.response.get("Error", {}).get("Code", "error")) from None
        except BotoCoreError as error:
            raise ManagerUnreachable(type(error).__name__) from None


def manager_for(config: SecretsConfig) -> AwsSecretsManager | None:
    return AwsSecretsManager(config) if config.manager == "aws" else None


def read_from_manager(name: str, config: SecretsConfig, manager: AwsSecretsManager | None = None) -> str | None:
    """`<prefix><name>` from the manager; None when there is no manager or no such secret. An
    unreachable manager: one warning per process and None, or SecretsError when failing closed."""
    manager = manager or manager_for(config)
    if manager is None:
        return None
    full_name = f"{config.prefix}{name}"
    where = (config.endpoint, config.region)
    if where in _unreachable and not config.fail_closed:
        return None
    try:
        return manager.read(full_name)
    except ManagerUnreachable as reason:
        if config.fail_closed:
            raise SecretsError(
                f"secret {full_name!r} could not be read from the secret manager ({reason}) "
                f"and ELT_ENV={config.environment} fails closed (ELT_SECRETS_FAIL_CLOSED)"
            ) from None
        _unreachable.add(where)
        log.warning(
            "secret manager unreachable (%s) reading %r: using local values only in %s",
            reason,
            full_name,
            config.environment,
        )
        return None


def json_fields(name: str, text: str, fields: Mapping[str, str]) -> dict[str, str]:
    """The fields of a JSON secret that map to variables; a malformed secret is named, not shown."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        raise SecretsError(f"secret {name!r} is not JSON") from None
    if not isinstance(document, dict):
        raise SecretsError(f"secret {name!r} is not a JSON object")
    return {fields[key]: str(value) for key, value in document.items() if key in fields and value is not None}


def variables_to_fill(
    name: str, fields: Mapping[str, str], credentials: tuple[str, ...], config: SecretsConfig, local: Mapping
) -> dict[str, str]:
    """Variables a JSON secret supplies. Credentials set locally mean the whole connection is local
    (a local user with the manager's password would be neither, and the manager is not asked);
    otherwise the secret fills every variable still unset."""
    if any(local.get(variable) is not None for variable in credentials):
        return {}
    wanted = [variable for variable in fields.values() if local.get(variable) is None]
    if not wanted:
        return {}
    text = read_from_manager(name, config)
    if text is None:
        return {}
    values = json_fields(f"{config.prefix}{name}", text, fields)
    return {variable: values[variable] for variable in wanted if variable in values}


def resolve_into_environment(environ: dict[str, str] | None = None, dotenv_file: Path = DOTENV_FILE) -> dict[str, str]:
    """Once per process, before anything reads them: the PG* and object-storage variables still
    unset, from .env, then from the manager, into the environment (so child processes such as
    dbt and the Spark job see them too). Returns the names and sources, never values."""
    environ = os.environ if environ is None else environ
    config = secrets_config(environ)
    dotenv = dotenv_values(dotenv_file)
    sources: dict[str, str] = {}
    for variable, value in dotenv.items():
        if variable not in environ or variable in filled_by_manager(environ):
            environ[variable] = value
            sources[variable] = ".env"
    local = {
        v: local_value(v, environ, dotenv) for v in (*POSTGRES_VARIABLES.values(), *OBJECT_STORAGE_VARIABLES.values())
    }
    from_manager = {
        **variables_to_fill(POSTGRES, POSTGRES_VARIABLES, ("PGUSER", "PGPASSWORD"), config, local),
        **variables_to_fill(
            OBJECT_STORAGE, OBJECT_STORAGE_VARIABLES, tuple(OBJECT_STORAGE_VARIABLES.values()), config, local
        ),
    }
    environ.update(from_manager)
    filled = (filled_by_manager(environ) - sources.keys()) | from_manager.keys()
    if filled:
        environ[FILLED_MARKER] = ",".join(sorted(filled))
    else:
        environ.pop(FILLED_MARKER, None)
    sources.update(dict.fromkeys(from_manager, "secret manager"))
    return sources


def alert_secrets(environ: Mapping[str, str] = os.environ, dotenv_file: Path = DOTENV_FILE) -> dict[str, str]:
    """The alert destinations' secrets: each from the environment or .env, else from the manager's
    `alerts` secret. Asked when an alert is about to be sent, not when a run starts: an optional
    destination must not make a run depend on the manager (a failing-closed read raises
    SecretsError, which the caller reports instead of sending)."""
    dotenv = dotenv_values(dotenv_file)
    local = {variable: local_value(variable, environ, dotenv) for variable in ALERT_VARIABLES.values()}
    found = {variable: value for variable, value in local.items() if value}
    return {**found, **variables_to_fill(ALERTS, ALERT_VARIABLES, (), secrets_config(environ), local)}


def football_api_token(config: SecretsConfig | None = None) -> str | None:
    """The token from the manager (the env and .dlt/secrets.toml are dlt's to read, before this)."""
    return read_from_manager(FOOTBALL_API_TOKEN, config or secrets_config())
