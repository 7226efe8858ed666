"""Run mode (DESIGN §2, §8): `sample` reads the bundled inputs offline, `live` the real sources.

The mode is asked for explicitly (a flow parameter, `--live` / `--base-url`, ELT_MODE), else it
is the one the data dir remembers, else `sample`. A data dir remembers the mode of its first
load in a marker file and refuses the other one, so the sample never mixes with real data.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from core.settings import PROJECT_ROOT, data_dir, project_path
from lake.files import SAMPLE_DIR, STATES

MODES = ("sample", "live")
MODE_VARIABLE = "ELT_MODE"
MARKER_NAME = ".elt-mode"
SAMPLE_SOURCES = PROJECT_ROOT / "data" / "sample" / "sources.toml"


class ModeError(RuntimeError):
    """A run whose mode is unknown or differs from the data dir's; the message says what to do."""


def marker_path(root: Path | None = None) -> Path:
    return (root or data_dir()) / MARKER_NAME


def remembered_mode(root: Path | None = None) -> str | None:
    """The mode that first loaded the data dir; None for a fresh one."""
    marker = marker_path(root)
    return marker.read_text().strip() if marker.is_file() else None


def filled_before_modes(root: Path | None = None) -> bool:
    """No marker, but the bundled sample's vehicle files went through the data dir: it was
    filled by a version that staged the sample on every run and kept no marker."""
    root = root or data_dir()
    if marker_path(root).exists():
        return False
    # Before the marker existed, every `make run` and `make load` copied these into incoming/.
    sample_names = {path.name for path in SAMPLE_DIR.glob("*.json")}
    return any(path.name in sample_names for state in STATES for path in (root / state).glob("*/*.json"))


def requested_mode(explicit: str | None = None) -> str | None:
    """What the caller asked for: an explicit choice, else ELT_MODE; they must agree."""
    from_env = os.environ.get(MODE_VARIABLE, "").strip() or None
    for value, origin in ((explicit, "mode"), (from_env, MODE_VARIABLE)):
        if value is not None and value not in MODES:
            raise ModeError(f"{origin}={value!r} is not one of {', '.join(MODES)}")
    if explicit and from_env and explicit != from_env:
        raise ModeError(f"this run asks for {explicit} mode but {MODE_VARIABLE}={from_env}: choose one")
    return explicit or from_env


def run_mode(explicit: str | None = None) -> str:
    """The mode of this run, refused when the data dir was filled in the other mode."""
    remembered = remembered_mode()
    mode = requested_mode(explicit) or remembered or "sample"
    if remembered is None and mode == "live" and filled_before_modes():
        raise ModeError(
            f"data dir {data_dir()} holds the bundled sample's files from before run modes were recorded; "
            f"use another ELT_DATA_DIR for live data, `make reset` to empty it, or write 'live' into "
            f"{marker_path()} if it holds live data only"
        )
    if remembered and mode != remembered:
        raise ModeError(
            f"data dir {data_dir()} holds {remembered} data and this run is in {mode} mode; "
            f"use another ELT_DATA_DIR for {mode} data, or `make reset` to empty this one"
        )
    return mode


def remember_mode(mode: str) -> None:
    """Called before a run writes anything into the data dir; the first load's mode stays."""
    marker = marker_path()
    if not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"{mode}\n")


def describe_mode() -> str:
    """One line for `python -m loaders status` and the run summary."""
    remembered = remembered_mode()
    if remembered is None:
        return f"Mode: none yet (a fresh data dir; its first load remembers {MODE_VARIABLE}, default sample)"
    line = f"Mode: {remembered} (remembered in {marker_path()})"
    asked = os.environ.get(MODE_VARIABLE, "").strip()
    if asked and asked != remembered:
        line += f"; {MODE_VARIABLE}={asked} differs: loads are refused"
    return line


def sample_inputs(source: str) -> dict[str, Any]:
    """The bundled sample's fixed inputs for a source (data/sample/sources.toml)."""
    inputs = dict(tomllib.loads(SAMPLE_SOURCES.read_text())[source])
    inputs["base_url"] = str(project_path(inputs["base_url"]))
    return inputs


def source_options(source: str, mode: str, **chosen: Any) -> dict[str, Any]:
    """Arguments for a dlt source: what the caller chose, over (in sample mode) what the sample
    holds. In live mode the rest comes from .dlt/config.toml and SOURCES__* by dlt injection."""
    defaults = sample_inputs(source) if mode == "sample" else {}
    return {**defaults, **{name: value for name, value in chosen.items() if value not in (None, "", [])}}
