"""A local model directory as one registry artifact: a gzipped tar of safetensors and JSON.

A Hugging Face model directory (config.json, model.safetensors, tokenizer files,
generation_config.json) travels through the model registry as one archive. Only formats that
load without running code are accepted: safetensors weights, JSON, text, Jinja chat templates and
sentencepiece models. Pickled weights (*.bin, *.pt, *.pkl, ...) and Python files are refused,
since loading them executes code. Unpacking never follows the archive's word on where a file
goes: absolute paths, `..`, links and special files are refused, and sizes are capped.
"""

from __future__ import annotations

import io
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from nexus.common.errors import InvalidArgument, ResourceExhausted

FRAMEWORK = "transformers-safetensors"
"""The registry framework of a local model artifact (an archive made by `pack_model_dir`)."""

ALLOWED_SUFFIXES = frozenset({".json", ".safetensors", ".txt", ".model", ".jinja", ".md"})
"""File kinds a model directory may hold: nothing here runs code when loaded."""
REQUIRED_FILES = ("config.json",)
GIB = 1024**3
MAX_UNPACKED_BYTES = 64 * GIB
"""Default cap on the bytes an archive unpacks to (its files together)."""
MAX_MEMBERS = 256
"""Most files (and folders) an archive may hold."""
MAX_DEPTH = 4
"""Deepest folder nesting inside an archive."""
_CHUNK = 1024 * 1024


def pack_model_dir(path: Path) -> bytes:
    """Packs a model directory into a gzipped tar for `ModelRegistry.register(framework=FRAMEWORK)`.

    Hidden files (".gitattributes", ".cache/") are left out; every other file must be of an
    allowed kind.

    Args:
        path: The directory saved by `save_pretrained(..., safe_serialization=True)`.

    Returns:
        The archive's bytes; member names are relative to `path`.

    Raises:
        InvalidArgument: Not a directory, a pickle or other disallowed file, a link, or no
            config.json / safetensors weights.
    """
    if not path.is_dir():
        raise InvalidArgument.for_field("path", f"{path} is not a directory")
    files = sorted(_files_to_pack(path))
    _check_complete([PurePosixPath(name) for name, _ in files])
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as tar:
        for name, file in files:
            tar.add(file, arcname=name, recursive=False)
    return buffer.getvalue()


def unpack_model(
    artifact: bytes,
    dest: Path,
    *,
    max_bytes: int = MAX_UNPACKED_BYTES,
    max_members: int = MAX_MEMBERS,
) -> Path:
    """Unpacks an archive made by `pack_model_dir` into `dest`, safely.

    Args:
        artifact: The archive (tar, gzipped or not).
        dest: An absent or empty directory to unpack into (created).
        max_bytes: Most bytes the files may hold together.
        max_members: Most entries the archive may hold.

    Returns:
        `dest`, the model directory.

    Raises:
        InvalidArgument: Not a tar archive, an absolute path, `..`, a link or special file, a
            disallowed file kind (pickles, Python), a duplicate, or no config.json / weights;
            also when `dest` is not empty.
        ResourceExhausted: More members or bytes than allowed.
    """
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise InvalidArgument.for_field("dest", f"{dest} is not an empty directory")
    dest.mkdir(parents=True, exist_ok=True)
    try:
        _extract(artifact, dest, max_bytes, max_members)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return dest


def _files_to_pack(root: Path) -> Iterator[tuple[str, Path]]:
    """(archive name, file) of every non-hidden file under `root`, checked."""
    for file in root.rglob("*"):
        relative = file.relative_to(root)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if file.is_symlink():
            raise InvalidArgument.for_field("path", f"{relative} is a link; links are not packed")
        if file.is_dir():
            continue
        if not file.is_file():
            raise InvalidArgument.for_field("path", f"{relative} is not a regular file")
        name = relative.as_posix()
        _check_kind(PurePosixPath(name), "path")
        yield name, file


def _extract(artifact: bytes, dest: Path, max_bytes: int, max_members: int) -> None:
    """Writes each checked member under `dest`, counting bytes as they are written."""
    seen: set[PurePosixPath] = set()
    total = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(artifact), mode="r:*") as tar:
            for count, member in enumerate(tar, start=1):
                if count > max_members:
                    raise ResourceExhausted.too_large("the model archive", count, max_members)
                name = _checked_member(member, seen)
                if member.isdir():
                    (dest / name).mkdir(parents=True, exist_ok=True)
                    continue
                total += _write_member(tar, member, dest / name, max_bytes - total)
    except tarfile.TarError as err:
        raise InvalidArgument.for_field("artifact", f"not a model archive: {err}") from err
    _check_complete(list(seen))


def _checked_member(member: tarfile.TarInfo, seen: set[PurePosixPath]) -> PurePosixPath:
    """The member's safe relative path.

    Raises:
        InvalidArgument: An unsafe name, a link or special file, a duplicate, a disallowed kind.
    """
    raw = member.name
    name = PurePosixPath(raw)
    if not raw or raw.startswith(("/", "\\")) or name.is_absolute() or ":" in raw or "\\" in raw:
        raise InvalidArgument.for_field("artifact", f"member {raw!r} has an absolute path")
    parts = [part for part in name.parts if part != "."]
    if not parts or any(part == ".." for part in parts):
        raise InvalidArgument.for_field("artifact", f"member {raw!r} leaves the model directory")
    if len(parts) > MAX_DEPTH:
        raise InvalidArgument.for_field("artifact", f"member {raw!r} is nested too deep")
    name = PurePosixPath(*parts)
    if not (member.isfile() or member.isdir()):
        raise InvalidArgument.for_field(
            "artifact", f"member {raw!r} is a link or special file; only files are accepted"
        )
    if name in seen:
        raise InvalidArgument.for_field("artifact", f"member {raw!r} appears twice")
    seen.add(name)
    if member.isfile():
        _check_kind(name, "artifact")
    return name


def _write_member(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path, room: int) -> int:
    """Copies one file member to `target` in chunks; returns its size.

    Raises:
        ResourceExhausted: When the member does not fit in the `room` bytes left.
    """
    if member.size > room:
        raise ResourceExhausted.too_large(f"the archive member {member.name!r}", member.size, room)
    source = tar.extractfile(member)
    if source is None:
        raise InvalidArgument.for_field("artifact", f"member {member.name!r} cannot be read")
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with source, target.open("xb") as out:
        while chunk := source.read(_CHUNK):
            written += len(chunk)
            if written > room:
                raise ResourceExhausted.too_large(
                    f"the archive member {member.name!r}", written, room
                )
            out.write(chunk)
    return written


def _check_kind(name: PurePosixPath, field: str) -> None:
    """Refuses files whose kind may run code when loaded (pickles, Python) or is unknown."""
    if name.suffix.lower() not in ALLOWED_SUFFIXES:
        allowed = ", ".join(sorted(ALLOWED_SUFFIXES))
        raise InvalidArgument.for_field(
            field,
            f"{name} is not an accepted model file (accepted: {allowed}); pickled weights "
            "(.bin, .pt, .pkl) and code are refused: convert the weights to safetensors",
        )


def _check_complete(names: list[PurePosixPath]) -> None:
    """Refuses an archive without config.json at its top or without safetensors weights."""
    top = {name.as_posix() for name in names}
    for required in REQUIRED_FILES:
        if required not in top:
            raise InvalidArgument.for_field("artifact", f"the model has no {required}")
    if not any(name.suffix == ".safetensors" for name in names):
        raise InvalidArgument.for_field("artifact", "the model has no .safetensors weights")
