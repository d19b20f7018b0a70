"""Where the open benchmark's data lives on disk.

The cache root is, in order of precedence:

1. the ``dir`` argument (``refsr data fetch --dir DIR``);
2. the ``REFSR_DATA`` environment variable;
3. ``$XDG_CACHE_HOME/refsr/data``;
4. ``~/.cache/refsr/data``.

Inside the root, each package is unpacked into a folder named after the package, which is what the
manifests' paths are relative to (``scikit-image/skimage/data/astronaut.png``). A folder counts as fetched
only when it holds the completion marker :data:`MARKER_NAME`; see :mod:`refsr.data.fetch`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

__all__ = ["data_root", "MARKER_NAME", "STATE_NAME", "MANIFEST_DIR", "is_complete"]

PathLike = Union[str, os.PathLike]

#: The completion marker written as the last file of an unpacked package, before it is renamed into place.
MARKER_NAME = ".refsr-complete.json"
#: The lock/state file at the cache root: per package, the archive's name, size and sha256.
STATE_NAME = "refsr-data-lock.json"
#: Folder at the cache root that receives a copy of the manifests.
MANIFEST_DIR = "manifests"


def data_root(dir: PathLike | None = None) -> Path:
    """The data cache folder (not created): ``dir``, else ``$REFSR_DATA``, else the XDG cache, else ~/.cache.

    Empty environment variables count as unset, as the XDG spec asks.
    """
    if dir is not None and str(dir) != "":
        return Path(dir).expanduser()
    env = os.environ.get("REFSR_DATA")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "refsr" / "data"
    return Path.home() / ".cache" / "refsr" / "data"


def is_complete(folder: Path) -> bool:
    """True when ``folder`` was unpacked completely by :func:`refsr.data.fetch.fetch` (it has the marker)."""
    return (folder / MARKER_NAME).is_file()
