"""deploy/k8s against Kubernetes' own schemas (kubernetes-validate, offline), and the Job the
Prefect Kubernetes worker would create for each deployment of prefect.yaml, rendered by
prefect-kubernetes' own code in the worker container's environment (tests/kubernetes_job.py).

Not tested here: a real cluster, RBAC enforcement, pulling from a real registry."""

from __future__ import annotations

import copy
import json
import re
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from core.settings import PROJECT_ROOT

# The oldest of the three newest minors kubernetes-validate 1.37 ships schemas for.
KUBERNETES_VERSION = "1.35.0"
K8S_DIR = PROJECT_ROOT / "deploy" / "k8s"
TEMPLATE = K8S_DIR / "base-job-template.json"
SECRETS_EXAMPLE = K8S_DIR / "elt-secrets.example.env"
RENDER_SCRIPT = Path(__file__).with_name("kubernetes_job.py")
WORK_POOL = "elt-k8s"
NAMESPACE = "elt"
IMAGE = "registry.example.com/elt-thin-loaders:rendered-in-a-test"
# Prefect's default template puts these in the pod spec, where Kubernetes knows no such fields
# (they belong to the Job spec; an API server drops them with a warning, strict validation fails).
MISPLACED_BY_PREFECT = ("completions", "parallelism")
SECRET_KEYS = (
    "PGHOST",
    "PGPORT",
    "PGUSER",
    "PGPASSWORD",
    "PGDATABASE",
    "SOURCES__FOOTBALL_API__API_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_ENDPOINT_URL",
    "AWS_REGION",
)
LOOPBACK = re.compile(r"//(localhost|127\.\d+\.\d+\.\d+|\[::1\])([:/]|$)")


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def kustomization() -> dict:
    return load_yaml(K8S_DIR / "kustomization.yaml")


def listed_documents() -> list[tuple[str, dict]]:
    """(file, document) for every YAML document of every resource the kustomization lists."""
    return [
        (name, document)
        for name in kustomization()["resources"]
        for document in yaml.safe_load_all((K8S_DIR / name).read_text())
        if document is not None
    ]


def the(kind: str, name: str | None = None) -> dict:
    matches = [doc for _, doc in listed_documents() if doc["kind"] == kind and name in (None, doc["metadata"]["name"])]
    assert len(matches) == 1, f"expected one {kind} {name or ''} in the kustomization, found {len(matches)}"
    return matches[0]


def worker_container() -> dict:
    (container,) = the("Deployment", "prefect-worker")["spec"]["template"]["spec"]["containers"]
    return container


def validate_strictly(manifest: dict) -> None:
    kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


def with_pod_fields_moved_to_the_job(job: dict) -> dict:
    job = copy.deepcopy(job)
    for field in MISPLACED_BY_PREFECT:
        job["spec"][field] = job["spec"]["template"]["spec"].pop(field)
    return job


def pod_spec(job: dict) -> dict:
    return job["spec"]["template"]["spec"]


def container_of(job: dict) -> dict:
    (container,) = pod_spec(job)["containers"]
    return container


def env_of(job: dict) -> dict[str, str]:
    return {entry["name"]: entry.get("value") for entry in container_of(job).get("env", [])}


def strings_in(value) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from strings_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings_in(item)


# --- the manifests --------------------------------------------------------------------------


def test_the_pinned_version_s_strict_schemas_ship_with_the_package():
    schemas = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    assert (schemas / f"v{KUBERNETES_VERSION}-local-strict" / "job-batch-v1.json").is_file()


@pytest.mark.parametrize(
    "document",
    [document for _, document in listed_documents()],
    ids=[f"{name}:{document['kind']}/{document['metadata']['name']}" for name, document in listed_documents()],
)
def test_every_listed_manifest_validates_strictly_with_no_network(document, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("schema validation tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    validate_strictly(document)


def test_every_yaml_file_in_the_folder_is_a_listed_resource():
    files = {path.name for path in K8S_DIR.iterdir() if path.suffix in (".yaml", ".yml")}
    assert files - {"kustomization.yaml"} == set(kustomization()["resources"])


def test_the_secrets_example_is_comments_only_and_names_every_key():
    lines = [line.strip() for line in SECRETS_EXAMPLE.read_text().splitlines() if line.strip()]
    assert all(line.startswith("#") for line in lines), "the example must not set a value"
    named = {line.lstrip("# ").split("=", 1)[0] for line in lines if re.match(r"#\s*[A-Z_]+=", line)}
    assert set(SECRET_KEYS) <= named
    assert "create secret generic elt-secrets --from-env-file=" in SECRETS_EXAMPLE.read_text()


def test_everything_lives_in_the_namespace_the_kustomization_sets():
    assert kustomization()["namespace"] == NAMESPACE
    assert the("Namespace")["metadata"]["name"] == NAMESPACE
    namespaced = [doc for _, doc in listed_documents() if doc["kind"] != "Namespace"]
    assert {doc["metadata"]["namespace"] for doc in namespaced} == {NAMESPACE}


def test_the_kustomization_sets_the_worker_s_image():
    assert [image["name"] for image in kustomization()["images"]] == [worker_container()["image"]]


def expanded(argument: str, container: dict) -> str:
    """A command argument as Kubernetes runs it: `$(NAME)` replaced by the container's variable,
    here one taken from a ConfigMap of the kustomization."""

    def value_of(match: re.Match) -> str:
        (variable,) = [item for item in container["env"] if item["name"] == match.group(1)]
        reference = variable["valueFrom"]["configMapKeyRef"]
        return the("ConfigMap", reference["name"])["data"][reference["key"]]

    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", value_of, argument)


def test_the_worker_polls_the_kubernetes_pool_with_a_health_endpoint():
    command = worker_container()["command"]
    assert command[:3] == ["prefect", "worker", "start"]
    assert expanded(command[command.index("--pool") + 1], worker_container()) == WORK_POOL
    assert command[command.index("--type") + 1] == "kubernetes"
    assert "--with-healthcheck" in command
    # A worker that created a missing pool would give it Prefect's default template.
    assert "--no-create-pool-if-not-found" in command
    assert worker_container()["livenessProbe"]["httpGet"]["path"] == "/health"


def test_the_worker_runs_unprivileged_on_a_read_only_root():
    pod = the("Deployment", "prefect-worker")["spec"]["template"]["spec"]
    security = worker_container()["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == image_uid()
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"  # Pod Security: restricted
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]


def test_the_worker_is_bound_to_its_role_and_watches_only_its_namespace():
    binding = the("RoleBinding")
    account = the("Deployment", "prefect-worker")["spec"]["template"]["spec"]["serviceAccountName"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "prefect-worker"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}]
    the("ServiceAccount", account)
    # A Role grants nothing cluster-wide; without this the observer would watch every namespace.
    env = {entry["name"]: entry.get("value") for entry in worker_container()["env"]}
    assert env["PREFECT_INTEGRATIONS_KUBERNETES_OBSERVER_NAMESPACES"] == NAMESPACE


def kubernetes_calls_of_prefect_kubernetes() -> set[tuple[str, str, str]]:
    """(api group, resource, verb) of every namespaced jobs/pods/pods-log call in
    prefect-kubernetes' worker and observer, read from their source, plus the watches of its kopf
    handlers. Its secret calls are left out: they happen only under settings the worker leaves off
    (create_secret_for_api_key, store_env_as_secret)."""
    import prefect_kubernetes

    package = Path(prefect_kubernetes.__file__).parent
    source = (package / "worker.py").read_text() + (package / "observer.py").read_text()
    verbs = {
        "read": "get",
        "list": "list",
        "create": "create",
        "delete": "delete",
        "patch": "patch",
        "replace": "update",
    }
    resources = {"job": ("batch", "jobs"), "pod": ("", "pods"), "pod_log": ("", "pods/log")}
    call = re.compile(r"\.(read|list|create|delete|patch|replace)_namespaced_(job|pod_log|pod)\(")
    calls = {(*resources[resource], verbs[verb]) for verb, resource in call.findall(source)}
    if re.search(r'kopf\.on\.event\(\s*"pods"', source):
        calls.add(("", "pods", "watch"))
    if re.search(r'kopf\.on\.event\(\s*"batch",\s*"v1",\s*"jobs"', source):
        calls.add(("batch", "jobs", "watch"))
    return calls


def test_the_worker_role_grants_exactly_what_prefect_kubernetes_calls():
    granted = {
        (group, resource, verb)
        for rule in the("Role", "prefect-worker")["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert granted == kubernetes_calls_of_prefect_kubernetes()


def test_flow_run_pods_get_no_kubernetes_api_token():
    account = the("ServiceAccount", template_default("service_account_name"))
    assert account["automountServiceAccountToken"] is False


# --- the base job template ------------------------------------------------------------------


def template() -> dict:
    return json.loads(TEMPLATE.read_text())


def template_default(variable: str):
    return template()["variables"]["properties"][variable]["default"]


def test_the_template_points_at_the_kustomization_s_objects():
    assert template_default("namespace") == NAMESPACE
    assert the("PersistentVolumeClaim", template_default("data_volume_claim"))
    assert "image" in template()["variables"]["required"]
    assert "default" not in template()["variables"]["properties"]["image"]


def test_a_prefect_server_takes_it_as_the_pool_s_template():
    from prefect.server.schemas.actions import WorkPoolCreate

    pool = WorkPoolCreate(name=WORK_POOL, type="kubernetes", base_job_template=template())
    assert pool.base_job_template == template()


def test_job_variables_without_an_image_are_refused():
    """Checked as Prefect checks a flow run's job variables against the pool's schema."""
    from prefect.utilities.schema_tools import ValidationError, validate

    with pytest.raises(ValidationError, match="'image' is a required property"):
        validate({"env": {"ELT_MODE": "live"}}, template()["variables"], raise_on_error=True, preprocess=True)


DEPLOYED_ENV = "prod"


def deployments() -> list[dict]:
    """prefect.yaml's deployments as the worker sees them: name, entrypoint, parameters, and the
    job variables with their `{{ $VAR }}` placeholders resolved by Prefect, as `prefect deploy`
    does for `make deploy ELT_WORK_POOL=elt-k8s ELT_IMAGE=...`. The image comes from there only."""
    from prefect.utilities.templating import apply_values

    entries = load_yaml(PROJECT_ROOT / "prefect.yaml")["deployments"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ELT_IMAGE", IMAGE)
        patch.setenv("ELT_WORK_POOL", WORK_POOL)
        patch.setenv("ELT_ENV", DEPLOYED_ENV)
        return [
            {
                "name": entry["name"],
                "entrypoint": entry["entrypoint"],
                "parameters": entry.get("parameters") or {},
                "job_variables": apply_values(entry["work_pool"].get("job_variables") or {}, {}, remove_notset=False),
            }
            for entry in entries
        ]


CONTAINERFILE = PROJECT_ROOT / "deploy" / "Containerfile"


def image_environment() -> dict[str, str]:
    """The ENV the image sets (deploy/Containerfile's last stage), which the worker runs under."""
    last_stage = CONTAINERFILE.read_text().rsplit("\nFROM ", 1)[-1].replace("\\\n", " ")
    assignments = [line.split(None, 1)[1] for line in last_stage.splitlines() if line.startswith("ENV ")]
    return dict(pair.split("=", 1) for assignment in assignments for pair in assignment.split())


def image_uid() -> int:
    return int(re.search(r"^ARG UID=(\d+)$", CONTAINERFILE.read_text(), re.MULTILINE).group(1))


def worker_environment(home: Path) -> dict[str, str]:
    """The worker container's environment: the image's ENV, under its manifest's values and
    ConfigMap references resolved from the kustomization; an optional Secret that is not
    committed is absent, as in Kubernetes. HOME is a scratch folder: Prefect may write there, and
    the machine's must not show."""
    env = image_environment()
    for entry in worker_container()["env"]:
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        elif reference := entry["valueFrom"].get("configMapKeyRef"):
            env[entry["name"]] = the("ConfigMap", reference["name"])["data"][reference["key"]]
        else:
            assert entry["valueFrom"]["secretKeyRef"].get("optional"), entry
    return {**env, "HOME": str(home)}


def render(renders: list[dict], env: dict[str, str], cwd: Path) -> list[dict]:
    result = subprocess.run(
        [sys.executable, str(RENDER_SCRIPT)],
        input=json.dumps({"renders": renders}),
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("k8s-render")


@pytest.fixture(scope="module")
def rendered(scratch: Path) -> dict[str, dict]:
    """Deployment name -> the Job the worker would create; also the Jobs of Prefect's default
    template and of the committed one without its Job-level completions and parallelism (one
    subprocess: Prefect takes seconds to import)."""
    from prefect_kubernetes.worker import KubernetesWorker

    first = deployments()[0]
    without_job_level_fields = template()
    for field in MISPLACED_BY_PREFECT:
        del without_job_level_fields["job_configuration"]["job_manifest"]["spec"][field]
    renders = [{"template": template(), "deployment": deployment} for deployment in deployments()]
    renders.append({"template": KubernetesWorker.get_default_base_job_template(), "deployment": first})
    renders.append({"template": without_job_level_fields, "deployment": first})
    outcomes = render(renders, worker_environment(scratch / "home"), cwd=scratch)
    names = [*deployment_names(), "prefect default", "without job-level fields"]
    return dict(zip(names, outcomes, strict=True))


def deployment_names() -> list[str]:
    return [entry["name"] for entry in load_yaml(PROJECT_ROOT / "prefect.yaml")["deployments"]]


def test_prefect_s_default_template_fails_strict_validation_only_for_misplaced_fields(rendered):
    job = rendered["prefect default"]["job"]
    with pytest.raises(kubernetes_validate.ValidationError) as rejected:
        validate_strictly(job)
    assert list(rejected.value.path) == ["spec", "template", "spec"]
    assert all(f"'{field}'" in rejected.value.message for field in MISPLACED_BY_PREFECT)
    validate_strictly(with_pod_fields_moved_to_the_job(job))


def test_prefect_kubernetes_needs_the_fields_at_least_at_the_job_level(rendered):
    """prefect-kubernetes 0.8.0 checks a template by a JSON-patch diff against its own base
    manifest, which has them in the pod spec, and refuses only the diff's "add" operations. jsonpatch
    turns an add of a value the manifest holds elsewhere into a "move" (matched by value, not by
    name): the Job-level 1s satisfy it. Without them the worker refuses the template."""
    error = rendered["without job-level fields"]["error"]
    assert all(f"/spec/template/spec/{field}" in error for field in MISPLACED_BY_PREFECT)


@pytest.mark.parametrize("name", deployment_names())
def test_the_deployment_s_job_variables_satisfy_the_pool_s_schema(name):
    from prefect.utilities.schema_tools import validate

    (deployment,) = [deployment for deployment in deployments() if deployment["name"] == name]
    validate(deployment["job_variables"], template()["variables"], raise_on_error=True, preprocess=True)


@pytest.mark.parametrize("name", deployment_names())
def test_the_job_validates_strictly(rendered, name):
    job = rendered[name]["job"]
    validate_strictly(job)
    assert {field: job["spec"][field] for field in MISPLACED_BY_PREFECT} == {"completions": 1, "parallelism": 1}


@pytest.mark.parametrize("name", deployment_names())
def test_the_job_runs_the_image_in_the_namespace_as_the_flow_run_account(rendered, name):
    job = rendered[name]["job"]
    flow_run_account = the("ServiceAccount", "elt-flow-run")
    assert container_of(job)["image"] == IMAGE
    assert job["metadata"]["namespace"] == NAMESPACE
    assert pod_spec(job)["serviceAccountName"] == flow_run_account["metadata"]["name"]
    assert pod_spec(job)["automountServiceAccountToken"] is False
    assert job["metadata"]["labels"]["prefect.io/deployment-name"] == name


@pytest.mark.parametrize("name", deployment_names())
def test_the_job_reads_the_secret_and_keeps_data_on_the_volume(rendered, name):
    job = rendered[name]["job"]
    (claim,) = [volume for volume in pod_spec(job)["volumes"] if "persistentVolumeClaim" in volume]
    (mount,) = [mount for mount in container_of(job)["volumeMounts"] if mount["name"] == claim["name"]]
    assert {"secretRef": {"name": "elt-secrets"}} in container_of(job)["envFrom"]
    assert claim["persistentVolumeClaim"]["claimName"] == the("PersistentVolumeClaim")["metadata"]["name"]
    assert env_of(job)["ELT_DATA_DIR"] == mount["mountPath"]


@pytest.mark.parametrize("name", deployment_names())
def test_the_job_runs_in_the_deployment_s_environment_beside_the_template_s_variables(rendered, name):
    env = env_of(rendered[name]["job"])
    assert env["ELT_ENV"] == DEPLOYED_ENV
    template_container = template()["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert {item["name"]: item["value"] for item in template_container["env"]}.items() <= env.items()


@pytest.mark.parametrize("name", deployment_names())
def test_the_job_is_unprivileged_sized_and_left_to_prefect_to_retry(rendered, name):
    job = rendered[name]["job"]
    container = container_of(job)
    assert pod_spec(job)["securityContext"]["runAsNonRoot"] is True
    assert pod_spec(job)["securityContext"]["runAsUser"] == image_uid()
    # The namespace enforces Pod Security `restricted`, which admits no pod without a seccomp profile.
    assert the("Namespace")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert pod_spec(job)["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert set(container["resources"]["requests"]) == {"cpu", "memory"}
    assert "memory" in container["resources"]["limits"]
    assert job["spec"]["backoffLimit"] == 0
    assert job["spec"]["ttlSecondsAfterFinished"] > 0


def traces_of_the_machine(job: dict, scratch: Path) -> list[str]:
    """What in a Job belongs to the machine it was rendered on: any absolute path the template
    did not put there (repository, venv, home, temporary folders), PREFECT_HOME, a loopback API."""
    template_paths = {mount["mountPath"] for mount in container_of(job).get("volumeMounts", [])}
    host_paths = {str(PROJECT_ROOT), sys.prefix, str(Path.home()), tempfile.gettempdir(), str(scratch)} - {"/"}
    traces = [
        text
        for text in strings_in(job)
        if (text.startswith("/") and text not in template_paths) or any(path in text for path in host_paths)
    ]
    traces += [name for name in env_of(job) if name == "PREFECT_HOME"]
    traces += [f"PREFECT_API_URL={url}" for url in [env_of(job).get("PREFECT_API_URL") or ""] if LOOPBACK.search(url)]
    return traces


@pytest.mark.parametrize("name", deployment_names())
def test_the_job_carries_nothing_of_the_machine_it_was_rendered_on(rendered, scratch, name):
    job = rendered[name]["job"]
    assert traces_of_the_machine(job, scratch) == []
    assert env_of(job)["PREFECT_API_URL"] == the("ConfigMap", "prefect-worker")["data"]["PREFECT_API_URL"]


def test_a_render_in_a_developer_s_environment_shows_its_traces(scratch):
    """The check above bites: the same render with what `make` exports (PREFECT_HOME) and a
    local server's API URL is caught."""
    env = {
        **worker_environment(scratch / "home"),
        "PREFECT_HOME": str(scratch / "prefect-home"),
        "PREFECT_API_URL": "http://127.0.0.1:4200/api",
    }
    (outcome,) = render([{"template": template(), "deployment": deployments()[0]}], env, cwd=scratch)
    traces = traces_of_the_machine(outcome["job"], scratch)
    assert str(scratch / "prefect-home") in traces
    assert "PREFECT_HOME" in traces
    assert "PREFECT_API_URL=http://127.0.0.1:4200/api" in traces


def test_an_api_key_reaches_the_job_as_a_reference_to_its_secret_never_as_its_value(scratch):
    """When the API wants a key, the worker has it from the Secret prefect-api and is told so:
    the Job it creates names that Secret instead of copying the key."""
    key = "pnu_a-key-that-must-not-be-copied"
    (reference,) = [entry for entry in worker_container()["env"] if entry["name"] == "PREFECT_API_KEY"]
    env = {**worker_environment(scratch / "home"), "PREFECT_API_KEY": key}
    (outcome,) = render([{"template": template(), "deployment": deployments()[0]}], env, cwd=scratch)
    job = outcome["job"]
    assert key not in json.dumps(job)
    (entry,) = [entry for entry in container_of(job)["env"] if entry["name"] == "PREFECT_API_KEY"]
    secret = reference["valueFrom"]["secretKeyRef"]
    assert entry["valueFrom"] == {"secretKeyRef": {"name": secret["name"], "key": secret["key"]}}
