"""Names shared by the recipe parser and the mergekit plugin (kept import-light on purpose:
the plugin is loaded while mergekit itself is being imported)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

METHOD_NAME = "model_swarms"
PRETTY_NAME = "Model Swarms"
PAPER_URL = "https://arxiv.org/abs/2410.11163"
SWARM_KEYS = ("swarm", "utility", "evaluation")


def is_swarm_recipe(path: str | Path) -> bool:
    """Whether a recipe file asks for a swarm search (not a one-shot merge).

    Only regular files are read: a pipe or /dev/stdin must reach mergekit unread.
    """
    import yaml

    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return False  # let whoever loads it report the problem
    return isinstance(data, dict) and data.get("merge_method") == METHOD_NAME and any(k in data for k in SWARM_KEYS)
