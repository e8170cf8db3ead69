"""Where reslab keeps downloaded data sets and decoded-image caches."""

from __future__ import annotations

import os
from pathlib import Path


def reslab_home() -> Path:
    """`$RESLAB_HOME` if set, else `~/.cache/reslab` (data in `data/`, caches in `cache/`)."""
    env = os.environ.get("RESLAB_HOME")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "reslab"
