"""`make lint` in the suite, so CI (`make test`) fails on what it finds: ruff on the Python, and
sqlfluff with the dbt templater (.sqlfluff) on the dbt project's SQL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.settings import PROJECT_ROOT

pytestmark = pytest.mark.one_target  # the sources' style; the SQL is rendered for DuckDB (.sqlfluff)

BIN = Path(sys.executable).parent


def run(*command: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_python_passes_ruff():
    for command in (["check", "."], ["format", "--check", "."]):
        result = run(str(BIN / "ruff"), *command)
        assert result.returncode == 0, result.stdout + result.stderr


def test_sql_passes_sqlfluff(tmp_path):
    # The templater renders each model with dbt, which opens a warehouse: an empty one here.
    env = {**os.environ, "ELT_DATA_DIR": str(tmp_path), "DBT_LOG_PATH": str(tmp_path / "dbt_logs")}
    result = run(str(BIN / "sqlfluff"), "lint", "dbt_project", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
