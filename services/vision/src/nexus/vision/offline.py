"""ultralytics, offline by construction: set before anything imports it (the package's
`__init__` calls `configure`).

Without these, ultralytics checks PyPI for updates, pip-installs what it misses
(`YOLO_AUTOINSTALL`), downloads Arial.ttf into its config dir for every plot and training run,
and fetches weights for any `*.pt` name it does not find on disk. The service never passes it a
weights name, and gives it a config dir of its own holding a font (matplotlib's DejaVu Sans).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

FONTS = ("Arial.ttf", "Arial.Unicode.ttf")
"""The fonts ultralytics looks for in its config dir before it downloads them."""


def configure() -> Path:
    """Sets ultralytics' environment (keeping what the deployment set) and returns its config
    dir, with the fonts in place."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "False")
    os.environ.setdefault("YOLO_VERBOSE", "False")
    default = Path(tempfile.gettempdir()) / "nexus-vision-ultralytics"
    config_dir = Path(os.environ.setdefault("YOLO_CONFIG_DIR", str(default)))
    _install_fonts(config_dir / "Ultralytics")
    return config_dir


def _install_fonts(folder: Path) -> None:
    """Copies matplotlib's DejaVu Sans under the names ultralytics wants (once)."""
    if all((folder / name).is_file() for name in FONTS):
        return
    import matplotlib  # a dependency of ultralytics; ships the font

    source = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    folder.mkdir(parents=True, exist_ok=True)
    for name in FONTS:
        target = folder / name
        if not target.is_file():
            partial = target.with_suffix(f".{os.getpid()}.part")
            shutil.copyfile(source, partial)
            partial.replace(target)  # atomic: concurrent replicas never see half a font
