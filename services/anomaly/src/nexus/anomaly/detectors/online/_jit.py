"""Compiling the streaming detectors' inner loops (numba), cached on disk where possible.

The detectors keep their state in numpy arrays and step through a series in compiled loops that
release the GIL (`nogil`), so a batch's learning runs beside the event loop instead of taking
turns with it. A loop is compiled on its first call (seconds for them all); `warm_up` in this
package compiles them, which the service does before it consumes or reports SERVING. Compiled
code is cached in `NUMBA_CACHE_DIR`, by default `nexus-numba` in the temporary folder (containers
run with a read-only root file system and a writable /tmp); when that cannot be written, loops
are compiled at every start instead.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

CACHE_DIR = os.environ.setdefault(
    "NUMBA_CACHE_DIR", os.path.join(tempfile.gettempdir(), "nexus-numba")
)


def _writable(folder: str) -> bool:
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


CACHE = _writable(CACHE_DIR)
"""Whether compiled loops are cached on disk."""

import numba  # noqa: E402 - after NUMBA_CACHE_DIR is set: numba reads it on import

if getattr(numba.config, "CACHE_DIR", None) != CACHE_DIR:  # imported before: read it again
    numba.core.config.reload_config()  # type: ignore[no-untyped-call]


def compiled(function: F) -> F:
    """`function` compiled to machine code, releasing the GIL while it runs."""
    return numba.njit(nogil=True, cache=CACHE)(function)  # type: ignore[return-value]


def inlined(function: F) -> F:
    """`function` compiled into each compiled caller (numba's own inlining): for a small helper
    called for every value, whose call (arrays passed field by field) would cost more than its
    work. Each inlined copy is compiled again, so keep it to the hot, small ones: compiling
    takes longer where there is no cache."""
    return numba.njit(nogil=True, cache=CACHE, inline="always")(function)  # type: ignore[return-value]
