"""One place for runtime configuration (DESIGN §8): data dir, warehouse target, connections."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DBT_PROJECT_DIR = PROJECT_ROOT / "dbt_project"
DBT_PROFILES_DIR = PROJECT_ROOT / "profiles"
# Real source files shared beside the clone (tests and bench read them; a lone clone may lack them).
SHARED_REAL_DATA = PROJECT_ROOT.parent / "shared" / "data" / "real"
TARGETS = ("duckdb", "postgres")


def project_path(path: str | Path) -> Path:
    """Relative paths in the project's configuration are relative to the repository root."""
    path = Path(path)
    return path if path.is_absolute() else PROJECT_ROOT / path


def data_dir() -> Path:
    """Root of everything the pipeline writes (landing/, lake/, warehouse.duckdb, ...)."""
    return Path(os.environ.get("ELT_DATA_DIR", PROJECT_ROOT / "data")).resolve()


class DataDirError(Exception):
    """The data dir cannot be created or written (a one-line reason)."""


def ensure_data_dir() -> Path:
    """The data dir, created on first use; every entry point calls this before writing."""
    path = data_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataDirError(f"cannot create the data dir {path} (ELT_DATA_DIR): {error.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise DataDirError(f"the data dir {path} (ELT_DATA_DIR) is not writable")
    return path


def data_dir_or_exit() -> Path:
    """Every command line starts here: secrets resolved into the environment (core/secrets.py),
    then ensure_data_dir; a failure is one line and exit status 2, no traceback."""
    from core.secrets import SecretsError, resolve_into_environment

    try:
        resolve_into_environment()
        return ensure_data_dir()
    except (DataDirError, SecretsError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def landing_location() -> str:
    """ELT_LANDING_DIR: a local folder or an object-storage URI (s3://bucket/landing); default
    landing/ in the data dir."""
    return os.environ.get("ELT_LANDING_DIR") or str(data_dir() / "landing")


def warehouse_path() -> Path:
    return data_dir() / "warehouse.duckdb"


def target() -> str:
    name = os.environ.get("ELT_TARGET", "duckdb")
    if name not in TARGETS:
        raise ValueError(f"ELT_TARGET={name!r} is not one of {', '.join(TARGETS)}")
    return name


def postgres_credentials() -> str:
    """A libpq-style URL built from the standard PG* variables; no default password."""
    user = os.environ.get("PGUSER", "postgres")
    password = os.environ.get("PGPASSWORD", "")
    host = os.environ.get("PGHOST", "127.0.0.1")
    port = os.environ.get("PGPORT", "5432")
    database = os.environ.get("PGDATABASE", "postgres")
    auth = f"{quote(user, safe='')}:{quote(password, safe='')}" if password else quote(user, safe="")
    return f"postgresql://{auth}@{host}:{port}/{database}"


def as_list(value: str | Sequence[str]) -> list[str]:
    """A config list given either as a list or as comma-separated text (env vars, CLI)."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return [str(part).strip() for part in value]
