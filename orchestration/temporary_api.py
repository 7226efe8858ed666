"""Prefect's temporary API for a run with no PREFECT_API_URL (`make run`, `make promote`), with its
own log file.

Prefect starts that server by itself (a subprocess on a SQLite database in PREFECT_HOME) and lets it
log to the run's console. On SQLite its writers conflict on a busy machine: a transaction that read
before it writes fails at once with `database is locked`. Its services retry what failed (the
task-run recorder puts the events back in its queue) but log each failure with a traceback, which
landed in the middle of the run's output. Started here instead, the same server logs to
PREFECT_HOME/temporary-api.log, and the run ends with one line naming what it logged there.

It also keeps its concurrency leases on disk (orchestration/concurrency.py): it runs no
repossessor, and a run killed in its warehouse turn would otherwise hold the turn for good.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from prefect.settings import PREFECT_HOME, PREFECT_LOGGING_SETTINGS_PATH, get_current_settings, temporary_settings

LOGGING_CONFIG = Path(__file__).with_name("temporary_api_logging.yml")
LOG_FILE_NAME = "temporary-api.log"
DRAIN_TIMEOUT = 60
# A record's first line, as temporary_api_logging.yml formats it: "<time> | <LEVEL> | <logger> - <message>".
PROBLEM = re.compile(r"^\S+ \S+ \| (WARNING|ERROR|CRITICAL)\s* \| \S+ - (.*)$", re.MULTILINE)
NOTE = "note: Prefect's temporary API logged"

if TYPE_CHECKING:
    from prefect.server.api.server import SubprocessASGIServer


def needed() -> bool:
    """Whether Prefect would start its temporary API: no API URL is configured."""
    return get_current_settings().api.url is None


def log_file() -> Path:
    return PREFECT_HOME.value() / LOG_FILE_NAME


@contextmanager
def when_needed() -> Iterator[bool]:
    """When no API URL is configured: Prefect's temporary API server, started before the run asks
    for it (Prefect's clients then use this one) with its logs in PREFECT_HOME/temporary-api.log,
    and stopped on exit, after which one line on stderr names what it logged as warnings or errors
    meanwhile (its final flush of recorded events happens as it stops). Yields whether it started
    one."""
    if not needed():
        yield False
        return
    # Imported here: the server's modules take seconds to import, and most runs have an API.
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.server.api.server import SubprocessASGIServer

    from orchestration.concurrency import local_server

    log = log_file()
    log.parent.mkdir(parents=True, exist_ok=True)
    start = log_end(log)
    try:
        with local_server(
            lambda: started_logging_to_file(SubprocessASGIServer()), SubprocessASGIServer.stop, runs_repossessor=False
        ):
            yield True
            # What the run queued for the API is sent first: a client sending after the stop would
            # start another temporary server.
            EventsWorker.drain_all(timeout=DRAIN_TIMEOUT)
            APILogWorker.drain_all(timeout=DRAIN_TIMEOUT)
    finally:
        if problems := problems_logged(log, start):
            sys.stdout.flush()  # after the run's own output, when both go to one file
            print(describe_problems(problems), file=sys.stderr)


def started_logging_to_file(server: SubprocessASGIServer) -> SubprocessASGIServer:
    """The server started with its logs in temporary-api.log (its environment is built from the
    current settings when it starts); stopped again if it fails to start."""
    try:
        with temporary_settings({PREFECT_LOGGING_SETTINGS_PATH: LOGGING_CONFIG}):
            server.start()
    except BaseException:
        server.stop()
        raise
    return server


def log_end(log: Path) -> int:
    """Where the next record will start: the server appends to its log."""
    return log.stat().st_size if log.exists() else 0


def logged_since(log: Path, start: int = 0) -> str:
    """The log's text after byte `start`."""
    if not log.exists():
        return ""
    with log.open("rb") as file:
        file.seek(start)
        return file.read().decode("utf-8", errors="replace")


def problems_logged(log: Path, start: int = 0) -> list[str]:
    """The first line of each warning or error record in the log after byte `start`."""
    return [f"{level}: {message}" for level, message in PROBLEM.findall(logged_since(log, start))]


def describe_problems(problems: list[str]) -> str:
    """One line for the end of a run: how many warnings and errors the temporary API logged, the
    first of them, and where the rest are."""
    records = f"{len(problems)} warning or error record{'s' if len(problems) != 1 else ''}"
    return f"{NOTE} {records} (the first: {problems[0]}); all in {log_file()}"
