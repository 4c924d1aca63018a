"""Writes a reader can never see half-done: write under a temporary name, then rename.

Used for the GGUF cache, run folders, checkpoints and JSON records alike.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path


def write_json_atomic(path: str | Path, data) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False))
    os.replace(tmp, path)


def swap_into(tmp: Path, folder: Path, old: Path | None = None) -> None:
    """Replace `folder` by the finished `tmp` with renames only (each one atomic); the previous
    folder is moved to `old` first and removed after."""
    old = old or folder.with_name(f".{folder.name}.old-{os.getpid()}")
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def write_atomic(folder: Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp) then swap tmp into `folder`; the old folder survives until the swap."""
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    swap_into(tmp, folder)
