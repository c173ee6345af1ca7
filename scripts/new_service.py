"""Creates a service from services/_template: `make service NAME=forecast`.

The template is a working service named `example` (settings, server, servicer, domain module,
test, README, proto); its image comes from the root Dockerfile (`--build-arg SERVICE=<name>`).
This copies it to services/<name>/, renames `example` / `Example` / `EXAMPLE` to the new name
throughout, and moves its proto to protos/nexus/<name>/v1/<name>_service.proto, where buf and the
code generator find it.

Usage: python scripts/new_service.py NAME
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE_NAME = "example"
NAME = re.compile(r"[a-z][a-z0-9]{1,29}")
NEXT_STEPS = """\
services/{name}/ and protos/nexus/{name}/v1/{name}_service.proto are ready. Next:
  make protos        # generates nexus.api.{name}
  make lock          # its dependencies into the locks (and services/{name}/requirements.lock)
  make test          # its tests run with the others
Then add it to docker-compose.yml (a copy of another service's block, SERVICE: {name}, and to
the gateway's NEXUS_GATEWAY_BACKENDS); its image is the root Dockerfile's:
  docker build --build-arg SERVICE={name} -t nexus/{name} .
`make run` starts it."""


def scaffold(name: str, root: Path = ROOT) -> Path:
    """Creates services/<name> and its proto from the template; returns the service folder.

    Raises:
        ValueError: The name is not a lower-case word (letters and digits, 2-30 characters), or
            a service or proto package of that name exists.
    """
    if not NAME.fullmatch(name) or name == TEMPLATE_NAME:
        raise ValueError(f"{name!r}: a service name is a lower-case word of 2-30 letters/digits")
    target, protos = root / "services" / name, root / "protos" / "nexus" / name
    if target.exists() or protos.exists():
        raise ValueError(f"{name!r} exists already ({target} or {protos})")
    shutil.copytree(root / "services" / "_template", target, ignore=_ignored)
    for path in sorted(target.rglob("*"), reverse=True):  # deepest first: renames stay valid
        if path.is_file():
            path.write_text(_renamed(path.read_text(), name))
        if TEMPLATE_NAME in path.name:
            path.rename(path.with_name(path.name.replace(TEMPLATE_NAME, name)))
    protos.joinpath("v1").mkdir(parents=True)
    (target / "proto" / f"{name}_service.proto").rename(protos / "v1" / f"{name}_service.proto")
    (target / "proto").rmdir()
    _tidy(target)
    return target


def _renamed(text: str, name: str) -> str:
    for old, new in (
        (TEMPLATE_NAME, name),
        ("Example", name.capitalize()),
        ("EXAMPLE", name.upper()),
    ):
        text = text.replace(old, new)
    return text


def _tidy(folder: Path) -> None:
    """Imports sorted again (the new name sorts elsewhere than `example`), code formatted."""
    ruff = str(Path(sys.executable).parent / "ruff")
    subprocess.run([ruff, "check", "--quiet", "--fix", "--select", "I", str(folder)], check=True)
    subprocess.run([ruff, "format", "--quiet", str(folder)], check=True)


def _ignored(folder: str, names: list[str]) -> list[str]:
    return [n for n in names if n == "__pycache__" or n.endswith(".egg-info")]


def main() -> int:
    """Scaffolds the named service and prints what comes next."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="the service's name: a lower-case word, e.g. forecast")
    name = parser.parse_args().name
    try:
        scaffold(name)
    except ValueError as err:
        print(f"new service: {err}", file=sys.stderr)
        return 2
    print(NEXT_STEPS.format(name=name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
