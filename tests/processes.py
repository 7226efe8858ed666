"""Starting a job in its own process group and SIGKILLing the whole group (JVM included) at a point."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable


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
