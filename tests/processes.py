"""Starting a job in its own process group and SIGKILLing the whole group (JVM included) at a point."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def start(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        command, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )


def kill_when(job: subprocess.Popen, condition: Callable[[], bool], timeout: float = 240) -> bool:
    """SIGKILL the job's process group as soon as `condition()` holds; False if it ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if job.poll() is not None:
            return False
        if condition():
            os.killpg(job.pid, signal.SIGKILL)
            job.wait(timeout=30)
            return True
        time.sleep(0.005)
    os.killpg(job.pid, signal.SIGKILL)
    raise AssertionError("the job neither reached the kill point nor ended")


def any_file(folder: Path, pattern: str = "*") -> Callable[[], bool]:
    """A kill condition: some file under `folder` matches `pattern`. The job renames the folders
    being walked (dlt moves a package from stage to stage), so one that vanishes mid-walk means
    "not there" for this poll rather than an error."""

    def found() -> bool:
        try:
            return next(folder.rglob(pattern), None) is not None
        except FileNotFoundError:
            return False

    return found
