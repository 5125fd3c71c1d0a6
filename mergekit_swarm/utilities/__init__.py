"""Utilities: what the swarm maximises. One module per kind, behind a registry."""

from mergekit_swarm.utilities import exact_match, multiple_choice, nll, python  # noqa: F401  (registration)
from mergekit_swarm.utilities.base import UTILITIES, Split, Utility, UtilityConfig, register_utility

__all__ = ["UTILITIES", "Split", "Utility", "UtilityConfig", "register_utility"]
