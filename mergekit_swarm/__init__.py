"""mergekit-swarm: Model Swarms (Feng et al., 2025) as a mergekit-style merge method.

A particle swarm searches the weight space spanned by a pool of experts (LoRA adapters of
one base model, or full fine-tunes), guided by a utility on a small dev set, without
gradients. The whole swarm is an array of coefficients over the experts; particles
become weights only when evaluated or written.

Public API (imports are lazy so that `import mergekit_swarm` stays cheap):

    from mergekit_swarm import load_recipe, run_swarm, RunOptions
    result = run_swarm(load_recipe("swarm.yml"), "out/", RunOptions(resume=True))
"""

from typing import TYPE_CHECKING

import _mergekit_swarm_hook

if TYPE_CHECKING:  # the names of _LAZY, for type checkers and editors
    from mergekit_swarm.commands.apply import apply_recipe
    from mergekit_swarm.commands.run import run_swarm
    from mergekit_swarm.config import SwarmRecipe, load_recipe
    from mergekit_swarm.core.run_options import RunOptions
    from mergekit_swarm.output.result import SwarmResult
    from mergekit_swarm.pso import SwarmSettings

__version__ = "0.1.0"

# Registers `model_swarms` with mergekit as soon as mergekit's merge methods are imported
# (right away if they already are), without importing mergekit (or torch) here.
_mergekit_swarm_hook.install()

_LAZY = {
    "load_recipe": "mergekit_swarm.config",
    "SwarmRecipe": "mergekit_swarm.config",
    "run_swarm": "mergekit_swarm.commands.run",
    "RunOptions": "mergekit_swarm.core.run_options",
    "apply_recipe": "mergekit_swarm.commands.apply",
    "SwarmResult": "mergekit_swarm.output.result",
    "SwarmSettings": "mergekit_swarm.pso",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mergekit_swarm' has no attribute {name!r}")


__all__ = [  # the names of _LAZY, written out (type checkers read __all__ as a literal)
    "load_recipe",
    "SwarmRecipe",
    "run_swarm",
    "RunOptions",
    "apply_recipe",
    "SwarmResult",
    "SwarmSettings",
    "__version__",
]
