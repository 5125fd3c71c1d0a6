"""Names shared across the package: the method, the recipe's sections, the files of a run's folder
(kept import-light on purpose: the mergekit plugin is loaded while mergekit itself is being imported)."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path

METHOD_NAME = "model_swarms"
PRETTY_NAME = "Model Swarms"
PAPER_URL = "https://arxiv.org/abs/2410.11163"
SWARM_KEYS = ("swarm", "utility", "evaluation")
# Files of a run's folder, beside the model: the search's checkpoint and history, and its summary.
STATE_FILE = "swarm_state.json"
HISTORY_FILE = "swarm_history.jsonl"
RESULT_FILE = "swarm_result.json"
HISTORY_PLOT = "swarm_history.png"
RECIPE_COPY = "swarm.yml"  # the recipe of the run (or comparison), as written
RECIPE_FILE = "mergekit_config.yml"  # the winner as a vanilla mergekit recipe
EXAMPLES_FILE = "swarm_examples.json"  # which dev/test examples each expert and the winner get right
CARD_FILE = "README.md"
COMPRESSED_FOLDER = "svd-rank-{rank}"  # --svd-rank: the LoRA winner compressed, beside the exact one
# Files of a comparison's folder (`mergekit-swarm compare`).
LEADERBOARD = "leaderboard"  # .md, .json, .png
RECIPES_FOLDER = "recipes"  # one recipe per method
CURVES_PLOT = "budget_curves.png"
TEST_EXAMPLES = "test_examples.json"  # each method's (and expert's) score on every test example
# Written first into every folder `run`, `apply` and `compare` create: what tells our own output
# (which `--overwrite` may replace and `push` may upload) from a folder of the user's.
OUTPUT_MARKER = "mergekit_swarm_output.json"


def is_output_folder(folder: Path) -> bool:
    """Whether `folder` was written by mergekit-swarm (`run`, `apply` or `compare`; finished or not)."""
    return (Path(folder) / OUTPUT_MARKER).is_file()


def is_swarm_document(data: object) -> bool:
    """Whether a parsed recipe asks for a swarm search: `merge_method: model_swarms` with a swarm section."""
    return isinstance(data, dict) and data.get("merge_method") == METHOD_NAME and any(k in data for k in SWARM_KEYS)


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
    return is_swarm_document(data)


def display_names(paths: Sequence[Path], known: Mapping[Path, str] | None = None) -> list[str]:
    """Short unique names of models for tables and messages: `known[path]` (e.g. a Hub id) where
    given, else the folder name, with its parent folder when two would collide."""
    known = known or {}
    names = [known.get(p) or p.name for p in paths]
    if len(set(names)) < len(names):
        names = [known.get(p) or f"{p.parent.name}/{p.name}" for p in paths]
    return names
