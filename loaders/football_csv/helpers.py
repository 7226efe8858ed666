"""Fetching football-data.co.uk files (conditional GET over HTTP, or a local mirror) and
recording what became of each one in the source's resource state."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import dlt
from dlt.sources.helpers import requests

from core.settings import project_path
from loaders.football_csv.parsing import FootballCsvError, ParsedFile, parse_season_file
from loaders.football_csv.settings import MAX_FILE_BYTES
from loaders.landing import archive, sha256_hex
from loaders.pipelines import source_state

log = logging.getLogger(__name__)

# What a run can find for a requested file, and the key each has in `last_run`'s summary.
OUTCOME_KEYS = {"loaded": "loaded", "unchanged": "unchanged", "not found": "missing", "failed": "failed"}


class FileTooLarge(FootballCsvError):
    """Refused before it is read whole: memory stays bounded whatever a server sends."""


@dataclass
class Fetched:
    raw: bytes
    etag: str | None = None
    last_modified: str | None = None
    not_modified: bool = False


@dataclass
class Checked:
    """What one run found for one requested file: an outcome of OUTCOME_KEYS, the parsed file
    when it is to be loaded, the reason when it failed."""

    outcome: str
    parsed: ParsedFile | None = None
    reason: str | None = None


def file_name(season: str, division: str) -> str:
    return f"{season}/{division}"


def file_location(base_url: str, season: str, division: str) -> str:
    return f"{base_url.rstrip('/')}/{season}/{division}.csv"


def is_http(location: str) -> bool:
    return urlparse(location).scheme in ("http", "https")


def _local_path(location: str) -> Path:
    return project_path(urlparse(location).path if location.startswith("file://") else location)


def fetch(location: str, previous: dict) -> Fetched | None:
    """The file's bytes, or None when it is missing (no such season/division).

    Over HTTP the previous ETag/Last-Modified make the request conditional; a 304 comes back
    as `not_modified` with no bytes.
    """
    if not is_http(location):
        path = _local_path(location)
        try:
            _refuse_if_too_large(location, path.stat().st_size)
            return Fetched(path.read_bytes())
        except FileNotFoundError:
            return None
    headers = {}
    if previous.get("etag"):
        headers["If-None-Match"] = previous["etag"]
    if previous.get("last_modified"):
        headers["If-Modified-Since"] = previous["last_modified"]
    try:
        response = requests.get(location, headers=headers, stream=True)
    except requests.HTTPError as error:
        if error.response is not None and error.response.status_code == 404:
            return None
        raise FootballCsvError(f"{location}: {error}") from error
    with response:
        if response.status_code == 304:
            return Fetched(b"", previous.get("etag"), previous.get("last_modified"), not_modified=True)
        _refuse_if_too_large(location, int(response.headers.get("Content-Length") or 0))
        body = bytearray()
        for chunk in response.iter_content(1 << 20):
            body += chunk
            _refuse_if_too_large(location, len(body))
    return Fetched(bytes(body), response.headers.get("ETag"), response.headers.get("Last-Modified"))


def _refuse_if_too_large(location: str, size: int) -> None:
    if size > MAX_FILE_BYTES:
        raise FileTooLarge(
            f"{location} is larger than {MAX_FILE_BYTES >> 20} MiB: not a football-data.co.uk season file"
        )


def fetch_and_parse(season: str, division: str, base_url: str, previous: dict) -> Checked:
    """The file parsed when it changed since the version `previous` describes (sha256, etag,
    last_modified of the last load); otherwise why not."""
    name = file_name(season, division)
    location = file_location(base_url, season, division)
    try:
        fetched = fetch(location, previous)
    except FileTooLarge as error:
        log.error("football_csv: %s", error)
        return Checked("failed", reason=str(error))
    if fetched is None:
        log.warning("football_csv: %s not found at %s; skipped", name, location)
        return Checked("not found")
    if fetched.not_modified or sha256_hex(fetched.raw) == previous.get("sha256"):
        return Checked("unchanged")
    landing_path = archive(fetched.raw, "football_csv", season, division, suffix=".csv")
    try:
        parsed = parse_season_file(fetched.raw, season, division, location)
    except FootballCsvError as error:
        log.error("football_csv: %s", error)
        return Checked("failed", reason=str(error))
    parsed.landing_path = landing_path
    parsed.etag, parsed.last_modified = fetched.etag, fetched.last_modified
    return Checked("loaded", parsed)


def remember(entry: dict, checked: Checked) -> None:
    """Update a file's entry in the resource state: the validators of the version last loaded
    (kept when a later version fails or goes missing, so the next request stays conditional on
    them) and what this run found."""
    if checked.parsed is not None:
        parsed = checked.parsed
        entry.update(sha256=parsed.sha256, etag=parsed.etag, last_modified=parsed.last_modified)
    entry["outcome"] = checked.outcome
    if checked.reason:
        entry["reason"] = checked.reason
    else:
        entry.pop("reason", None)


def last_run(load: dlt.Pipeline) -> dict:
    """What the pipeline's last run of the source did with each file it was asked for, read
    back from the resource state: {"seasons": [...], "loaded": [...], "unchanged": [...],
    "missing": [...], "failed": {name: reason}} (`current` / `previous` resolved)."""
    state = source_state(load, "football_csv").get("resources", {}).get("season_files", {})
    request = state.get("last_request", {"seasons": [], "divisions": []})
    files = state.get("files", {})
    summary: dict = {"seasons": list(request["seasons"]), "loaded": [], "unchanged": [], "missing": [], "failed": {}}
    for season in request["seasons"]:
        for division in request["divisions"]:
            name = file_name(season, division)
            entry = files.get(name, {})
            key = OUTCOME_KEYS.get(entry.get("outcome", "failed"), "failed")
            if key == "failed":
                summary["failed"][name] = entry.get("reason", "no outcome recorded")
            else:
                summary[key].append(name)
    return summary
