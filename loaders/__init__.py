"""Thin dlt loaders: each source lands raw data in a raw_* schema of the warehouse."""

import os
from pathlib import Path

# dlt finds .dlt/config.toml relative to its project dir; pin it to this repository so the
# loaders read the same configuration whatever the caller's working directory is.
os.environ.setdefault("DLT_PROJECT_DIR", str(Path(__file__).resolve().parent.parent))
