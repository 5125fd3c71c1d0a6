"""Recipes: what to merge (`models:`, `base_model:`, mergekit's keys), what to search (`swarm:`),
for what (`utility:`) and how to evaluate (`evaluation:`).

May import `core`, `pso`, `utilities` and `hub`.
"""

from mergekit_swarm.config.evaluation import EvaluationSettings
from mergekit_swarm.config.parsing import load_recipe, load_weights_recipe, parse_recipe
from mergekit_swarm.config.recipe import UNION, MergeRecipe, SwarmRecipe

__all__ = ["UNION", "EvaluationSettings", "MergeRecipe", "SwarmRecipe", "load_recipe", "load_weights_recipe", "parse_recipe"]
