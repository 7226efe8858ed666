"""The deployments are defined once (prefect.yaml): `make deploy` creates them in a work pool of a
real local Prefect server exactly as `make serve` serves them."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL

from core.settings import PROJECT_ROOT
from orchestration import serve
from orchestration.serve import deployments

pytestmark = pytest.mark.integration

IMAGE = "registry.example:5000/elt-thin-loaders:0123abc"


def run_make(target: str, **env: str) -> subprocess.CompletedProcess:
    """A make target as CI's deploy job calls it; the Prefect settings come from `env` only."""
    environment = {name: value for name, value in os.environ.items() if not name.startswith(("PREFECT_", "ELT_IMAGE"))}
    return subprocess.run(
        ["make", "--no-print-directory", target],
        cwd=PROJECT_ROOT,
        env={**environment, **env},
        capture_output=True,
        text=True,
    )


def make(target: str, tmp_path, **env: str) -> subprocess.CompletedProcess:
    """A make target against the test's Prefect server; it must succeed."""
    done = run_make(target, PREFECT_API_URL=PREFECT_API_URL.value(), PREFECT_HOME=str(tmp_path), **env)
    assert done.returncode == 0, f"make {target} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def prefect_cli(*args: str) -> None:
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    subprocess.run([sys.executable, "-m", "prefect", *args], env=env, check=True, capture_output=True)


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


K8S_JOB_TEMPLATE = PROJECT_ROOT / "deploy" / "k8s" / "base-job-template.json"


def test_make_work_pool_replaces_a_pools_template_with_the_committed_one(prefect_api, tmp_path):
    prefect_cli("work-pool", "create", "elt-k8s", "--type", "kubernetes")  # Prefect's default template
    with get_client(sync_client=True) as client:
        assert client.read_work_pool("elt-k8s").base_job_template != json.loads(K8S_JOB_TEMPLATE.read_text())
    make("work-pool", tmp_path)
    with get_client(sync_client=True) as client:
        pool = client.read_work_pool("elt-k8s")
    assert pool.type == "kubernetes"
    assert pool.base_job_template == json.loads(K8S_JOB_TEMPLATE.read_text())


@pytest.mark.parametrize(
    ("elt_env", "pool", "pool_type"), [(None, "elt-k8s", "kubernetes"), ("prod", "elt-prod", "process")]
)
def test_make_deploy_puts_the_served_deployments_in_the_pool(prefect_api, tmp_path, elt_env, pool, pool_type):
    env = {"ELT_ENV": elt_env} if elt_env else {}
    if pool_type == "kubernetes":
        make("work-pool", tmp_path)
    else:
        prefect_cli("work-pool", "create", pool, "--type", "process", "--overwrite")
    with get_client(sync_client=True) as client:
        assert client.read_work_pool(pool).type == pool_type

    # The process pool is not named: make derives elt-<env> from ELT_ENV.
    make("deploy", tmp_path, ELT_IMAGE=IMAGE, **env, **({"ELT_WORK_POOL": pool} if pool_type == "kubernetes" else {}))

    served = {deployment.name: as_served(deployment) for deployment in deployments()}
    in_pool = deployed(pool)
    assert set(in_pool) == {"vehicles-hourly", "daily-summary", "football-weekly", "maintenance-daily"}
    assert {name: fields for name, (fields, _) in in_pool.items()} == served
    run_time_directory = [{"prefect.deployments.steps.set_working_directory": {"directory": "{{ $ELT_PROJECT_DIR }}"}}]
    job_variables = {"image": IMAGE, "env": {"ELT_ENV": elt_env or "dev"}}
    assert {name: where for name, (_, where) in in_pool.items()} == {
        name: {"work_pool_name": pool, "job_variables": job_variables, "pull_steps": run_time_directory}
        for name in served
    }


def test_a_process_worker_runs_a_deployment_in_the_deployment_s_environment(prefect_api, tmp_path, monkeypatch):
    """A worker started with another ELT_ENV (or none) still runs prod's deployments in prod:
    the process worker's own configuration code, given the pool's template and the deployment's
    job variables as the server holds them, puts the deployment's ELT_ENV over the worker's."""
    from prefect.workers.process import ProcessJobConfiguration

    prefect_cli("work-pool", "create", "elt-prod", "--type", "process", "--overwrite")
    make("deploy", tmp_path, ELT_ENV="prod")
    monkeypatch.setenv("ELT_ENV", "staging")  # the worker's own
    with get_client(sync_client=True) as client:
        template = client.read_work_pool("elt-prod").base_job_template
        deployment = client.read_deployment_by_name("elt/daily-summary")
        flow = client.read_flow(deployment.flow_id)
        flow_run = client.create_flow_run_from_deployment(deployment.id)
    configuration = asyncio.run(ProcessJobConfiguration.from_template_and_values(template, deployment.job_variables))
    configuration.prepare_for_flow_run(flow_run, deployment, flow)
    assert configuration.env["ELT_ENV"] == "prod"
    assert configuration.env["PATH"] == os.environ["PATH"]  # the worker's environment is kept beneath it


def test_make_deploy_needs_a_prefect_api_and_for_kubernetes_an_image(tmp_path):
    """Without an API URL Prefect would deploy to a throwaway server; a Kubernetes pool without
    an image would start Jobs that cannot pull. Both stop before `prefect deploy` runs."""
    no_api = run_make("deploy", PREFECT_HOME=str(tmp_path))
    assert no_api.returncode != 0 and "set PREFECT_API_URL" in no_api.stderr
    assert "prefect --no-prompt deploy" not in no_api.stdout
    no_image = run_make(
        "deploy", PREFECT_HOME=str(tmp_path), PREFECT_API_URL="http://127.0.0.1:9/api", ELT_WORK_POOL="elt-k8s"
    )
    assert no_image.returncode != 0 and "set ELT_IMAGE" in no_image.stderr
    assert "prefect --no-prompt deploy" not in no_image.stdout


def test_a_deployment_key_serving_would_ignore_is_refused(tmp_path, monkeypatch):
    """One definition: a key `prefect deploy` would apply and serving would not must not pass silently."""
    definition = yaml.safe_load(serve.PREFECT_YAML.read_text())
    definition["deployments"][0]["concurrency_limit"] = 1
    (tmp_path / "prefect.yaml").write_text(yaml.safe_dump(definition))
    monkeypatch.setattr(serve, "PREFECT_YAML", tmp_path / "prefect.yaml")
    with pytest.raises(ValueError, match="concurrency_limit"):
        serve.deployments()


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
