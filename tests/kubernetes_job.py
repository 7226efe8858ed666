"""Renders the Job the Prefect Kubernetes worker would create for a deployment, with
prefect-kubernetes' own code and in the worker's order: the work pool's base job template and
the deployment's job variables (`from_template_and_values`), `prepare_for_flow_run`, then the
API key's replacement by a Secret reference.

Run as a script in a subprocess whose environment is the worker container's
(tests/test_kubernetes.py): the worker copies the Prefect settings of its own environment into
every Job, so a render in the test process would show the test machine's. Reads
{"renders": [{"template": ..., "deployment": {name, entrypoint, parameters, job_variables}}]}
on stdin; writes one {"job": manifest} or {"error": message} per render, in order, as JSON.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid

from prefect.client.schemas.objects import Flow, FlowRun
from prefect.client.schemas.responses import DeploymentResponse
from prefect_kubernetes.settings import KubernetesSettings
from prefect_kubernetes.worker import KubernetesWorker, KubernetesWorkerJobConfiguration

WORK_POOL = "elt-k8s"


def flow_name(entrypoint: str) -> str:
    """'orchestration/flows.py:elt' -> 'elt'."""
    return entrypoint.rsplit(":", 1)[-1]


async def job_for(template: dict, deployment: dict) -> dict:
    flow = Flow(id=uuid.uuid4(), name=flow_name(deployment["entrypoint"]))
    api_deployment = DeploymentResponse(
        id=uuid.uuid4(),
        name=deployment["name"],
        flow_id=flow.id,
        entrypoint=deployment["entrypoint"],
        parameters=deployment["parameters"],
        job_variables=deployment["job_variables"],
        work_pool_name=WORK_POOL,
    )
    flow_run = FlowRun(
        id=uuid.uuid4(),
        name=f"{deployment['name']}-run",
        flow_id=flow.id,
        deployment_id=api_deployment.id,
        parameters=deployment["parameters"],
        job_variables=deployment["job_variables"],
    )
    configuration = await KubernetesWorkerJobConfiguration.from_template_and_values(
        template, deployment["job_variables"]
    )
    configuration.prepare_for_flow_run(flow_run, api_deployment, flow)
    await reference_the_api_key_secret(configuration)
    return configuration.job_manifest


async def reference_the_api_key_secret(configuration: KubernetesWorkerJobConfiguration) -> None:
    """The first step of the worker's Job creation (`KubernetesWorker._create_job`) when it is
    told the Secret holding PREFECT_API_KEY: the key's value becomes a reference to that Secret.
    With a Secret name given, it makes no Kubernetes call."""
    settings = KubernetesSettings().worker
    if settings.api_key_secret_name:
        await KubernetesWorker(work_pool_name=WORK_POOL)._replace_api_key_with_secret(
            configuration=configuration,
            client=None,
            secret_name=settings.api_key_secret_name,
            secret_key=settings.api_key_secret_key,
        )


async def outcome(render: dict) -> dict:
    try:
        return {"job": await job_for(render["template"], render["deployment"])}
    except ValueError as error:  # the worker refuses the template (pydantic's errors are ValueErrors)
        return {"error": str(error)}


async def outcomes(request: dict) -> list[dict]:
    return [await outcome(render) for render in request["renders"]]


if __name__ == "__main__":
    json.dump(asyncio.run(outcomes(json.load(sys.stdin))), sys.stdout)
