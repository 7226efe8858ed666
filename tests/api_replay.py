"""A local football-data.org: replays recorded v4 responses on 127.0.0.1, with scripted faults."""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from .conftest import real_data

TOKEN = "test-token-3f9a1c"


def recorded_routes(competitions_file: str = "v4_competitions_2022-09-12.json") -> dict[str, Path]:
    """Request path (with query) -> recorded body, for every shared football_api sample."""
    folder = real_data("football_api")
    return {
        "/v4/competitions": folder / competitions_file,
        "/v4/competitions/2002/teams?season=2022": folder / "v4_competitions_2002_teams_2022-09-12.json",
        "/v4/competitions/2013/teams?season=2022": folder / "v4_competitions_2013_teams_2022-09-12.json",
        "/v4/competitions/BL1/matches?season=2022": folder / "v4_competitions_2002_matches_2022-09-12.json",
    }


@dataclass
class Fault:
    status: int
    body: bytes = b'{"message": "scripted fault"}'
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class ReplayApi:
    routes: dict[str, Path | bytes]
    faults: dict[str, deque[Fault]] = field(default_factory=lambda: defaultdict(deque))
    log: list[tuple[str, int, str | None]] = field(default_factory=list)
    base_url: str = ""

    def fail(self, path: str, *faults: Fault) -> None:
        """The next requests for `path` get these answers, in order, before the recorded one."""
        self.faults[path].extend(faults)

    def statuses(self, path: str) -> list[int]:
        return [status for seen, status, _ in self.log if seen == path]


def start(api: ReplayApi) -> tuple[ThreadingHTTPServer, threading.Thread]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            token = self.headers.get("X-Auth-Token")
            if api.faults[self.path]:
                fault = api.faults[self.path].popleft()
                time.sleep(fault.delay)
                return self._reply(fault.status, fault.body, fault.headers, token)
            if token != TOKEN:
                return self._reply(400, b'{"message": "Your API token is invalid."}', {}, token)
            body = api.routes.get(self.path)
            if body is None:
                return self._reply(404, b'{"message": "The resource you are looking for does not exist."}', {}, token)
            return self._reply(200, body if isinstance(body, bytes) else body.read_bytes(), {}, token)

        def _reply(self, status, body, headers, token):
            api.log.append((self.path, status, token))
            try:
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up waiting (timeout tests)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    api.base_url = f"http://127.0.0.1:{server.server_port}/v4"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread
