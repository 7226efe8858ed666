"""The deployments are defined once (prefect.yaml): `make deploy` creates them in a work pool of a
real local Prefect server exactly as `make serve` serves them."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL

from core.settings import PROJECT_ROOT
from orchestration.serve import deployments

pytestmark = pytest.mark.integration

IMAGE = "registry.example:5000/elt-thin-loaders:0123abc"


def make(target: str, tmp_path, **env: str) -> subprocess.CompletedProcess:
    """A make target as CI's deploy job calls it, against the test's Prefect server."""
    environment = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_HOME": str(tmp_path), **env}
    done = subprocess.run(
        ["make", "--no-print-directory", target], cwd=PROJECT_ROOT, env=environment, capture_output=True, text=True
    )
    assert done.returncode == 0, f"make {target} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def schedule_fields(schedule) -> dict:
    return {**schedule.schedule.model_dump(), "active": schedule.active}


def as_served(deployment) -> dict:
    """What serve registers for a deployment, in the fields a work-pool deployment also has."""
    return {
        "entrypoint": deployment.entrypoint,
        "parameters": deployment.parameters,
        "description": deployment.description,
        "schedules": [schedule_fields(schedule) for schedule in deployment.schedules],
    }


def deployed(pool: str) -> dict[str, tuple[dict, dict]]:
    """The server's deployments in a pool: name → (the served fields, where and how it runs)."""
    with get_client(sync_client=True) as client:
        return {
            deployment.name: (
                as_served(deployment),
                {
                    "work_pool_name": deployment.work_pool_name,
                    "job_variables": deployment.job_variables,
                    "pull_steps": deployment.pull_steps,
                },
            )
            for deployment in client.read_deployments()
            if deployment.work_pool_name == pool
        }


@pytest.mark.parametrize(
    ("pool", "pool_target", "pool_type"),
    [("elt", None, "process"), ("elt-k8s", "work-pool", "kubernetes")],
)
def test_make_deploy_puts_the_served_deployments_in_the_pool(prefect_api, tmp_path, pool, pool_target, pool_type):
    if pool_target:
        make(pool_target, tmp_path)
    else:
        subprocess.run(
            [sys.executable, "-m", "prefect", "work-pool", "create", pool, "--type", "process"],
            env={**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()},
            check=True,
            capture_output=True,
        )
    with get_client(sync_client=True) as client:
        assert client.read_work_pool(pool).type == pool_type

    make("deploy", tmp_path, ELT_WORK_POOL=pool, ELT_IMAGE=IMAGE)

    served = {deployment.name: as_served(deployment) for deployment in deployments()}
    in_pool = deployed(pool)
    assert set(in_pool) == {"vehicles-hourly", "daily-summary", "football-weekly", "maintenance-daily"}
    assert {name: fields for name, (fields, _) in in_pool.items()} == served
    run_time_directory = [{"prefect.deployments.steps.set_working_directory": {"directory": "{{ $ELT_PROJECT_DIR }}"}}]
    assert {name: where for name, (_, where) in in_pool.items()} == {
        name: {"work_pool_name": pool, "job_variables": {"image": IMAGE}, "pull_steps": run_time_directory}
        for name in served
    }


WORKFLOWS = PROJECT_ROOT / ".github" / "workflows"


def make_targets_run_by(workflow: dict) -> set[str]:
    """The make targets a GitHub workflow's steps run (`.ci/run` is `make test`)."""
    commands = [step["run"] for job in workflow["jobs"].values() for step in job["steps"] if "run" in step]
    targets = {target for command in commands for target in re.findall(r"\bmake ([a-z][\w-]*)", command)}
    return targets | ({"test"} if any(".ci/run" in command for command in commands) else set())


def test_the_workflows_run_only_make_targets_tested_here():
    """The workflows cannot run here: every step they run is a make target this repository defines
    and tests (test: .ci/run; image, push: test_image.py; work-pool, deploy: above)."""
    defined = set(re.findall(r"^([a-z][\w-]*):", (PROJECT_ROOT / "Makefile").read_text(), re.MULTILINE))
    run = set().union(*(make_targets_run_by(yaml.safe_load(path.read_text())) for path in WORKFLOWS.glob("*.yml")))
    assert run == {"test", "image", "push", "work-pool", "deploy"}
    assert run <= defined
    assert "make test" in (PROJECT_ROOT / ".ci" / "run").read_text()
