"""What a run prints: one-line messages on stderr (above the progress bar), and utilities as numbers."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable

from tqdm.auto import tqdm


def printer(quiet: bool) -> Callable[[str], None]:
    """`say(message)`: a line on stderr that does not break tqdm's bar; nothing with `quiet`."""

    def say(message: str) -> None:
        if not quiet:
            tqdm.write(message, file=sys.stderr)

    return say


def format_utility(value: float | None, missing: str = "-") -> str:
    """A utility as tables, cards and progress bars show it: 4 decimals, `missing` when there is
    none (a failed evaluation is -inf)."""
    if value is None or not math.isfinite(value):
        return missing
    return f"{value:.4f}"
