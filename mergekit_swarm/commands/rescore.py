"""Score a written model folder with a recipe's utility, loaded the way a user loads it.

The check that a published result is the one that was measured: a run's winner, a
`mergekit-swarm apply` output, or what `mergekit-yaml` writes from a comparison's recipe,
loaded with `from_pretrained` (an adapter folder with `PeftModel.from_pretrained` on the
recipe's base) and scored by the same utility code as the search, outside its resident model.
"""

from __future__ import annotations

from pathlib import Path

from mergekit_swarm.config import SwarmRecipe
from mergekit_swarm.core.errors import ConfigError
from mergekit_swarm.core.run_options import RunOptions
from mergekit_swarm.experts.tokenizer import load_tokenizer
from mergekit_swarm.utilities import Score, Split


def score_folder(recipe: SwarmRecipe, folder: str | Path, split: Split = "dev", options: RunOptions | None = None) -> Score:
    """Load the model (or adapter) in `folder` and score it with `recipe`'s utility on `split`.

    Args:
        recipe (`SwarmRecipe`):
            A resolved search recipe (`load_recipe(...).resolve()`): its utility, and its base
            model for adapter folders.
        folder (`str` or `Path`):
            A model folder, or a PEFT adapter folder of the recipe's base model.
        split (`str`, *optional*, defaults to `"dev"`):
            `"dev"` or `"test"`.
        options (`RunOptions`, *optional*):
            The device and `trust_remote_code`.

    Returns:
        `Score`: the utility's value, details and per-example scores.

    Raises:
        `ConfigError`: the recipe has no data for `split`, or an adapter folder without `base_model`.
    """
    from transformers import AutoModelForCausalLM

    options, folder = options or RunOptions(), Path(folder)
    utility = recipe.utility.build(split)
    if utility is None:
        raise ConfigError(f"{recipe.source}: utility has no {split} data")
    is_adapter = (folder / "adapter_config.json").exists()
    source = recipe.base_folder if is_adapter else folder
    if source is None:
        raise ConfigError(f"{folder} is an adapter; {recipe.source} names no base_model to load it on")
    trust = options.trust_remote_code
    model = AutoModelForCausalLM.from_pretrained(source, dtype="auto", trust_remote_code=trust)
    if is_adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, folder)
    tokenizer = load_tokenizer(folder, recipe, trust_remote_code=trust)
    if tokenizer.pad_token is None:  # as the search's resident model does
        tokenizer.pad_token = tokenizer.eos_token
    # transformers: `to` is functools.wraps(nn.Module.to), which pyright does not bind as a method, and
    # `generate` types its self as a Protocol transformers' own models fail (pyright finds no generate)
    score = utility(model.to(options.device).eval(), tokenizer)  # pyright: ignore[reportArgumentType]
    return score if isinstance(score, Score) else Score(float(score))
