"""The vehicle file lifecycle (DESIGN §2, §9):

    incoming/ ──discover──▶ processing/<type>/ ──lake job──▶ processed/<type>/
                      ├──▶ pending/<type>/   (type registered but inactive)
                      └──▶ failed/<type>/    (+ <file>.error.json: why)

Every move is an atomic rename within the data dir, so a file is always in exactly one place.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from core.settings import PROJECT_ROOT, data_dir
from lake.registry import DEFAULT_MAX_FILE_BYTES, IDENTIFIER, Registry, RegistryError, infer_file_type

log = logging.getLogger(__name__)

FILE_NAME = re.compile(r"(?P<file_type>.+)_(?P<stamp>\d{14})\.json")
UNRECOGNISED = "_unrecognised"
SAMPLE_DIR = PROJECT_ROOT / "data" / "sample" / "vehicles"
STATES = ("incoming", "pending", "processing", "processed", "failed")


def state_dir(state: str, file_type: str | None = None) -> Path:
    base = data_dir() / state
    return base / file_type if file_type else base


def file_type_of(name: str) -> str:
    """The type part of `{file_type}_{YYYYMMDDHHMMSS}.json`, validated as a safe identifier."""
    match = FILE_NAME.fullmatch(name)
    if not match:
        raise RegistryError(f"file name {name!r} does not match {{file_type}}_{{YYYYMMDDHHMMSS}}.json")
    file_type = match["file_type"]
    if not IDENTIFIER.fullmatch(file_type):
        raise RegistryError(f"file type {file_type!r} in {name!r} is not a safe identifier")
    return file_type


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def move(path: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / path.name
    os.replace(path, target)
    return target


def fail(path: Path, file_type: str, reason: str, detail: str = "") -> Path:
    """Park a file in failed/<type>/ beside a machine-readable <file>.error.json."""
    folder = state_dir("failed", file_type)
    folder.mkdir(parents=True, exist_ok=True)
    error = {
        "file": path.name,
        "file_type": file_type,
        "reason": reason,
        "detail": detail,
        "failed_at": datetime.now(UTC).isoformat(),
    }
    (folder / f"{path.name}.error.json").write_text(json.dumps(error, indent=2), encoding="utf-8")
    log.warning("vehicles: %s -> failed/%s: %s %s", path.name, file_type, reason, detail)
    return move(path, folder)


@dataclass
class DiscoveryReport:
    processing: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    registered: list[str] = field(default_factory=list)


def _duplicate_of_processed(path: Path, file_type: str) -> str | None:
    for state in ("processing", "processed"):
        earlier = state_dir(state, file_type) / path.name
        if earlier.exists():
            same = sha256_of(earlier) == sha256_of(path)
            return f"{'same' if same else 'different'} content already in {state}/{file_type}/"
    return None


def discover(registry: Registry | None = None) -> DiscoveryReport:
    """Sort incoming/ by file type and release pending files of types activated since."""
    registry = registry or Registry()
    registry.sync_seed()
    types = {item.file_type: item for item in registry.list()}
    report = DiscoveryReport()

    for file_type, entry in types.items():
        pending = state_dir("pending", file_type)
        if entry.is_active and pending.is_dir():
            for path in sorted(pending.glob("*.json")):
                move(path, state_dir("processing", file_type))
                report.processing.append(path.name)

    incoming = state_dir("incoming")
    incoming.mkdir(parents=True, exist_ok=True)
    for path in sorted(p for p in incoming.iterdir() if p.is_file()):
        try:
            file_type = file_type_of(path.name)
        except RegistryError as error:
            fail(path, UNRECOGNISED, "unrecognised file name", str(error))
            report.failed.append(path.name)
            continue
        if file_type not in types:
            try:
                types[file_type] = registry.register(_infer(path, file_type), origin="inferred")
            except RegistryError as error:
                fail(path, file_type, "cannot infer a schema for a new file type", str(error))
                report.failed.append(path.name)
                continue
            report.registered.append(file_type)
            log.warning("vehicles: new file type %s registered inactive; review and activate it", file_type)
        if not types[file_type].is_active:
            move(path, state_dir("pending", file_type))
            report.pending.append(path.name)
            continue
        duplicate = _duplicate_of_processed(path, file_type)
        if duplicate:
            fail(path, file_type, "duplicate delivery", duplicate)
            report.failed.append(path.name)
            continue
        move(path, state_dir("processing", file_type))
        report.processing.append(path.name)
    return report


def _infer(path: Path, file_type: str):
    # Refused before it is read, as the lake job refuses a known type's file: the type it
    # would register gets DEFAULT_MAX_FILE_BYTES, so the job would never read this file anyway,
    # and a prefix of one JSON document is not a document json can parse.
    if (size := path.stat().st_size) > (limit := DEFAULT_MAX_FILE_BYTES):
        raise RegistryError(f"{path.name} is {size} bytes, larger than max_file_bytes={limit}; not read")
    try:
        document = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RegistryError(f"{path.name} is not JSON: {error}") from None
    except RecursionError:
        raise RegistryError(f"{path.name} is nested too deeply to infer a schema from") from None
    return infer_file_type(file_type, document)


def stage_sample(source: Path = SAMPLE_DIR) -> list[str]:
    """Copy the bundled sample files into incoming/ unless they are already somewhere in the
    lifecycle, so `make run` can be repeated without duplicate deliveries."""
    staged = []
    for path in sorted(source.glob("*.json")):
        if any(next((data_dir() / state).rglob(path.name), None) for state in STATES):
            continue
        state_dir("incoming").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, state_dir("incoming") / path.name)
        staged.append(path.name)
    return staged
