"""The packages import one way (DESIGN §10): core ← lake ← loaders, spark_jobs ← orchestration."""

from __future__ import annotations

import ast
import subprocess
import sys

from core.settings import PROJECT_ROOT

LAYERS = {"core": 0, "lake": 1, "loaders": 2, "spark_jobs": 2, "orchestration": 3}


def imported_packages(path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names & LAYERS.keys()


def test_every_import_points_to_a_lower_layer_or_its_own_package():
    upward = []
    for package, layer in LAYERS.items():
        for path in sorted((PROJECT_ROOT / package).rglob("*.py")):
            for imported in imported_packages(path) - {package}:
                if LAYERS[imported] >= layer:
                    upward.append(f"{path.relative_to(PROJECT_ROOT)} imports {imported}")
    assert not upward, upward


def test_the_lake_job_imports_neither_dlt_nor_the_warehouse():
    probe = "import sys, spark_jobs.vehicle_lake; print(sorted({'dlt', 'core.warehouse'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
