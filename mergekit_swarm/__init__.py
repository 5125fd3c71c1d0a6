"""mergekit-swarm: Model Swarms (Feng et al., 2025) as a mergekit-style merge method.

A particle swarm searches the weight space spanned by a pool of experts (LoRA adapters of
one base model, or full fine-tunes), guided by a utility on a small dev set, without
gradients. The whole swarm is an array of coefficients over the experts; particles
become weights only when evaluated or written.

Public API (imports are lazy so that `import mergekit_swarm` stays cheap):

    from mergekit_swarm import load_recipe, run_swarm, RunOptions
    result = run_swarm(load_recipe("swarm.yml"), "out/", RunOptions(resume=True))
"""

import _mergekit_swarm_hook

__version__ = "0.1.0"

# Registers `model_swarms` with mergekit as soon as mergekit's merge methods are imported
# (right away if they already are), without importing mergekit (or torch) here.
_mergekit_swarm_hook.install()

_LAZY = {
    "load_recipe": "mergekit_swarm.config",
    "SwarmRecipe": "mergekit_swarm.config",
    "run_swarm": "mergekit_swarm.run",
    "RunOptions": "mergekit_swarm.options",
    "apply_recipe": "mergekit_swarm.apply",
    "SwarmResult": "mergekit_swarm.output.result",
    "SwarmSettings": "mergekit_swarm.pso",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mergekit_swarm' has no attribute {name!r}")


__all__ = [*_LAZY, "__version__"]
