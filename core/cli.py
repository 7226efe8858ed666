"""How the command-line entry points end."""

from __future__ import annotations

import gc
import sys
from typing import NoReturn


def exit_promptly(code: int | str | None) -> NoReturn:
    """sys.exit(code) without the interpreter's shutdown walking every object the command made.

    At exit CPython collects garbage over all tracked objects more than once; with dbt, dlt and
    Prefect imported that took 1.8 s after a 35 s elt run (620k objects) and 0.35 s after the
    vehicle path's 1.3 s (175k), measured 2026-12-01. Frozen first (gc.freeze), they are left
    out of those collections. atexit handlers still run and output is still flushed; objects
    still alive are freed as their modules are cleared, and only reference cycles among them
    are left to the operating system, whose finalizers Python does not promise to run at exit
    anyway. The commands close their connections, catalogs and servers before they return."""
    gc.freeze()
    sys.exit(code)
