"""Which evaluation engine a run uses: in process (`local`) or on Ray workers (`ray`)."""

from __future__ import annotations

from mergekit_swarm.config import EvaluationSettings, SwarmRecipe
from mergekit_swarm.core.run_options import RunOptions
from mergekit_swarm.search.evaluator import LocalEvaluator, ParticleEvaluator
from mergekit_swarm.search.ray_backend import RayEvaluator
from mergekit_swarm.search.setup import SearchSetup


def open_evaluator(
    setup: SearchSetup, options: RunOptions, settings: EvaluationSettings, *, recipe: SwarmRecipe, particles: int
) -> ParticleEvaluator:
    """The engine `settings.backend` names, ready to evaluate; `close()` it (Ray: shuts the workers down).

    `recipe` is the recipe as written (Hub models not yet downloaded): Ray workers resolve it on
    their own node. `particles` per iteration bound the workers that can be kept busy.
    """
    if settings.backend == "ray":
        return RayEvaluator(recipe, setup, options, settings, particles=particles)
    auto = settings.particles_per_batch == "auto"
    return LocalEvaluator.open(setup, options, setup.slots(settings.particles_per_batch, particles), fewer_slots=auto)
