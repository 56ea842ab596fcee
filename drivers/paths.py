"""Paths the panel sends to hosts."""
from __future__ import annotations

import os

from drivers.errors import DriverError


def check_path(path: str, what: str = "backing path") -> None:
    """DriverError (permanent) unless `path` is absolute, normalised and free of control characters.

    Paths travel in tab-separated lines and key=value files: no control characters; normalised so
    that two spellings of one file cannot pass for two."""
    if (not path.startswith("/") or path == "/" or os.path.normpath(path) != path
            or any(ord(c) < 32 or ord(c) == 127 for c in path)):
        raise DriverError(f"{what} must be absolute, normalised, without control characters: {path!r}",
                          permanent=True)
