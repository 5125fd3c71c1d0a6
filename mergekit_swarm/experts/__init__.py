"""Expert pools (full models or LoRA adapters, presented as aligned tensors), their parameter groups
and the tokenizer of a run.

May import `core`, `pso`, `utilities`, `hub` and `config`.
"""

from __future__ import annotations

from pathlib import Path

from mergekit_swarm.config import MergeRecipe, SwarmRecipe
from mergekit_swarm.core.errors import ConfigError, ExpertError
from mergekit_swarm.experts.full import FullModelPool
from mergekit_swarm.experts.lora import BASE_EXPERT, LoraPool, is_adapter_folder
from mergekit_swarm.experts.pool import ExpertPool, TensorSpec
from mergekit_swarm.pso.settings import LoraSpace


def open_pool(
    paths: list[Path],
    *,
    allow_pickle: bool = False,
    names: list[str] | None = None,
    base: Path | None = None,
    trust_remote_code: bool = False,
    lora_space: LoraSpace = "factor",
) -> ExpertPool:
    """A LoRA pool if every expert is a PEFT adapter folder, a full-model pool if none is
    (`names`: how tables and messages call the experts; default: their folder names; `base`:
    the base model of LoRA adapters, read for adapters on parameters such as fused MoE experts;
    `lora_space`: the space LoRA experts are searched in, see `experts.lora`)."""
    for path in paths:
        if not path.is_dir():
            raise ExpertError(f"expert {path} does not exist or is not a folder")
    adapters = [is_adapter_folder(p) for p in paths]
    if all(adapters):
        return LoraPool(
            paths, allow_pickle=allow_pickle, names=names, base=base, trust_remote_code=trust_remote_code, space=lora_space
        )
    if any(adapters):
        lora, full = paths[adapters.index(True)], paths[adapters.index(False)]
        raise ExpertError(f"experts mix LoRA adapters ({lora}) and full models ({full}); use one kind per swarm")
    return FullModelPool(paths, allow_pickle=allow_pickle, names=names)


def open_recipe_pool(recipe: MergeRecipe, *, allow_pickle: bool = False, trust_remote_code: bool = False) -> ExpertPool:
    """The pool of a resolved recipe's `models:` (LoRA adapters of its `base_model`, which they require),
    LoRA experts in the search recipe's `swarm.lora_space` (a recipe of weights: factor space)."""
    experts, base = recipe.expert_folders, recipe.base_folder
    if base is None and any(is_adapter_folder(p) for p in experts):
        raise ConfigError(f"{recipe.source}: base_model: is required when the experts are LoRA adapters")
    swarm = recipe.swarm if isinstance(recipe, SwarmRecipe) else None
    if swarm is not None and swarm.base_as_expert:
        if not all(is_adapter_folder(p) for p in experts):
            raise ConfigError(f"{recipe.source}: swarm: base_as_expert is for LoRA experts; these are full models")
        return LoraPool(
            list(experts),
            allow_pickle=allow_pickle,
            names=[*recipe.expert_names(), BASE_EXPERT],
            base=base,
            trust_remote_code=trust_remote_code,
            space="update",
            zero_expert=True,
        )
    return open_pool(
        list(experts),
        allow_pickle=allow_pickle,
        names=recipe.expert_names(),
        base=base,
        trust_remote_code=trust_remote_code,
        lora_space=swarm.lora_space if swarm is not None else "factor",
    )


__all__ = ["ExpertPool", "FullModelPool", "LoraPool", "TensorSpec", "open_pool", "open_recipe_pool"]
