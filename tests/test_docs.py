"""The dbt docs as people see them: generated, served on 127.0.0.1 by `dbt docs serve`, opened in
headless Chromium (Debian's package, installed here when missing), with a screenshot saved."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from core.settings import DBT_PROFILES_DIR, DBT_PROJECT_DIR

from .browser import render, visible_text
from .conftest import QUIET_TOOLS, listens_on_loopback_only, run_dbt
from .processes import free_port

pytestmark = [pytest.mark.integration, pytest.mark.one_target]


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


def test_the_docs_are_served_on_loopback_only(docs_server):
    manifest = json.load(urllib.request.urlopen(f"{docs_server}/manifest.json", timeout=10))
    assert "model.elt.daily_summary" in manifest["nodes"]
    assert listens_on_loopback_only(int(docs_server.rsplit(":", 1)[1]))


def documented_model(name: str) -> dict:
    """The model's entry in the dbt project's yml, read here (not through dbt or the docs site)."""
    for path in sorted((DBT_PROJECT_DIR / "models").rglob("*.yml")):
        for model in (yaml.safe_load(path.read_text()) or {}).get("models", []):
            if model["name"] == name:
                return model
    raise AssertionError(f"no yml documents the model {name}")


def sql_dependencies(model: str) -> set[str]:
    """Node ids upstream of a model, from the ref()/source() calls in the SQL files themselves."""
    sql = {path.stem: path.read_text() for path in (DBT_PROJECT_DIR / "models").rglob("*.sql")}
    seeds = {path.stem for path in (DBT_PROJECT_DIR / "seeds").rglob("*.csv")}
    found: set[str] = set()
    pending = [model]
    while pending:
        text = sql[pending.pop()]
        for source, table in re.findall(r"source\w*\(\s*'(\w+)'\s*,\s*'(\w+)'\s*\)", text):
            found.add(f"source.elt.{source}.{table}")
        for name in re.findall(r"\bref\(\s*'(\w+)'\s*\)", text):
            node = f"seed.elt.{name}" if name in seeds else f"model.elt.{name}"
            if node not in found:
                found.add(node)
                if name in sql:
                    pending.append(name)
    return found


# A page of our own beside the docs (same origin) that opens a model's lineage graph in a frame and,
# once the graph has settled, writes the ids of the nodes cytoscape holds into its own DOM.
GRAPH_PROBE = """<!doctype html><html><body>
<iframe id="docs" src="index.html#!/model/MODEL?g_v=1" width="1400" height="1000"></iframe>
<pre id="nodes"></pre>
<script>
let last = "", stable = 0;
function readGraph() {
  const page = document.getElementById("docs").contentDocument;
  const holder = page && Array.from(page.querySelectorAll("*")).find(el => el._cyreg && el._cyreg.cy);
  const nodes = holder ? holder._cyreg.cy.nodes().filter(n => n.visible()).map(n => n.id()).sort() : [];
  stable = nodes.length && JSON.stringify(nodes) === last ? stable + 1 : 0;
  last = JSON.stringify(nodes);
  if (stable >= 4) document.getElementById("nodes").textContent = last; else setTimeout(readGraph, 500);
}
readGraph();
</script></body></html>"""


def test_the_daily_summary_page_shows_its_description_and_documented_columns(docs_server, module_data_dir):
    model = documented_model("daily_summary")
    columns = {column["name"]: column.get("description", "") for column in model["columns"]}
    assert columns and all(description.strip() for description in columns.values()), columns  # all documented
    screenshot = module_data_dir / "docs" / "daily_summary.png"
    text = visible_text(render(f"{docs_server}/#!/model/model.elt.daily_summary", screenshot))
    assert " ".join(model["description"].split()) in text
    for name, description in columns.items():
        assert f"{name} " in text and " ".join(description.split()) in text, name
    assert screenshot.stat().st_size > 10_000


def test_the_lineage_graph_shows_the_models_upstream(docs_server, module_data_dir):
    probe = module_data_dir / "dbt_target" / "lineage_probe.html"
    probe.write_text(GRAPH_PROBE.replace("MODEL", "model.elt.daily_summary"))
    dom = render(f"{docs_server}/{probe.name}")
    shown = json.loads(re.search(r'<pre id="nodes">(.*?)</pre>', dom, re.S)[1] or "[]")
    upstream = sql_dependencies("daily_summary")
    assert {"model.elt.fct_vehicle_events", "source.elt.vehicles.vehicle_events"} <= upstream  # the parse works
    assert {"model.elt.daily_summary", *upstream} <= set(shown), shown
