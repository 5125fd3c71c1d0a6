"""mergekit's own merge methods as baselines: recipes over the experts, and running them.

Each method gets a small grid of its scalar hyper-parameters; the comparison keeps the
point with the best dev utility. LoRA experts enter mergekit the way mergekit takes them,
baked into their base (`base+adapter`, cached in the comparison's work folder), so these
methods see full task vectors while the swarm and the soups combine adapters as adapters.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

from mergekit_swarm.core.run_options import RunOptions

_DENSITY_LAMBDA = [{"density": d, "lambda": lam} for d in (0.3, 0.5, 0.7) for lam in (1.0, 2.0)]
GRIDS: dict[str, list[dict]] = {
    # normalize: true, so lambda 1 adds the mean task vector to the base; > 1 extrapolates
    "task_arithmetic": [{"lambda": lam} for lam in (0.5, 1.0, 2.0, 3.0)],
    "ties": _DENSITY_LAMBDA,
    "dare_ties": _DENSITY_LAMBDA,
    "slerp": [{"t": t} for t in (0.25, 0.5, 0.75)],  # from the best expert (t = 0) to the second best
    "model_stock": [{}],
}
NEEDS_BASE = ("task_arithmetic", "ties", "dare_ties", "model_stock")


def mergekit_recipe(
    method: str,
    params: dict,
    *,
    base: str | None,
    experts: list[str],
    dtype: str | None,
    out_dtype: str | None,
) -> dict:
    """The mergekit recipe of `method` at grid point `params` over `experts` (model references
    as mergekit reads them). SLERP takes the first two experts, the first as its base."""
    recipe: dict = {"merge_method": method}
    if method == "slerp":
        recipe["base_model"] = experts[0]
        recipe["models"] = [{"model": e} for e in experts[:2]]
        recipe["parameters"] = dict(params)
    elif method == "model_stock":
        recipe["base_model"] = base
        recipe["models"] = [{"model": e} for e in experts]
    else:
        per_model = {"weight": 1.0, **({"density": params["density"]} if "density" in params else {})}
        recipe["base_model"] = base
        recipe["models"] = [{"model": e, "parameters": dict(per_model)} for e in experts]
        recipe["parameters"] = {"normalize": True, "lambda": params["lambda"]}
    for key, value in (("dtype", dtype), ("out_dtype", out_dtype)):
        if value is not None:
            recipe[key] = value
    return recipe


def lora_reference(base: str, adapter: str) -> str:
    """mergekit's name for an adapter baked into its base."""
    return f"{base}+{adapter}"


def run_mergekit(recipe: dict, out: Path, options: RunOptions, *, lora_cache: Path, seed: int = 0) -> None:
    """Run `recipe` with mergekit into `out` (weights and config only; mergekit's logs silenced)."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    merge_options = MergeOptions(
        lora_merge_cache=str(lora_cache),
        copy_tokenizer=False,
        write_model_card=False,
        random_seed=seed,  # DARE's random drops
        device=options.device,
        trust_remote_code=options.trust_remote_code,
        quiet=True,
    )
    from transformers.utils import logging as transformers_logging

    logger = logging.getLogger("mergekit")
    level, logger.level = logger.level, logging.ERROR
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # PEFT's baking triggers transformers deprecation notes
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # mergekit's and transformers' progress bars
            run_merge(MergeConfiguration.model_validate(recipe), str(out), options=merge_options)
    finally:
        logger.setLevel(level)
        transformers_logging.set_verbosity(verbosity)
