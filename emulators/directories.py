"""Directories the emulators are told to write to (``--data-dir``, ``--cert-dir``), checked before anything starts."""

from __future__ import annotations

import os
from pathlib import Path


def ensure_directory(option: str, path: Path, *, private: bool = False) -> None:
    """Create ``path`` if it is missing (``private``: 0700, for a directory that will hold secrets; one that exists
    keeps its mode); a ValueError naming ``option`` and ``path`` if it cannot be our directory."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} {path} is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700 if private else 0o777)
    except OSError as exc:  # a parent that is a file, no permission...
        raise ValueError(f"{option} {path}: cannot create the directory: {exc.strerror or exc}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {path} is not writable")
