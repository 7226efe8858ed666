"""The container image (deploy/Containerfile), built as a user builds it: from a clean clone of the
committed HEAD, `make image`; one `elt` run on the bundled sample inside the image gives the row
counts the same run gives on the host; `make push` to a loopback registry, then a pull by digest.

Behind the `image` marker, not in `make test`: `make test-image` (README, "Container image")."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.settings import PROJECT_ROOT
from tests.processes import free_port, start, stop_group

pytestmark = pytest.mark.image

IMAGE_STORE = os.environ.get("IMAGE_STORE", "/var/tmp/elt-image-store")
IMAGE_UID = 10001
# Variables of an outer make (make test-image) that must not leak into the clone's make.
OUTER_MAKE = ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES")
PIPELINE_VARIABLES = ("ELT_", "DBT_", "PREFECT_", "PG", "SOURCES__")


def buildah(store: str) -> list[str]:
    return ["buildah", "--root", f"{store}/root", "--runroot", f"{store}/run", "--storage-driver", "overlay"]


def clean_environment(**extra: str) -> dict[str, str]:
    """This process's environment without the pipeline's settings nor an outer make's."""
    kept = {
        name: value
        for name, value in os.environ.items()
        if name not in OUTER_MAKE and not name.startswith(PIPELINE_VARIABLES)
    }
    return {**kept, **extra}


def run(command: list[str], cwd: Path | None = None, timeout: float = 1800, **env: str) -> str:
    """A command to its end; its output in the failure message when it fails."""
    done = subprocess.run(
        command, cwd=cwd, env=clean_environment(**env), capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, (
        f"{' '.join(command)} exited {done.returncode}:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    )
    return done.stdout


def make(clone: Path, *targets: str, **variables: str) -> str:
    assignments = [f"{name}={value}" for name, value in {"IMAGE_STORE": IMAGE_STORE, **variables}.items()]
    return run(["make", "--no-print-directory", "-C", str(clone), *targets, *assignments])


def row_counts(warehouse: Path) -> dict[str, int]:
    """Rows per table (views left out: they may name paths of the machine that made them)."""
    import duckdb

    with duckdb.connect(str(warehouse), read_only=True) as connection:
        tables = connection.execute(
            "select table_schema, table_name from information_schema.tables where table_type = 'BASE TABLE'"
        ).fetchall()
        return {
            f"{schema}.{table}": connection.execute(f'select count(*) from "{schema}"."{table}"').fetchone()[0]
            for schema, table in tables
        }


def image_config(image: str, store: str = IMAGE_STORE) -> dict:
    return json.loads(run([*buildah(store), "inspect", "--type", "image", image]))


def writable_by_image_user(folder: Path) -> Path:
    folder.mkdir(parents=True)
    os.chown(folder, IMAGE_UID, IMAGE_UID)
    return folder


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean clone of the committed HEAD: nothing untracked, ignored or uncommitted."""
    head = run(["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"]).strip()
    clone = tmp_path_factory.mktemp("image") / "clone"
    run(["git", "clone", "--quiet", str(PROJECT_ROOT), str(clone)])
    run(["git", "-C", str(clone), "checkout", "--quiet", head])
    return clone


@pytest.fixture(scope="module")
def image(clone: Path) -> str:
    started = time.monotonic()
    make(clone, "image")
    print(f"make image: {time.monotonic() - started:.0f}s")
    tag = run(["git", "-C", str(clone), "rev-parse", "--short", "HEAD"]).strip()
    return f"localhost/elt-thin-loaders:{tag}"


@pytest.fixture
def container(image: str) -> Iterator[str]:
    name = run([*buildah(IMAGE_STORE), "from", image]).strip()
    yield name
    run([*buildah(IMAGE_STORE), "rm", name])


def run_in_container(container: str, *command: str, mounts: tuple[str, ...] = ()) -> str:
    volumes = [option for mount in mounts for option in ("-v", mount)]
    return run([*buildah(IMAGE_STORE), "run", "--isolation", "chroot", *volumes, container, "--", *command])


def listing(container: str, folder: str) -> set[str]:
    return set(run_in_container(container, "ls", "-A", folder).split())


def test_the_image_runs_as_a_numeric_non_root_user_without_data_secrets_or_wheels(image: str, container: str) -> None:
    config = image_config(image)["OCIv1"]["config"]
    assert config["User"] == str(IMAGE_UID)
    # A Kubernetes worker would copy it into every Job (deploy/k8s sets HOME instead).
    assert not [variable for variable in config["Env"] if variable.startswith("PREFECT_HOME=")]
    assert run_in_container(container, "id", "-u").strip() == str(IMAGE_UID)
    assert not {"data", "tests", "bench", "docs", ".git", ".venv", "build"} & listing(container, "/app")
    assert listing(container, "/app/.dlt") == {"config.toml"}
    assert listing(container, "/data") == set()
    assert "wheelhouse" not in listing(container, "/")
    assert {"manifest.json", "partial_parse.msgpack"} <= listing(container, "/app/dbt_project/target")


def test_a_sample_run_in_the_image_gives_the_host_runs_row_counts(clone: Path, container: str, tmp_path: Path) -> None:
    host_data = tmp_path / "host"
    run(
        [sys.executable, "-m", "orchestration.flows"],
        cwd=clone,
        ELT_DATA_DIR=str(host_data),
        ELT_TARGET="duckdb",
        PREFECT_HOME=str(host_data / ".prefect"),
        DBT_PROJECT_DIR=str(clone / "dbt_project"),
        DBT_PROFILES_DIR=str(clone / "profiles"),
        DBT_LOG_PATH=str(host_data / "dbt_logs"),
    )
    image_data = writable_by_image_user(tmp_path / "in_image")
    sample = clone / "data" / "sample"
    run_in_container(
        container,
        "python",
        "-m",
        "orchestration.flows",
        mounts=(f"{sample}:/app/data/sample:ro", f"{image_data}:/data"),
    )
    in_image = row_counts(image_data / "warehouse.duckdb")
    assert in_image == row_counts(host_data / "warehouse.duckdb")
    assert in_image["marts.fct_matches"] > 0
    # The parse baked into the image served the run: dbt never parsed the whole project.
    dbt_log = (image_data / "dbt_logs" / "dbt.log").read_text()
    assert "Unable to do partial parsing" not in dbt_log
    assert "Starting full parse" not in dbt_log


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture
def loopback_registry(tmp_path: Path) -> Iterator[str]:
    """Debian's docker-registry on 127.0.0.1, storing in tmp; its address."""
    address = f"127.0.0.1:{free_port()}"
    config = tmp_path / "registry.yml"
    config.write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path / 'blobs'}\nhttp:\n  addr: {address}\n"
    )
    registry = start(["docker-registry", "serve", str(config)])
    try:
        deadline = time.monotonic() + 30
        while not answers(f"http://{address}/v2/"):
            assert registry.poll() is None and time.monotonic() < deadline, "the registry did not start"
            time.sleep(0.2)
        yield address
    finally:
        stop_group(registry)


def test_make_push_then_a_pull_by_digest_gives_the_same_image(
    clone: Path, image: str, loopback_registry: str, tmp_path: Path
) -> None:
    make(clone, "push", IMAGE_REGISTRY=loopback_registry, IMAGE_TLS_VERIFY="false")
    digest = (clone / "build" / "image.digest").read_text().strip()
    assert digest.startswith("sha256:")
    by_digest = f"{loopback_registry}/elt-thin-loaders@{digest}"
    assert (clone / "build" / "pushed-image").read_text().strip() == by_digest  # what CI deploys
    inspected = json.loads(run(["skopeo", "inspect", "--tls-verify=false", f"docker://{by_digest}"]))
    assert inspected["Digest"] == digest
    # Pulled into storage of its own, so the layers really cross the registry.
    pulled_store = str(tmp_path / "pulled")
    try:
        pulled_id = run([*buildah(pulled_store), "pull", "--quiet", "--tls-verify=false", f"docker://{by_digest}"])
        assert pulled_id.strip() == image_config(image)["FromImageID"]
    finally:
        subprocess.run([*buildah(pulled_store), "rmi", "--all", "--force"], capture_output=True)
        shutil.rmtree(pulled_store, ignore_errors=True)
