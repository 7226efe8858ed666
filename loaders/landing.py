"""The landing zone: raw bytes exactly as fetched, content-addressed and never rewritten."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from loaders.settings import landing_dir


def sha256_hex(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def archive(raw: bytes, *folders: str, suffix: str) -> Path:
    """Write `raw` to landing/<folders>/<sha256><suffix> once; later calls return the same path.

    The write goes through a temporary file and an atomic rename, so a crash never leaves a
    partial file under the final name.
    """
    path = landing_dir().joinpath(*folders, f"{sha256_hex(raw)}{suffix}")
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    with open(partial, "wb") as handle:
        handle.write(raw)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)
    return path
