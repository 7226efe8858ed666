"""The requirements that the wheels in a wheelhouse declare for some Python 3.11 patch release
and that the wheelhouse lacks. pip resolves environment markers for the interpreter it runs on
only, and Debian bookworm's python3.11 is 3.11.2 while the host's may be newer (redis needs
async-timeout below 3.11.3). Prints one requirement a line; nothing when the wheelhouse is whole.

    python deploy/image/marker_wheels.py WHEELHOUSE
"""

from __future__ import annotations

import sys
import zipfile
from collections.abc import Iterator
from email.parser import HeaderParser
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

PATCH_RELEASES = [f"3.11.{patch}" for patch in range(30)]


def declared_requirements(wheel: Path) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(name for name in archive.namelist() if name.endswith(".dist-info/METADATA"))
        headers = HeaderParser().parsestr(archive.read(metadata).decode())
    return [Requirement(line) for line in headers.get_all("Requires-Dist") or []]


def needed_on_some_patch_release(requirement: Requirement) -> bool:
    if requirement.marker is None:
        return True
    environments = ({**default_environment(), "python_full_version": v, "extra": ""} for v in PATCH_RELEASES)
    return any(requirement.marker.evaluate(environment) for environment in environments)


def missing_requirements(wheelhouse: Path) -> Iterator[str]:
    wheels = sorted(wheelhouse.glob("*.whl"))
    present = {parse_wheel_filename(wheel.name)[0] for wheel in wheels}
    missing: dict[str, Requirement] = {}
    for wheel in wheels:
        for requirement in declared_requirements(wheel):
            name = canonicalize_name(requirement.name)
            if name not in present and needed_on_some_patch_release(requirement):
                missing.setdefault(name, requirement)
    for requirement in missing.values():
        yield f"{requirement.name}{requirement.specifier}"


if __name__ == "__main__":
    print(*missing_requirements(Path(sys.argv[1])), sep="\n")
