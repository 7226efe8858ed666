"""The dbt docs as people see them: generated, served on 127.0.0.1 by `dbt docs serve`, opened in
headless Chromium (Debian's package, installed here when missing), with a screenshot saved."""

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

from core.settings import DBT_PROFILES_DIR, DBT_PROJECT_DIR

from .conftest import QUIET_TOOLS, listens_on_loopback_only, run_dbt
from .processes import free_port

pytestmark = [pytest.mark.integration, pytest.mark.one_target]
CHROMIUM_PACKAGES = ("chromium", "chromium-driver")


def chromium() -> str:
    """Debian's Chromium; installed with apt when missing (the tests run as root in CI)."""
    found = shutil.which("chromium")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("chromium is not installed and this user cannot install it (apt-get install chromium)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], env=env, check=True, capture_output=True, timeout=600)
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *CHROMIUM_PACKAGES]
    subprocess.run(install, env=env, check=True, capture_output=True, timeout=900)
    return shutil.which("chromium") or pytest.fail("apt-get installed chromium but it is not on PATH")


@pytest.fixture(scope="module")
def docs_server(module_data_dir: Path) -> Iterator[str]:
    run_dbt("docs", "generate", data_dir=module_data_dir)
    port = free_port()
    env = {
        **os.environ,
        **QUIET_TOOLS,
        "DBT_PROJECT_DIR": str(DBT_PROJECT_DIR),
        "DBT_PROFILES_DIR": str(DBT_PROFILES_DIR),
    }
    command = [str(Path(sys.executable).parent / "dbt"), "docs", "serve", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--no-browser", "--target-path", str(module_data_dir / "dbt_target")]
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/manifest.json", timeout=2).close()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "dbt docs serve did not start"
                time.sleep(0.3)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def render(page: str, screenshot: Path | None = None) -> str:
    """The page's DOM after its scripts ran, from headless Chromium; optionally a screenshot."""
    common = [chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
    common += ["--hide-scrollbars", "--window-size=1400,1000", "--virtual-time-budget=15000"]
    if screenshot:
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([*common, f"--screenshot={screenshot}", page], check=True, capture_output=True, timeout=120)
    return subprocess.run([*common, "--dump-dom", page], check=True, capture_output=True, text=True, timeout=120).stdout


def test_the_docs_are_served_on_loopback_only(docs_server):
    manifest = json.load(urllib.request.urlopen(f"{docs_server}/manifest.json", timeout=10))
    assert "model.elt.daily_summary" in manifest["nodes"]
    assert listens_on_loopback_only(int(docs_server.rsplit(":", 1)[1]))


def test_the_daily_summary_page_renders_with_its_columns(docs_server, module_data_dir):
    screenshot = module_data_dir / "docs" / "daily_summary.png"
    dom = render(f"{docs_server}/#!/model/model.elt.daily_summary", screenshot)
    assert "daily_summary" in dom
    for column in ("vehicle_id", "day", "last_event_time", "last_event_type"):
        assert column in dom
    assert "the last event of the day" in dom  # the model description, from _vehicles__models.yml
    assert screenshot.stat().st_size > 10_000


def test_the_lineage_graph_renders(docs_server, module_data_dir):
    screenshot = module_data_dir / "docs" / "lineage.png"
    dom = render(f"{docs_server}/#!/model/model.elt.daily_summary?g_v=1", screenshot)
    assert "<canvas" in dom  # the graph is drawn by cytoscape onto canvases
    assert screenshot.stat().st_size > 10_000
