"""Utilities: what the swarm maximises. One module per kind, behind a registry.

The objectives, above `core` (which they may import) and beside `pso` and `hub`.
"""

from mergekit_swarm.utilities import (  # noqa: F401  (registration)
    exact_match,
    harness,
    judge,
    multiple_choice,
    multitask,
    nll,
    python,
    reward_model,
)
from mergekit_swarm.utilities.base import UTILITIES, Score, Split, Utility, UtilityConfig, register_utility, validate_utility

__all__ = ["UTILITIES", "Score", "Split", "Utility", "UtilityConfig", "register_utility", "validate_utility"]
