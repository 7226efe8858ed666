"""The landing zone: raw bytes exactly as fetched, content-addressed and never rewritten.

It lives in ELT_LANDING_DIR: a local folder (default landing/ in the data dir) or object storage.
"""

from __future__ import annotations

import hashlib

from core import storage
from core.settings import landing_location


def sha256_hex(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def archive(raw: bytes, *folders: str, suffix: str) -> str:
    """Write `raw` to <landing>/<folders>/<sha256><suffix> once; later calls return the same
    location. A crash never leaves a partial file under the final name (storage.write_once)."""
    location = storage.join(landing_location(), *folders, f"{sha256_hex(raw)}{suffix}")
    if not storage.exists(location):
        storage.write_once(location, raw)
    return location
