"""HTTP plumbing shared by the API loaders: a client-side rate limit and a file:// transport.

The file:// transport lets the offline sample be read through the very same requests session
as the live API, so only the base URL differs between the two.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlparse

from requests import PreparedRequest, Response
from requests.adapters import BaseAdapter


class Throttle:
    """At most `calls` calls in any window of `period` seconds (calls <= 0: no limit)."""

    def __init__(
        self,
        calls: int,
        period: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.calls, self.period = calls, period
        self._clock, self._sleep = clock, sleep
        self._recent: deque[float] = deque()

    def wait(self) -> float:
        """Block until one more call is allowed; returns the seconds waited."""
        if self.calls <= 0:
            return 0.0
        now = self._clock()
        while self._recent and now - self._recent[0] >= self.period:
            self._recent.popleft()
        waited = 0.0
        if len(self._recent) >= self.calls:
            waited = self.period - (now - self._recent[0])
            self._sleep(waited)
            self._recent.popleft()
        self._recent.append(now + waited)
        return waited


def file_for_url(url: str) -> Path:
    """`file:///base/competitions/2002/teams?season=2022` -> /base/competitions/2002/teams__season=2022.json"""
    parts = urlparse(url)
    path = unquote(parts.path).rstrip("/")
    suffix = "".join(f"__{key}={value}" for key, value in sorted(parse_qsl(parts.query)))
    return Path(f"{path}{suffix}.json")


class FileAdapter(BaseAdapter):
    """Answers GET file://... requests from files laid out by `file_for_url` (200 or 404)."""

    def send(self, request: PreparedRequest, **kwargs) -> Response:
        response = Response()
        response.url = request.url
        response.request = request
        path = file_for_url(request.url)
        if path.is_file():
            response.status_code = 200
            response._content = path.read_bytes()
            response.headers["Content-Type"] = "application/json"
        else:
            response.status_code = 404
            response._content = f"no sample file {path}".encode()
        return response

    def close(self) -> None:
        pass
