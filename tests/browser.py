"""Pages as people see them: headless Chromium (Debian's package, installed with apt when missing)
renders a page to its DOM after scripts ran, and to a screenshot."""

from __future__ import annotations

import functools
import html
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM_PACKAGES = ("chromium", "chromium-driver")


def chromium() -> str:
    """Debian's Chromium; installed with apt when missing (the tests run as root in CI)."""
    found = shutil.which("chromium")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("chromium is not installed and this user cannot install it (apt-get install chromium)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], env=env, check=True, capture_output=True, timeout=600)
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *CHROMIUM_PACKAGES]
    subprocess.run(install, env=env, check=True, capture_output=True, timeout=900)
    return shutil.which("chromium") or pytest.fail("apt-get installed chromium but it is not on PATH")


@functools.cache
def without_network() -> list[str]:
    """A command prefix that runs a program in a network namespace of its own (no interface but a
    loopback that is down); empty where this user cannot make one."""
    prefix = ["unshare", "--net"]
    if not shutil.which("unshare"):
        return []
    trial = subprocess.run([*prefix, "true"], capture_output=True, timeout=30)
    return prefix if trial.returncode == 0 else []


def render(page: str, screenshot: Path | None = None, offline: bool = False) -> str:
    """The page's DOM after its scripts ran, from headless Chromium; optionally a screenshot.
    offline: Chromium runs without any network, where the machine allows it (without_network)."""
    common = [chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
    common += ["--hide-scrollbars", "--window-size=1400,1000", "--virtual-time-budget=15000"]
    if offline:
        common = [*without_network(), *common]
    if screenshot:
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([*common, f"--screenshot={screenshot}", page], check=True, capture_output=True, timeout=120)
    return subprocess.run([*common, "--dump-dom", page], check=True, capture_output=True, text=True, timeout=120).stdout


def visible_text(dom: str) -> str:
    """What a reader can read: the DOM without scripts, styles and tags, whitespace collapsed."""
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S | re.I)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", dom)).split())
