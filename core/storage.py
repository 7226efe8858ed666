"""Locations that are local paths or object-storage URIs (s3://bucket/prefix, gs://, ...).

Everything goes through pyarrow's filesystems, which read the standard AWS variables
(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL for an S3-compatible
server). Local paths are returned as plain paths, URIs as URIs.
"""

from __future__ import annotations

import os
from pathlib import Path

from pyarrow.fs import FileSelector, FileSystem, FileType, LocalFileSystem, copy_files


def is_uri(location: str | Path) -> bool:
    return "://" in str(location) and not str(location).startswith("file://")


def resolve(location: str | Path) -> tuple[FileSystem, str]:
    """The filesystem holding `location` and the path inside it."""
    location = str(location)
    if location.startswith("file://"):
        return LocalFileSystem(), location.removeprefix("file://")
    if is_uri(location):
        return FileSystem.from_uri(location)
    return LocalFileSystem(), str(Path(location).resolve())


def join(location: str | Path, *parts: str) -> str:
    return "/".join([str(location).rstrip("/"), *parts])


def exists(location: str | Path) -> bool:
    filesystem, path = resolve(location)
    return filesystem.get_file_info(path).type != FileType.NotFound


def read_bytes(location: str | Path) -> bytes:
    filesystem, path = resolve(location)
    with filesystem.open_input_stream(path) as stream:
        return stream.read()


class StorageError(OSError):
    """A write that could not complete (disk full, permissions, unreachable bucket)."""


def write_once(location: str | Path, raw: bytes) -> None:
    """Write a whole file so that no reader ever sees part of it: locally through a temporary
    file and an atomic rename; an object store publishes an object only when its upload completes.
    On failure nothing is left under the final name, nor a partial file."""
    if is_uri(location):
        filesystem, path = resolve(location)
        try:
            with filesystem.open_output_stream(path) as stream:
                stream.write(raw)
        except OSError as error:
            raise StorageError(f"could not write {location}: {error}") from error
        return
    path = Path(resolve(location)[1])
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(partial, "wb") as handle:
            handle.write(raw)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise StorageError(f"could not write {location}: {error.strerror or error}") from error


def files_under(location: str | Path) -> list[tuple[str, float]]:
    """(location, modification time in epoch seconds) of every file below a folder, sorted."""
    filesystem, root = resolve(location)
    try:
        infos = filesystem.get_file_info(FileSelector(root, recursive=True))
    except FileNotFoundError:
        return []
    prefix = str(location).split("://", 1)[0] + "://" if is_uri(location) else ""
    found = [(prefix + info.path, info.mtime.timestamp() if info.mtime else 0.0) for info in infos if info.is_file]
    return sorted(found)


def delete(location: str | Path) -> None:
    filesystem, path = resolve(location)
    filesystem.delete_file(path)


def upload_file(local_file: Path, target: str) -> None:
    filesystem, path = resolve(target)
    copy_files(str(local_file), path, source_filesystem=LocalFileSystem(), destination_filesystem=filesystem)


def download_file(source: str, local_file: Path) -> None:
    filesystem, path = resolve(source)
    local_file.parent.mkdir(parents=True, exist_ok=True)
    copy_files(path, str(local_file), source_filesystem=filesystem, destination_filesystem=LocalFileSystem())
