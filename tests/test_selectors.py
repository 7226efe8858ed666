"""dbt selections by name: the selectors of dbt_project/selectors.yml are what the deployments,
the backfill and `make build --selector` ask for, and a build plan's skipped nodes are left out
of a selector's build too (dbt itself ignores --exclude beside --selector)."""

from __future__ import annotations

import pytest
import yaml

from core.settings import PROJECT_ROOT
from orchestration import build_plan
from orchestration.serve import deployments

pytestmark = pytest.mark.one_target  # dbt arguments and configuration, not the warehouse

SELECTORS = yaml.safe_load((PROJECT_ROOT / "dbt_project" / "selectors.yml").read_text())["selectors"]


def listed(selector: str) -> list[str]:
    return {"vehicles": ["elt.marts.vehicles.daily_summary", "unit_test:elt.test_daily_summary"]}[selector]


def test_no_selector_builds_everything_less_the_skipped():
    assert build_plan.selection_args(None, [], listed) == []
    assert build_plan.selection_args(None, ["fqn:elt.a"], listed) == ["--exclude", "fqn:elt.a"]


def test_a_selector_without_skips_is_passed_by_name():
    assert build_plan.selection_args("vehicles", [], listed) == ["--selector", "vehicles"]


def test_a_selector_with_skips_selects_its_listed_nodes_and_excludes_the_skipped():
    assert build_plan.selection_args("vehicles", ["fqn:elt.a"], listed) == [
        "--select",
        "elt.marts.vehicles.daily_summary",
        "unit_test:elt.test_daily_summary",
        "--exclude",
        "fqn:elt.a",
    ]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--selector", "football", "--fail-fast"], ("football", ["--fail-fast"])),
        (["--selector=vehicles"], ("vehicles", [])),
        (["--select", "+fct_matches"], (None, ["--select", "+fct_matches"])),
    ],
)
def test_the_selector_is_read_from_build_options(argv, expected):
    assert build_plan.split_selector(argv) == expected


def test_deployments_name_defined_selectors():
    defined = {selector["name"] for selector in SELECTORS}
    served = {d.name: d.parameters.get("selector") for d in deployments() if "selector" in d.parameters}
    assert served == {"daily-summary": "vehicles", "football-weekly": "football"}
    assert set(served.values()) <= defined
