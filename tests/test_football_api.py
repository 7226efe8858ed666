"""football-data.org v4 through the real dlt pipeline into DuckDB, against a local replay server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from dlt.pipeline.exceptions import PipelineStepFailed

from loaders.football_api import ApiClient, FootballApiError, RetryPolicy, football_api, resolve_competitions
from loaders.http import Throttle, file_for_url
from loaders.pipelines import pipeline

from .api_replay import TOKEN, Fault, recorded_routes
from .conftest import real_data, rows, tables_in

pytestmark = pytest.mark.integration

FAST = RetryPolicy(max_attempts=3, backoff_factor=0.01, max_backoff=0.05, max_rate_limit_wait=5, timeout=2)
TEAMS_2002 = "/v4/competitions/2002/teams?season=2022"
TEAMS_2013 = "/v4/competitions/2013/teams?season=2022"
MATCHES_BL1 = "/v4/competitions/BL1/matches?season=2022"


def load(api, competitions=("BL1", "BSA"), token=TOKEN, policy=FAST, **options):
    source = football_api(
        competitions=list(competitions),
        season=2022,
        base_url=api.base_url,
        api_token=token,
        calls_per_minute=0,
        policy=policy,
        **options,
    )
    return pipeline("football_api", "raw_football_api").run(source)


def count(table: str, where: str = "true") -> int:
    return rows(f"select count(*) from raw_football_api.{table} where {where}")[0][0]


def tables() -> set[str]:
    return tables_in("raw_football_api")


def recorded(name: str) -> dict:
    return json.loads((real_data("football_api") / name).read_bytes())


def test_all_recorded_responses_load_with_counts_matching_the_json(data_dir, replay_api):
    load(replay_api)
    competitions = recorded("v4_competitions_2022-09-12.json")["competitions"]
    bl1 = recorded("v4_competitions_2002_teams_2022-09-12.json")["teams"]
    bsa = recorded("v4_competitions_2013_teams_2022-09-12.json")["teams"]
    matches = recorded("v4_competitions_2002_matches_2022-09-12.json")["matches"]

    assert count("competitions") == len(competitions) == 13
    assert count("teams") == len({team["id"] for team in bl1 + bsa}) == 38
    assert count("teams__squad") == sum(len(team["squad"]) for team in bl1 + bsa)
    assert count("competition_teams", "competition_id = 2002 and season = 2022") == 18
    assert count("competition_teams", "competition_id = 2013 and season = 2022") == 20
    assert count("matches") == len(matches) == 306
    statuses = Counter(match["status"] for match in matches)
    assert statuses == {"FINISHED": 54, "TIMED": 90, "SCHEDULED": 162}
    for status, expected in statuses.items():
        assert count("matches", f"status = '{status}'") == expected
    assert count("matches__referees") == sum(len(match["referees"]) for match in matches)
    # The replay has no BSA matches recording: a 404, recorded and skipped.
    assert count("skipped_requests", "status = 404 and url like '%/BSA/matches%'") == 1


def test_all_plans_listing_with_nulls_loads_every_competition(data_dir, replay_api):
    replay_api.routes.update(recorded_routes("v4_competitions_all_plans_2025.json"))
    load(replay_api, competitions=())
    listing = recorded("v4_competitions_all_plans_2025.json")["competitions"]
    assert count("competitions") == len(listing) == 184
    assert count("competitions", "code is null") == sum(1 for c in listing if c["code"] is None) == 66
    assert count("competitions", "plan = 'TIER_FOUR'") == 132


LAST_LOADS = (
    "select max(_dlt_load_id) from raw_football_api.teams "
    "union all select max(_dlt_load_id) from raw_football_api.matches"
)


def test_reloading_the_same_responses_changes_no_counts(data_dir, replay_api):
    load(replay_api)
    loads = rows(LAST_LOADS)
    load(replay_api)
    assert (count("teams"), count("matches"), count("competition_teams")) == (38, 306, 38)
    # Unchanged responses are not loaded again: the rows still carry the first load's id,
    # and the same refusal (the BSA matches 404) is not recorded twice.
    assert rows(LAST_LOADS) == loads
    assert count("skipped_requests") == 1


def test_a_changed_response_is_loaded_again(data_dir, replay_api):
    load(replay_api)
    first = rows("select max(_dlt_load_id) from raw_football_api.teams")
    body = json.loads(replay_api.routes[TEAMS_2002].read_bytes())
    body["teams"][0]["name"] = "Renamed FC"
    replay_api.routes[TEAMS_2002] = json.dumps(body).encode()
    load(replay_api)
    assert rows("select count(*) from raw_football_api.teams where name = 'Renamed FC'") == [(1,)]
    assert rows("select max(_dlt_load_id) from raw_football_api.teams") != first


@pytest.mark.one_target  # the HTTP client's wait and retry; loads on each target are tested above
def test_rate_limit_waits_for_the_counter_reset_then_retries(data_dir, replay_api):
    replay_api.fail(TEAMS_2002, Fault(429, headers={"X-RequestCounter-Reset": "1"}))
    started = time.monotonic()
    load(replay_api, competitions=("BL1",))
    assert time.monotonic() - started >= 1.0
    assert replay_api.statuses(TEAMS_2002) == [429, 200]
    assert count("teams") == 18


@pytest.mark.one_target  # fails in the HTTP client, before any load
def test_a_429_storm_ends_in_a_clear_error_within_bounds(data_dir, replay_api):
    storm = [Fault(429, headers={"X-RequestCounter-Reset": "3600"}) for _ in range(10)]
    replay_api.fail(TEAMS_2002, *storm)
    policy = RetryPolicy(rate_limit_retries=2, max_rate_limit_wait=0.1, max_attempts=1)
    started = time.monotonic()
    with pytest.raises(PipelineStepFailed) as failure:
        load(replay_api, competitions=("BL1",), policy=policy)
    assert time.monotonic() - started < 30
    assert "still rate limited (HTTP 429) after 2 waits" in str(failure.value)
    assert TEAMS_2002 in str(failure.value)
    assert replay_api.statuses(TEAMS_2002) == [429, 429, 429]


def test_a_competition_outside_the_plan_is_skipped_and_recorded(data_dir, replay_api):
    replay_api.fail(TEAMS_2013, Fault(403, b'{"message": "The resource you are looking for is restricted."}'))
    load(replay_api)
    assert count("competition_teams", "competition_id = 2013") == 0
    assert count("competition_teams", "competition_id = 2002") == 18
    assert count("skipped_requests", "status = 403 and url like '%/2013/teams%' and reason like '%restricted%'") == 1


@pytest.mark.one_target  # the HTTP client's retries; loads on each target are tested above
def test_server_errors_are_retried_with_backoff(data_dir, replay_api):
    replay_api.fail(MATCHES_BL1, Fault(503), Fault(502))
    load(replay_api, competitions=("BL1",))
    assert replay_api.statuses(MATCHES_BL1) == [503, 502, 200]
    assert count("matches") == 306


def test_persistent_server_errors_fail_naming_the_url(data_dir, replay_api):
    replay_api.fail(MATCHES_BL1, *[Fault(500) for _ in range(5)])
    with pytest.raises(PipelineStepFailed) as failure:
        load(replay_api, competitions=("BL1",))
    assert f"{MATCHES_BL1} failed with HTTP 500" in str(failure.value)
    assert replay_api.statuses(MATCHES_BL1) == [500, 500, 500]  # FAST allows 3 attempts
    assert "matches" not in tables()


@pytest.mark.one_target  # fails in the HTTP client, before any load
def test_timeouts_are_retried_then_fail_naming_the_url(data_dir, replay_api):
    replay_api.fail(TEAMS_2002, *[Fault(200, delay=1.0) for _ in range(2)])
    policy = RetryPolicy(max_attempts=2, backoff_factor=0.01, timeout=0.3)
    with pytest.raises(PipelineStepFailed) as failure:
        load(replay_api, competitions=("BL1",), policy=policy)
    assert f"GET {replay_api.base_url.removesuffix('/v4')}{TEAMS_2002} failed after 2 attempts" in str(failure.value)


def test_an_empty_teams_list_loads_zero_rows(data_dir, replay_api):
    body = recorded("v4_competitions_2002_teams_2022-09-12.json")
    replay_api.routes[TEAMS_2002] = json.dumps({**body, "count": 0, "teams": []}).encode()
    load(replay_api, competitions=("BL1",))
    assert "competition_teams" not in tables() or count("competition_teams") == 0
    assert count("matches") == 306


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"matches": [{"id": 1, "status": "FINI', "returned a body that is not JSON"),
        (b"<html><body>Bad Gateway</body></html>", "returned a body that is not JSON"),
        (b'[{"id": 1}]', "JSON whose root is a list"),
    ],
)
def test_malformed_responses_fail_clearly_and_commit_nothing(data_dir, replay_api, body, message):
    replay_api.routes[MATCHES_BL1] = body
    with pytest.raises(PipelineStepFailed) as failure:
        load(replay_api, competitions=("BL1",))
    assert message in str(failure.value) and MATCHES_BL1 in str(failure.value)
    assert tables() == set()  # teams and competitions were extracted too, yet nothing was loaded


@pytest.mark.one_target  # refused before any request or load
def test_live_mode_without_a_token_fails_before_any_request(data_dir, replay_api):
    with pytest.raises(FootballApiError, match="no API token"):
        load(replay_api, token=None)
    assert replay_api.log == []


def test_the_token_is_sent_as_a_header_and_never_written(data_dir, replay_api):
    load(replay_api)
    assert {token for _, _, token in replay_api.log} == {TOKEN}
    assert all(TOKEN not in path for path, _, _ in replay_api.log)
    written = [path for path in data_dir.rglob("*") if path.is_file()]
    assert any("landing" in str(path) for path in written)
    for path in written:
        assert TOKEN.encode() not in path.read_bytes(), path
    # The warehouse through SQL too: Postgres keeps it outside the data dir, and DuckDB compresses
    # strings in its file (dictionary, FSST), so a byte scan of warehouse.duckdb can miss them.
    assert columns_containing(TOKEN) == []


def columns_containing(needle: str) -> list[str]:
    """Every column of every table in the warehouse whose text (any type, cast) contains `needle`."""
    columns = rows(
        "select c.table_schema, c.table_name, c.column_name from information_schema.columns c"
        " join information_schema.tables t on t.table_schema = c.table_schema and t.table_name = c.table_name"
        " where t.table_type = 'BASE TABLE' and c.table_schema not in ('information_schema', 'pg_catalog')"
        " order by 1, 2, c.ordinal_position"
    )
    assert any(table == "matches" for _, table, _ in columns)  # the scan does see the loaded tables
    by_table: dict[tuple[str, str], list[str]] = {}
    for schema, table, column in columns:
        by_table.setdefault((schema, table), []).append(column)
    found = []
    for (schema, table), names in by_table.items():
        counts = ", ".join(f'count(*) filter (where cast("{name}" as varchar) like %s)' for name in names)
        hits = rows(f'select {counts} from "{schema}"."{table}"', [f"%{needle}%"] * len(names))[0]
        found += [f"{schema}.{table}.{name}" for name, hit in zip(names, hits, strict=True) if hit]
    return found


@pytest.mark.one_target  # refused before any load
def test_unknown_competition_lists_what_is_available(data_dir, replay_api):
    with pytest.raises(FootballApiError, match=r"unknown competition\(s\) XYZ; available: BL1, BSA, CL"):
        load(replay_api, competitions=("BL1", "XYZ"))


def test_competitions_resolve_by_code_or_id():
    available = [{"id": 2021, "code": "PL"}, {"id": 2002, "code": "BL1"}, {"id": 2147, "code": None}]
    assert [c["id"] for c in resolve_competitions(available, ["pl", "2002", "2147"])] == [2021, 2002, 2147]


def test_throttle_keeps_to_the_call_budget():
    now = [0.0]
    slept = []

    def sleep(seconds):
        slept.append(seconds)
        now[0] += seconds

    throttle = Throttle(10, 60.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(10):
        assert throttle.wait() == 0.0
        now[0] += 1.0
    assert throttle.wait() == pytest.approx(50.0)  # the first call leaves the window at t=60
    assert slept == [pytest.approx(50.0)]
    assert Throttle(0).wait() == 0.0


def test_recorded_files_are_addressed_like_the_api(tmp_path):
    assert file_for_url("file:///base/v4/competitions/2002/teams?season=2022") == Path(
        "/base/v4/competitions/2002/teams__season=2022.json"
    )
    client = ApiClient(str(tmp_path), calls_per_minute=10)
    assert not client.is_live and client.url("competitions").startswith("file://")


@pytest.mark.one_target  # about logs, not the warehouse
def test_the_token_never_reaches_the_logs_even_when_a_request_fails(data_dir, replay_api):
    replay_api.fail(TEAMS_2002, *[Fault(403, body=b'{"message": "restricted resource"}')])
    env = {**os.environ, "SOURCES__FOOTBALL_API__API_TOKEN": TOKEN, "RUNTIME__LOG_LEVEL": "DEBUG"}
    ok = subprocess.run(
        [sys.executable, "-m", "loaders", "football-api", "--base-url", replay_api.base_url, "--competitions", "BL1"]
        + ["--season", "2022", "--calls-per-minute", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "403" in ok.stderr  # the refusal is logged, with its URL
    replay_api.fail(MATCHES_BL1, *[Fault(500)] * 10)
    failed = subprocess.run(
        [sys.executable, "-m", "loaders", "football-api", "--base-url", replay_api.base_url, "--competitions", "BL1"]
        + ["--season", "2022", "--calls-per-minute", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert failed.returncode != 0 and "500" in failed.stderr
    for output in (ok.stdout, ok.stderr, failed.stdout, failed.stderr):
        assert TOKEN not in output
