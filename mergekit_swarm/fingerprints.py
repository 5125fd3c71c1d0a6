"""Cheap identities of model folders and data files: what a run's fingerprint is made of, so that
a resume notices a retrained expert or an edited data file without hashing gigabytes."""

from __future__ import annotations

import hashlib
from pathlib import Path


def folder_identity(folder: Path, sample: int = 1 << 20) -> str:
    """A cheap fingerprint of a model folder: every JSON file, and for each weights file
    (safetensors or pickle) its size and its first and last MiB (header and values at both
    ends), so a retrained or replaced expert is noticed without hashing gigabytes."""
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if path.suffix == ".json":
            digest.update(path.name.encode() + path.read_bytes())
        elif path.suffix in (".safetensors", ".bin"):
            size = path.stat().st_size
            digest.update(f"{path.name}:{size}".encode())
            with path.open("rb") as handle:
                digest.update(handle.read(sample))
                if size > 2 * sample:
                    handle.seek(-sample, 2)
                    digest.update(handle.read())
    return digest.hexdigest()


def path_identity(path: Path) -> str | None:
    """Content hash of a data file, cheap identity of a model folder (reward model, judge); None if absent."""
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    return folder_identity(path) if path.is_dir() else None
