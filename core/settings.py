"""One place for runtime configuration (DESIGN §8): data dir, warehouse target, connections."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import quote

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DBT_PROJECT_DIR = PROJECT_ROOT / "dbt_project"
DBT_PROFILES_DIR = PROJECT_ROOT / "profiles"
# Real source files shared beside the clone (tests and bench read them; a lone clone may lack them).
SHARED_REAL_DATA = PROJECT_ROOT.parent / "shared" / "data" / "real"
TARGETS = ("duckdb", "postgres")
ENVIRONMENTS = ("dev", "staging", "prod")
LAKE_ENGINES = ("auto", "spark", "duckdb")
# Below this many bytes of waiting JSON the lake job runs in-process on DuckDB (LAKE_ENGINE=auto).
# `python -m bench.run --crossover` (bench/crossover.json, README: Benchmark) found no crossover on
# 2 cores up to ×2 of the bench's batch (4M events, 1,066,391,438 bytes), where DuckDB was still 5×
# the faster: the default is that largest batch measured, in whole MiB, not an extrapolation.
DEFAULT_LAKE_SMALL_BATCH_BYTES = 1016 << 20
DEFAULT_ENVIRONMENT = "dev"
DEFAULT_PGDATABASE = "postgres"
# Variables this process (or its parent) took from the secret manager (core/secrets.py).
SECRETS_FILLED_MARKER = "ELT_SECRETS_FILLED"


def project_path(path: str | Path) -> Path:
    """Relative paths in the project's configuration are relative to the repository root."""
    path = Path(path)
    return path if path.is_absolute() else PROJECT_ROOT / path


class UnknownEnvironment(ValueError):
    """ELT_ENV names no environment (a one-line reason)."""


def environment(environ: Mapping[str, str] = os.environ) -> str:
    """ELT_ENV: dev (the default, today's layout), staging or prod. Every path and name that
    differs between environments is derived from this one answer."""
    name = environ.get("ELT_ENV") or DEFAULT_ENVIRONMENT
    if name not in ENVIRONMENTS:
        raise UnknownEnvironment(f"ELT_ENV={name!r} is not one of {', '.join(ENVIRONMENTS)}")
    return name


def data_root() -> Path:
    """ELT_DATA_DIR itself: dev's data dir, and the parent of every other environment's."""
    return Path(os.environ.get("ELT_DATA_DIR", PROJECT_ROOT / "data")).resolve()


def in_environment(location: str, env: str | None = None) -> str:
    """A shared location (folder, URI, name) made the environment's own: dev keeps it as it is,
    others get `/<env>` below it."""
    env = env or environment()
    return location if env == DEFAULT_ENVIRONMENT else f"{location.rstrip('/')}/{env}"


def data_dir(env: str | None = None) -> Path:
    """Root of everything an environment writes (landing/, lake/, the DuckDB warehouse, dbt_target/,
    ...): ELT_DATA_DIR for dev, ELT_DATA_DIR/<env> for staging and prod."""
    return Path(in_environment(str(data_root()), env))


class DataDirError(Exception):
    """The data dir cannot be created or written, or ELT_ENV is unknown (a one-line reason)."""


def ensure_data_dir() -> Path:
    """The data dir, created on first use; every entry point calls this before writing."""
    try:
        path = data_dir()
    except UnknownEnvironment as error:
        raise DataDirError(str(error)) from None
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
    except (DataDirError, SecretsError, UnknownEnvironment) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def landing_location() -> str:
    """ELT_LANDING_DIR: a local folder or an object-storage URI (s3://bucket/landing); default
    landing/ in the data dir. A given ELT_LANDING_DIR is shared by the environments: each but dev
    lands in its own folder below it."""
    if given := os.environ.get("ELT_LANDING_DIR"):
        return in_environment(given)
    return str(data_dir() / "landing")


def warehouse_path(env: str | None = None) -> Path:
    """The DuckDB warehouse: DuckDB names a database after its file stem, so each environment but
    dev has its own stem (warehouse_prod) and promotion can ATTACH staging beside prod."""
    env = env or environment()
    name = "warehouse.duckdb" if env == DEFAULT_ENVIRONMENT else f"warehouse_{env}.duckdb"
    return data_dir(env) / name


def target() -> str:
    name = os.environ.get("ELT_TARGET", "duckdb")
    if name not in TARGETS:
        raise ValueError(f"ELT_TARGET={name!r} is not one of {', '.join(TARGETS)}")
    return name


def lake_engine() -> str:
    """LAKE_ENGINE: auto (DuckDB below the small-batch threshold, else Spark; Spark on a cluster),
    spark or duckdb."""
    name = os.environ.get("LAKE_ENGINE") or "auto"
    if name not in LAKE_ENGINES:
        raise ValueError(f"LAKE_ENGINE={name!r} is not one of {', '.join(LAKE_ENGINES)}")
    return name


def lake_small_batch_bytes() -> int:
    """LAKE_SMALL_BATCH_BYTES: the waiting JSON below which LAKE_ENGINE=auto uses DuckDB."""
    given = os.environ.get("LAKE_SMALL_BATCH_BYTES")
    if not given:
        return DEFAULT_LAKE_SMALL_BATCH_BYTES
    if not given.isdigit():
        raise ValueError(f"LAKE_SMALL_BATCH_BYTES={given!r} is not a number of bytes")
    return int(given)


def seconds_setting(name: str, default: float, minimum: float = 0.0, maximum: float = math.inf) -> float:
    """The environment variable `name` as a number of seconds from `minimum` to `maximum` (default
    `default`); anything else (text, NaN, out of range) is refused naming the variable."""
    value = os.environ.get(name, str(default))
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not minimum <= seconds <= maximum:
        allowed = f" from {minimum:g} to {maximum:g}" if maximum < math.inf else ""
        raise ValueError(f"{name}={value!r} is not a number of seconds{allowed}")
    return seconds


def postgres_database(environ: Mapping[str, str] = os.environ) -> str:
    """The environment's Postgres database, like the DuckDB warehouse's stem: a name shared by the
    environments (PGDATABASE set locally, else libpq's default `postgres`) is dev's, and the others
    get `_<env>`; a name the environment's own secret gave (its prefix is per environment) is used
    as it is. profiles.yml repeats this rule in Jinja (tests/test_environments.py)."""
    env = environment(environ)
    given = environ.get("PGDATABASE") or DEFAULT_PGDATABASE
    from_own_secret = "PGDATABASE" in environ.get(SECRETS_FILLED_MARKER, "").split(",")
    return given if env == DEFAULT_ENVIRONMENT or from_own_secret else f"{given}_{env}"


def postgres_credentials(environ: Mapping[str, str] = os.environ) -> str:
    """A libpq-style URL built from the standard PG* variables; no default password."""
    user = environ.get("PGUSER", "postgres")
    password = environ.get("PGPASSWORD", "")
    host = environ.get("PGHOST", "127.0.0.1")
    port = environ.get("PGPORT", "5432")
    database = postgres_database(environ)
    auth = f"{quote(user, safe='')}:{quote(password, safe='')}" if password else quote(user, safe="")
    return f"postgresql://{auth}@{host}:{port}/{database}"


def as_list(value: str | Sequence[str]) -> list[str]:
    """A config list given either as a list or as comma-separated text (env vars, CLI)."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return [str(part).strip() for part in value]
