"""`model_swarms` inside mergekit: the registered merge method and the `mergekit-yaml` entry.

Three things, all applied by the lazy import hook (`_mergekit_swarm_hook`):

* `register_method`: registers `model_swarms` in mergekit's public registry. As a
  per-tensor method it is an affine combination with per-input `weight`s and no
  normalisation, exactly mergekit's `linear` with `normalize: false` (it calls that
  kernel), so a `model_swarms` recipe with explicit weights is a valid one-shot merge.
* `extend_mergekit_yaml`: makes `mergekit-yaml recipe.yml out/` run the swarm search
  when the recipe is a swarm recipe (`merge_method: model_swarms` with a `utility:` or
  `swarm:` section), with the same result as `mergekit-swarm recipe.yml out/`; every
  other recipe goes to mergekit unchanged.
* `extend_mergekit_multi`: lets `mergekit-multi` run a `model_swarms` search document as one of
  its stages (`mergekit_swarm.commands.multistage`); recipes without one run exactly as stock.
"""

from __future__ import annotations

from typing import Annotated

import torch
from mergekit.merge_methods.base import BatchParameter, ParameterScope, TensorBatch
from mergekit.merge_methods.easy_define import merge_method
from mergekit.merge_methods.linear import linear_merge

import _mergekit_swarm_hook
from mergekit_swarm.core.names import METHOD_NAME, PAPER_URL, PRETTY_NAME, is_swarm_recipe


# mergekit's `merge_method` has no return annotation: pyright infers the union of its decorator and
# direct forms for every method it makes (`linear_merge` too), where the result is a BatchedMergeMethod.
@merge_method(name=METHOD_NAME, pretty_name=PRETTY_NAME, reference_url=PAPER_URL)  # pyright: ignore[reportArgumentType]
def model_swarms_merge(
    batch: TensorBatch,
    weight: Annotated[torch.Tensor, BatchParameter(float, ParameterScope.INPUT)],
) -> torch.Tensor:
    """sum_k weight_k * tensor_k: a particle of the swarm, i.e. `linear` without normalisation."""
    return linear_merge.implementation(batch, weight=weight, normalize=False)  # pyright: ignore[reportAttributeAccessIssue]


def register_method(module=None) -> None:
    """Register `model_swarms` with mergekit (idempotent)."""
    from mergekit import merge_methods

    if all(method.spec.name != METHOD_NAME for method in merge_methods.registered_methods()):
        merge_methods.register(model_swarms_merge)  # pyright: ignore[reportArgumentType]  (see `model_swarms_merge`)


def extend_mergekit_yaml(module) -> None:
    """Give `mergekit-yaml` the swarm flags and route swarm recipes to the search."""
    import click

    # here, not at the top: this module is imported while mergekit itself is being imported, and the
    # CLI imports mergekit's options
    from mergekit_swarm.cli import SWARM_FLAGS, run_recipe_file

    command = module.main
    if getattr(command, "_model_swarms", False):
        return
    mergekit_callback = command.callback
    command.params[2:2] = SWARM_FLAGS  # after CONFIG_FILE and OUT_PATH, in our order

    def callback(**kwargs):
        ours = {flag.name: kwargs.pop(flag.name) for flag in SWARM_FLAGS}
        if is_swarm_recipe(kwargs["config_file"]):
            from mergekit.options import MergeOptions

            options = {k: v for k, v in kwargs.items() if k in MergeOptions.model_fields}
            return run_recipe_file(kwargs["config_file"], kwargs["out_path"], MergeOptions(**options), **ours)
        used = [f"--{name.replace('_', '-')}" for name, value in ours.items() if value not in (None, False)]
        if used:
            raise click.UsageError(f"{', '.join(used)} only apply to model_swarms search recipes")
        return mergekit_callback(**kwargs)

    command.callback = callback
    command._model_swarms = True


def extend_mergekit_multi(module) -> None:
    """Let `mergekit-multi` run `model_swarms` search documents as stages (see `mergekit_swarm.commands.multistage`);
    a multi-stage recipe without one runs exactly as stock."""
    from pathlib import Path

    from mergekit_swarm.commands.multistage import STAGES, run_stage

    if getattr(module, "_model_swarms", False):
        return
    stock_load, stock_patch, stock_execute = module.load_config, module.patched_config, module.MergeModelTask.execute
    stock_callback = module.main.callback

    def load_config(config_source, intermediate_dir):
        STAGES.intermediate_dir = intermediate_dir
        return stock_load(STAGES.split(config_source), intermediate_dir)

    def patched_config(config, merge_names, working_dir):
        config, used = stock_patch(config, merge_names, working_dir)
        if not STAGES.stages:
            return config, used
        models = []
        for model in config.models or []:  # base+stage: a LoRA-pool winner used as an adapter of its base
            lora = model.model.lora
            if lora is not None and lora.path in merge_names:
                used.add(lora.path)
                lora = lora.model_copy(update={"path": str(Path(working_dir) / lora.path)})
                model = model.model_copy(update={"model": model.model.model_copy(update={"lora": lora})})
            models.append(model)
        return config.model_copy(update={"models": models}) if config.models else config, used

    def execute(self, **kwargs):
        stage = STAGES.stage(self.name)
        if stage is None:
            return stock_execute(self, **kwargs)
        return run_stage(stage, self.config_yaml, self.out_path, self.options, lazy=self.lazy, name=self.name)

    def callback(**kwargs):
        STAGES.recipe_file = Path(kwargs["config_file"]).resolve()
        return stock_callback(**kwargs)

    module.load_config, module.patched_config = load_config, patched_config
    module.MergeModelTask.execute = execute
    module.main.callback = callback
    module._model_swarms = True


# Importing this module may itself have been what imported mergekit: apply to whatever is loaded.
PLUGIN_READY = True
_mergekit_swarm_hook.install()
