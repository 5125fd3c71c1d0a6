"""`mergekit-swarm apply`: the one-shot form of `model_swarms`, for full models and LoRA adapters.

A recipe of explicit weights (`merge_method: model_swarms`, or `linear` with
`normalize: false`, such as a winner's `mergekit_config.yml`) is resolved exactly as
mergekit resolves it (scalar or filtered `weight`s, first match wins) and written
with the same code as a search's winner, so the result is bit-identical to it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from mergekit_swarm.config import load_weights_recipe
from mergekit_swarm.core.errors import ConfigError
from mergekit_swarm.core.names import CARD_FILE
from mergekit_swarm.core.run_options import RunOptions
from mergekit_swarm.experts import open_recipe_pool
from mergekit_swarm.experts.tokenizer import load_tokenizer, tokenizer_folder
from mergekit_swarm.output.card import render_card
from mergekit_swarm.output.mergekit_config import RECIPE_FILE, recipe_coefficients
from mergekit_swarm.output.model_folder import write_model_folder
from mergekit_swarm.output.rundir import RunDirectory


def apply_recipe(config_file: str | Path, out: str | Path, options: RunOptions | None = None) -> Path:
    """Write the merge a recipe of explicit weights describes, e.g. a winner's `mergekit_config.yml`.

    Weights are resolved as mergekit resolves them (scalars, or `{filter, value}` lists where the
    first match wins) and written with the same code as a search's winner, so the result is
    bit-identical to it; LoRA experts give an adapter folder.

    Args:
        config_file (`str` or `Path`):
            A `merge_method: model_swarms` recipe with a `weight` per model, or `linear` with
            `normalize: false`.
        out (`str` or `Path`):
            The output folder, published atomically; an existing one only with `options.overwrite`.
        options (`RunOptions`, *optional*):
            Device, output format, `allow_pickle`, `trust_remote_code` (Hub code files), ...

    Returns:
        `Path`: the output folder.

    Raises:
        `ConfigError`: not a recipe of explicit weights, or a model without a weight.
        `ExpertError`: an expert or the base model cannot be used.
        `OutputError`: `out` exists, or the storage refused a write (nothing is left behind).

    Example:

    ```python
    >>> from mergekit_swarm import apply_recipe
    >>> apply_recipe("out/mergekit_config.yml", "winner-again/")
    ```
    """
    options = options or RunOptions()
    recipe = load_weights_recipe(config_file).resolve(options)
    if options.merge_lora:
        raise ConfigError("--merge-lora is for search runs; apply writes the adapter (bake it with PEFT's merge_and_unload)")
    pool = open_recipe_pool(recipe, allow_pickle=options.allow_pickle, trust_remote_code=options.trust_remote_code)
    layout, coefficients = recipe_coefficients(recipe.merge, pool, recipe.source)
    tokenizer = load_tokenizer(tokenizer_folder(recipe, options.trust_remote_code), recipe, options.trust_remote_code)

    rundir = RunDirectory(Path(out), "apply")
    fingerprint = "apply:" + hashlib.sha256(recipe.text.encode()).hexdigest()
    rundir.open(fingerprint, resume=False, overwrite=options.overwrite, inputs=recipe.inputs())
    with rundir.writing_outputs(resumable=False):  # disk full: one line, nothing left behind
        device, trust = options.device, options.trust_remote_code
        kind = write_model_folder(
            rundir.work, recipe, pool, layout, coefficients, options, tokenizer=tokenizer, device=device, trust_remote_code=trust
        )
        (rundir.work / RECIPE_FILE).write_text(recipe.text, encoding="utf-8")  # as mergekit does: the recipe as given
        if options.write_model_card:
            card = render_card(recipe, title=rundir.out.name, output_kind=kind)
            (rundir.work / CARD_FILE).write_text(card, encoding="utf-8")
        rundir.publish()
    return rundir.out
