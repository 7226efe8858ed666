"""Identifiers that come from data or configuration (file types, table, field and schema names)
reach SQL only through `validate_identifier` (DESIGN §9)."""

from __future__ import annotations

import re

IDENTIFIER = re.compile(r"[a-z][a-z0-9_]{0,62}")


class RegistryError(ValueError):
    """A registry entry or request that cannot be accepted; the message says why."""


def validate_identifier(name: str, what: str) -> str:
    if not isinstance(name, str) or not IDENTIFIER.fullmatch(name):
        raise RegistryError(
            f"{what} {name!r} is not a safe identifier (lowercase letter, then letters, digits or _; max 63)"
        )
    return name
