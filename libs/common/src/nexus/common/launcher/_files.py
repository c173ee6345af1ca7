"""The launcher's files in the data directory: secrets only the user can read, the run file."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nexus.common.auth import new_key

RUN_FILE = "run.json"
ADMIN_KEY_FILE = "admin.key"
SIGNING_KEY_FILE = "registry-signing.key"


def write_private(path: Path, text: str) -> None:
    """Writes `text` to `path` readable by its owner alone (0600), replacing it atomically, so
    no one sees it half-written or readable by others even for a moment."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(temporary, path)


def signing_key(data_dir: Path) -> str:
    """The registry signing key of this installation, made once and kept (mode 0600)."""
    path = data_dir / SIGNING_KEY_FILE
    if not path.exists():
        write_private(path, secrets.token_urlsafe(32))
    return path.read_text().strip()


def service_key(data_dir: Path, service: str) -> str:
    """The API key `service` calls other services with (`<service>.key`, mode 0600), made once
    and kept; the service stores it in the key store at start."""
    path = data_dir / f"{service}.key"
    if not path.exists():
        write_private(path, new_key()[1] + "\n")
    return path.read_text().strip()


def admin_key_path(data_dir: Path) -> Path:
    """Where `nexus up` keeps the admin key it made at the first start."""
    return data_dir / ADMIN_KEY_FILE


def save_admin_key(data_dir: Path, raw_key: str) -> Path:
    """Keeps the first admin key in the data directory (mode 0600) the moment it exists, so a
    start that fails later does not lose it; returns the file's path."""
    path = admin_key_path(data_dir)
    write_private(path, raw_key + "\n")
    return path


@dataclass(frozen=True)
class RunInfo:
    """What a running `nexus up` writes to `<data dir>/run.json`: where its parts are.

    Attributes:
        pid: The launcher's process id.
        data_dir: Its data directory.
        nats_url: Its NATS (what `nexus keys` connects to).
        gateway_url: Its gateway ("" until the gateway runs).
        children: Name ("nats-server", "anomaly", "gateway", ...) -> {"pid": ..., "port": ...}.
    """

    pid: int
    data_dir: str
    nats_url: str
    gateway_url: str = ""
    children: dict[str, dict[str, int]] = field(default_factory=dict)

    def write(self) -> None:
        """Writes (replaces) the run file."""
        path = Path(self.data_dir) / RUN_FILE
        temporary = path.with_name(f".{RUN_FILE}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(asdict(self), indent=2) + "\n")
        os.replace(temporary, path)


def read_run_file(data_dir: Path) -> RunInfo | None:
    """The run file in `data_dir`, whether its launcher runs or not; None when there is none."""
    try:
        return RunInfo(**json.loads((data_dir / RUN_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def running_platform(data_dir: Path) -> RunInfo | None:
    """The `nexus up` that runs with `data_dir` now, from its run file; None when there is no
    run file, or its launcher is gone (a launcher that was killed leaves its file behind)."""
    info = read_run_file(data_dir)
    return info if info is not None and _alive(info.pid) else None


def remove_run_file(data_dir: Path) -> None:
    """Removes this process's run file (at a stop); another launcher's stays."""
    info = read_run_file(data_dir)
    if info is not None and info.pid == os.getpid():
        with contextlib.suppress(FileNotFoundError):
            (data_dir / RUN_FILE).unlink()


def _alive(pid: int) -> bool:
    if pid <= 0:  # os.kill(0, ...) would signal the whole process group
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True
