"""dlt source for the football-data.org v4 API (DESIGN §6).

Endpoints: `/competitions`, `/competitions/{id}/teams?season=YYYY` and
`/competitions/{code}/matches?season=YYYY`, authenticated with the `X-Auth-Token` header. The
free tier allows 10 calls a minute (429 says when the counter resets in
`X-RequestCounter-Reset`) and answers 403 for competitions outside the plan. Every response is
archived under landing/ before it is parsed; the token is only ever sent as a header.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode, urlparse

import dlt
from dlt.sources.helpers.requests import Client
from requests import RequestException, Response

from core.settings import as_list, project_path
from loaders.http import FileAdapter, Throttle
from loaders.landing import archive, sha256_hex
from loaders.pipelines import source_state
from loaders.seasons import resolve_start_year
from loaders.secrets_provider import register_secret_manager

log = logging.getLogger(__name__)
register_secret_manager()  # the token: environment → .dlt/secrets.toml → the manager

LIVE_BASE_URL = "https://api.football-data.org/v4"
SKIPPABLE_STATUSES = {403: "not in the API plan", 404: "not found"}
RETRIED_STATUSES = (500, 502, 503, 504)


class FootballApiError(RuntimeError):
    """A request that cannot succeed; the message names the URL (never the token)."""


@dataclass(frozen=True)
class RetryPolicy:
    """Bounds for what the API's failure modes may cost a run."""

    max_attempts: int = 5  # per request, for 5xx and network errors
    backoff_factor: float = 1.0  # exponential: 1, 2, 4, ... seconds
    max_backoff: float = 30.0
    rate_limit_retries: int = 3  # 429s in a row before giving up
    max_rate_limit_wait: float = 65.0  # the free tier resets within a minute
    timeout: float = 30.0


@dataclass
class Skipped:
    url: str
    status: int
    reason: str


@dataclass
class ApiClient:
    """GETs JSON from the API or from a file:// mirror laid out like it."""

    base_url: str
    token: str | None = None
    calls_per_minute: int = 10
    policy: RetryPolicy = field(default_factory=RetryPolicy)

    def __post_init__(self) -> None:
        self.base_url = _resolve_base_url(self.base_url)
        if self.is_live and not self.token:
            raise FootballApiError(
                f"no API token for {self.base_url}: set SOURCES__FOOTBALL_API__API_TOKEN "
                "or api_token under [sources.football_api] in .dlt/secrets.toml"
            )
        self._session = Client(
            raise_for_status=False,
            status_codes=RETRIED_STATUSES,
            request_max_attempts=self.policy.max_attempts,
            request_backoff_factor=self.policy.backoff_factor,
            request_max_retry_delay=self.policy.max_backoff,
            request_timeout=self.policy.timeout,
            session_attrs={"headers": {"X-Auth-Token": self.token} if self.token else {}},
        ).session
        self._session.mount("file://", FileAdapter())
        self._throttle = Throttle(self.calls_per_minute if self.is_live else 0)
        self.content_sha256: dict[str, str] = {}

    @property
    def is_live(self) -> bool:
        return urlparse(self.base_url).scheme in ("http", "https")

    def url(self, path: str, params: dict[str, Any] | None = None) -> str:
        query = f"?{urlencode(params)}" if params else ""
        return f"{self.base_url}/{path.lstrip('/')}{query}"

    def get(self, path: str, params: dict[str, Any] | None = None) -> dict | Skipped:
        """The decoded JSON object, or Skipped for a 403/404 the run should go past."""
        url = self.url(path, params)
        response = self._send(url)
        if response.status_code in SKIPPABLE_STATUSES:
            reason = SKIPPABLE_STATUSES[response.status_code]
            log.warning("football_api: %s %s: %s; skipped", response.status_code, url, reason)
            self.content_sha256[url] = f"HTTP {response.status_code}"
            return Skipped(url, response.status_code, f"{reason}: {_excerpt(response)}")
        if response.status_code != 200:
            raise FootballApiError(f"GET {url} failed with HTTP {response.status_code}: {_excerpt(response)}")
        archive(response.content, "football_api", *_landing_folders(url), suffix=".json")
        self.content_sha256[url] = sha256_hex(response.content)
        return _decode_object(response.content, url)

    def is_unchanged(self, path: str, params: dict[str, Any] | None = None) -> bool:
        """True when the response (or the refusal) equals the one loaded last time, as remembered
        in the dlt state (committed with the load package): it is not loaded again."""
        url = self.url(path, params)
        loaded = dlt.current.source_state().setdefault("loaded_sha256", {})
        if loaded.get(url) == self.content_sha256[url]:
            return True
        loaded[url] = self.content_sha256[url]
        return False

    def _send(self, url: str) -> Response:
        for _ in range(self.policy.rate_limit_retries + 1):
            self._throttle.wait()
            try:
                response = self._session.get(url)
            except RequestException as error:
                raise FootballApiError(
                    f"GET {url} failed after {self.policy.max_attempts} attempts: {error}"
                ) from error
            if response.status_code != 429:
                return response
            wait = _rate_limit_wait(response, self.policy.max_rate_limit_wait)
            log.warning("football_api: 429 for %s; waiting %.0fs for the request counter", url, wait)
            time.sleep(wait)
        raise FootballApiError(f"GET {url} still rate limited (HTTP 429) after {self.policy.rate_limit_retries} waits")


def _resolve_base_url(base_url: str) -> str:
    base_url = base_url.rstrip("/")
    if "://" in base_url:
        return base_url
    return project_path(base_url).as_uri()


def _rate_limit_wait(response: Response, ceiling: float) -> float:
    try:
        seconds = float(response.headers.get("X-RequestCounter-Reset", ceiling))
    except ValueError:
        seconds = ceiling
    return max(0.0, min(seconds, ceiling))


def _excerpt(response: Response, limit: int = 200) -> str:
    return response.text[:limit].replace("\n", " ").strip()


def _landing_folders(url: str) -> list[str]:
    """competitions/2002/teams?season=2022 -> ['competitions', '2002', 'teams', 'season=2022']"""
    parts = urlparse(url)
    folders = [part for part in parts.path.split("/") if part and part != "v4"]
    return folders + ([parts.query.replace("&", "_")] if parts.query else [])


def _decode_object(raw: bytes, url: str) -> dict:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        start = raw[:60].decode("utf-8", "replace")
        raise FootballApiError(f"GET {url} returned a body that is not JSON ({error}): {start!r}") from None
    if not isinstance(body, dict):
        raise FootballApiError(f"GET {url} returned JSON whose root is a {type(body).__name__}, not an object")
    return body


def _field(body: dict, key: str, url: str) -> list:
    value = body.get(key)
    if not isinstance(value, list):
        raise FootballApiError(f"GET {url}: expected a list under {key!r}, got {type(value).__name__}")
    return value


# --- the dlt source --------------------------------------------------------------------------


def last_season(load: dlt.Pipeline) -> int | None:
    """The season (start year) the pipeline's last run of the source asked for, `current` /
    `previous` resolved, as its source state records it."""
    return source_state(load, "football_api").get("season")


def resolve_competitions(available: list[dict], wanted: Sequence[str]) -> list[dict]:
    """Competitions by code (PL) or id (2021); unknown ones are an error listing the choices."""
    by_key: dict[str, dict] = {}
    for competition in available:
        by_key[str(competition["id"])] = competition
        if competition.get("code"):
            by_key[competition["code"].upper()] = competition
    unknown = [key for key in wanted if key.upper() not in by_key]
    if unknown:
        choices = ", ".join(sorted(c["code"] for c in available if c.get("code")))
        raise FootballApiError(f"unknown competition(s) {', '.join(unknown)}; available: {choices}")
    return [by_key[key.upper()] for key in wanted]


@dlt.source(name="football_api")
def football_api(
    competitions: list[str] = dlt.config.value,
    season: str = dlt.config.value,
    base_url: str = LIVE_BASE_URL,
    api_token: str | None = dlt.secrets.value,
    calls_per_minute: int = 10,
    policy: RetryPolicy | None = None,
):
    """football-data.org competitions, and for the chosen ones their teams and matches in a season.

    Args:
        competitions: codes (PL, BL1) or ids (2021) of the competitions to load.
        season: the year the season starts in (2024 = 2024/25), or "current" / "previous".
        base_url: the live API, or a folder / file:// URL holding recorded responses.
        api_token: the X-Auth-Token; required for http(s) base URLs only.
        calls_per_minute: client-side rate limit for http(s) base URLs (0 = none).
        policy: retry and wait bounds.

    The season a run resolved to is kept in the source state; read it with `last_season(pipeline)`.
    """
    season_year = resolve_start_year(season)
    client = ApiClient(base_url, api_token, calls_per_minute, policy or RetryPolicy())
    listing = client.get("competitions")
    if isinstance(listing, Skipped):
        raise FootballApiError(f"{listing.url}: the competitions list is required ({listing.reason})")
    available = _field(listing, "competitions", client.url("competitions"))
    chosen = resolve_competitions(available, as_list(competitions))

    @dlt.resource(name="competitions", write_disposition="merge", primary_key="id")
    def all_competitions() -> Iterator[list[dict]]:
        """Every competition the token can see, with area and current season."""
        if not client.is_unchanged("competitions"):
            yield available

    @dlt.resource(selected=False)
    def season_teams() -> Iterator[tuple[dict, dict] | Skipped]:
        dlt.current.source_state()["season"] = season_year
        for competition in chosen:
            path, params = f"competitions/{competition['id']}/teams", {"season": season_year}
            body = client.get(path, params)
            if not client.is_unchanged(path, params):
                yield body if isinstance(body, Skipped) else (competition, body)

    @dlt.resource(selected=False)
    def season_matches() -> Iterator[dict | Skipped]:
        dlt.current.source_state()["season"] = season_year
        for competition in chosen:
            path, params = (
                f"competitions/{competition.get('code') or competition['id']}/matches",
                {"season": season_year},
            )
            body = client.get(path, params)
            if not client.is_unchanged(path, params):
                yield body

    @dlt.transformer(write_disposition="merge", primary_key="id")
    def teams(item: tuple[dict, dict] | Skipped) -> Iterator[list[dict]]:
        """Teams with their squad (child table teams__squad) and running competitions."""
        if not isinstance(item, Skipped):
            yield _field(item[1], "teams", "teams")

    @dlt.transformer(write_disposition="merge", primary_key=("competition_id", "team_id", "season"))
    def competition_teams(item: tuple[dict, dict] | Skipped) -> Iterator[list[dict]]:
        """Which team plays in which competition in which season (the season's start year)."""
        if not isinstance(item, Skipped):
            competition, body = item
            yield [
                {"competition_id": competition["id"], "team_id": team["id"], "season": season_year}
                for team in _field(body, "teams", "teams")
            ]

    @dlt.transformer(write_disposition="merge", primary_key="id")
    def matches(item: dict | Skipped) -> Iterator[list[dict]]:
        """Matches of each chosen competition in the season, scheduled and played."""
        if not isinstance(item, Skipped):
            yield [{**match, "season_year": season_year} for match in _field(item, "matches", "matches")]

    @dlt.transformer(table_name="skipped_requests", write_disposition="append")
    def skipped_requests(item: Any) -> Iterator[dict]:
        """Requests the API refused (403 outside the plan, 404), so a partial load is visible;
        recorded when first refused, not again on every run."""
        if isinstance(item, Skipped):
            yield {
                "url": item.url,
                "status": item.status,
                "reason": item.reason,
                "requested_at": datetime.now(UTC),
            }

    return (
        all_competitions,
        season_teams | teams,
        season_teams | competition_teams,
        season_teams | skipped_requests.with_name("skipped_team_requests"),
        season_matches | matches,
        season_matches | skipped_requests.with_name("skipped_match_requests"),
    )
