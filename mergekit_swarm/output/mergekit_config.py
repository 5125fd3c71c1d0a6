"""`mergekit_config.yml`: the winner as a plain recipe of weights, and back.

Full-model pools get a vanilla mergekit recipe, `merge_method: linear` with
`normalize: false`, that stock `mergekit-yaml` (plugin not installed) reproduces bit for
bit. LoRA pools searched in factor space get the same weights under `merge_method:
model_swarms`, which `mergekit-swarm apply` re-materialises bit for bit: stock mergekit can
only bake an adapter into its base model, not combine adapters as adapters. LoRA pools
searched in update space get a vanilla `linear` of the experts baked into their base
(`base+adapter`), which is the base with the winning adapter merged in, to float rounding.

With one parameter group a model's weight is a scalar. Otherwise it is a list of
`{filter, value}` with one entry per tensor, named in full. mergekit's filters are
substring matches and the first match wins, so the entries are sorted longest name
first: a filter listed before a tensor's own entry is at least as long as that tensor's
name, so it can only match it if it is that very name (`layers.11.` never falls to
`layers.1.`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import yaml

from mergekit_swarm.config import MergeRecipe
from mergekit_swarm.core.errors import ConfigError
from mergekit_swarm.core.names import METHOD_NAME, RECIPE_FILE
from mergekit_swarm.experts import ExpertPool, LoraPool
from mergekit_swarm.experts.groups import GroupLayout
from mergekit_swarm.experts.lora import PEFT_PREFIX, lora_module

_HEADER = {
    "full": "# The swarm's winner as a vanilla mergekit recipe: `mergekit-yaml {file} out/` reproduces its\n"
    "# weights bit for bit (no plugin needed). Coefficients are per tensor when the search was per\n"
    "# layer/tensor. `base_model` is the first expert only to make it mergekit's config/tokenizer donor.\n",
    "lora": "# The swarm's winner (LoRA adapters combined as adapters): `mergekit-swarm apply {file} out/`\n"
    "# re-materialises it bit for bit. Stock mergekit can only bake an adapter into its base model.\n",
    "lora-update": "# The swarm's winner (LoRA experts mixed in update space) as a vanilla mergekit recipe:\n"
    "# `mergekit-yaml {file} out/ --lora-merge-cache CACHE` bakes each expert into its base and mixes the baked\n"
    "# models, which gives the base with the winning adapter of this folder merged in, to float rounding\n"
    "# (mergekit adds the baked models, PEFT adds one merged update). The adapter itself is the exact winner.\n",
    "unplannable": "# The swarm's winner as explicit weights: `mergekit-swarm apply {file} out/` re-materialises it\n"
    "# bit for bit. Stock mergekit cannot: {problem}.\n",
}


def winner_recipe(
    pool: ExpertPool,
    layout: GroupLayout,
    coefficients: np.ndarray,
    *,
    models: list[str],
    base_model: str | None,
    dtype: str | None,
    out_dtype: str | None,
    chat_template: str | None = None,
    file: str = RECIPE_FILE,
) -> str:
    """The YAML text of the recipe that reproduces `coefficients` over `pool`, whose experts
    are named `models` (Hub ids or absolute paths), in pool order; `file` is the name its
    header tells users to run.

    Full-model pools get a vanilla `linear` recipe when stock mergekit plans exactly the
    experts' tensors; otherwise (LoRA pools, architectures mergekit lacks or defines with other
    tensor names) a `model_swarms` recipe whose header says why stock mergekit cannot run it.
    """
    is_lora = isinstance(pool, LoraPool)
    if is_lora and pool.space == "update":
        return _baked_recipe(pool, layout, coefficients, models, base_model, dtype, out_dtype, chat_template, file)
    problem = None if is_lora else stock_plan_problem(pool)
    vanilla = not is_lora and problem is None
    recipe: dict = {"merge_method": "linear" if vanilla else METHOD_NAME}
    if is_lora:
        recipe["base_model"] = base_model
    else:
        # A base_model that is not among the models would become an extra input of `linear`.
        recipe["base_model"] = models[0]
    if vanilla:
        recipe["parameters"] = {"normalize": False}
    for key, value in (("dtype", dtype), ("out_dtype", out_dtype), ("chat_template", chat_template)):
        if value is not None:
            recipe[key] = value
    order = sorted(range(len(pool.specs)), key=lambda t: -len(pool.specs[t].name))  # stable: ties keep pool order
    recipe["models"] = [
        {"model": name, "parameters": {"weight": _weight(pool.specs, layout, coefficients[:, k], order)}}
        for k, name in enumerate(models)
    ]
    kind = "lora" if is_lora else "full" if vanilla else "unplannable"
    header = _HEADER[kind].format(file=file, problem=problem)
    return header + yaml.safe_dump(recipe, sort_keys=False, width=1000)


def _baked_recipe(
    pool: LoraPool,
    layout: GroupLayout,
    coefficients: np.ndarray,
    models: list[str],
    base_model: str | None,
    dtype: str | None,
    out_dtype: str | None,
    chat_template: str | None,
    file: str,
) -> str:
    """Update space: W0 + sum_k c_k s_k B_k A_k is sum_k c_k (W0 + s_k B_k A_k) when the c_k sum to 1, a
    `linear` of the baked experts (`base+adapter`, mergekit's syntax). Per-group weights filter the base's
    tensors; a tensor no group covers (one no expert adapts) is the base's own: weight 1 for the first
    model and 0 for the others, exactly."""
    baked = [model if model == base_model else f"{base_model}+{model}" for model in models]  # the base itself as is
    recipe: dict = {"merge_method": "linear", "base_model": baked[0], "parameters": {"normalize": False}}
    for key, value in (("dtype", dtype), ("out_dtype", out_dtype), ("chat_template", chat_template)):
        if value is not None:
            recipe[key] = value
    names = [base_tensor_name(spec.name) for spec in pool.specs]
    order = sorted(range(len(names)), key=lambda t: -len(names[t]))
    weights = []
    for k in range(len(models)):
        if len(layout) == 1:
            weights.append(float(coefficients[0, k]))
        else:
            entries = [{"filter": names[t], "value": float(coefficients[layout.of_tensor[t], k])} for t in order]
            weights.append([*entries, {"value": 1.0 if k == 0 else 0.0}])
    recipe["models"] = [{"model": model, "parameters": {"weight": weight}} for model, weight in zip(baked, weights)]
    return _HEADER["lora-update"].format(file=file) + yaml.safe_dump(recipe, sort_keys=False, width=1000)


def base_tensor_name(name: str) -> str:
    """The base model's tensor a LoRA checkpoint tensor changes: `base_model.model.X.lora_B.weight` -> `X.weight`
    (a module saved whole beside the adapter, `modules_to_save`, names the base tensor it replaces)."""
    module = lora_module(name)
    if module is not None:
        return module.removeprefix(PEFT_PREFIX) + ".weight"
    return name.removeprefix(PEFT_PREFIX).replace(".modules_to_save", "").replace(".base_layer", "")


def recipe_of(
    recipe: MergeRecipe, pool: ExpertPool, layout: GroupLayout, coefficients: np.ndarray, *, file: str = RECIPE_FILE
) -> str:
    """`winner_recipe` for coefficients over the experts of `recipe`: models named as the recipe
    names them (Hub ids or absolute paths), with its `dtype`, `out_dtype` and `chat_template` as written."""
    base = recipe.base_folder
    return winner_recipe(
        pool,
        layout,
        coefficients,
        models=[recipe.reference(p) for p in pool.paths],
        base_model=recipe.reference(base) if base is not None else None,
        dtype=recipe.dtype,
        out_dtype=recipe.merge.out_dtype,
        chat_template=recipe.chat_template,
        file=file,
    )


def stock_plan_problem(pool: ExpertPool) -> str | None:
    """Why stock mergekit would not plan exactly the pool's tensors, or None if it would.

    Asks mergekit itself (`get_architecture_info`, as `run_merge` does): it merges the weights
    its architecture definition lists (with aliases and tied names) and ignores any other
    tensor; an architecture without a definition is inferred, from the tensor names of the
    transformers class when transformers knows it, else from the checkpoint. Both can name
    tensors that transformers 5 does not store (Mixtral's fused `mlp.experts.gate_up_proj`,
    GPT-NeoX's `attention.bias` buffers).
    """
    from mergekit.architecture import get_architecture_info
    from mergekit.config import MergeConfiguration
    from mergekit.options import MergeOptions
    from transformers import AutoConfig

    models = [{"model": str(path), "parameters": {"weight": 1.0}} for path in pool.paths]
    try:
        plan = MergeConfiguration.model_validate({"merge_method": "linear", "models": models})
        arch = get_architecture_info(plan, MergeOptions())
        config = AutoConfig.from_pretrained(pool.paths[0])
        weights = arch.all_weights(config)
    except Exception as exc:  # an architecture mergekit cannot read at all
        return f"mergekit cannot plan this architecture ({type(exc).__name__}: {exc})"
    defined = "its definition of" if _has_definition(config) else "the layout it infers for"
    architecture = config.architectures[0] if config.architectures else config.model_type
    names = set(pool.tensor_names)
    known = {n for w in weights for n in (w.name, *(w.aliases or ()), *(w.tied_names or ()))}
    unplanned = sorted(names - known)
    if unplanned:
        return f"{defined} {architecture} does not include {unplanned[0]!r}, which the experts store"
    for w in weights:
        if not w.optional and not names & {w.name, *(w.aliases or ()), *(w.tied_names or ())}:
            return f"{defined} {architecture} expects {w.name!r}, which the experts do not store"
    return None


def _has_definition(config) -> bool:
    from mergekit.architecture import arch_info_for_config

    return arch_info_for_config(config) is not None


def _weight(specs: Sequence, layout: GroupLayout, column: np.ndarray, order: list[int]):
    if len(layout) == 1:
        return float(column[0])
    return [{"filter": specs[t].name, "value": float(column[layout.of_tensor[t]])} for t in order]


def recipe_coefficients(merge_config, pool: ExpertPool, source: str) -> tuple[GroupLayout, np.ndarray]:
    """Per-tensor coefficients (one group per tensor) of a recipe's `weight` parameters,
    resolved as mergekit resolves them: the model's own setting first, then the recipe's
    top-level one, each with filters matched in order (first match wins)."""
    from mergekit.config import evaluate_setting

    names = pool.tensor_names
    layout = GroupLayout("tensor", tuple(names), tuple(range(len(names))))
    coefficients = np.zeros((len(names), len(pool)))
    for k, model in enumerate(merge_config.models):
        scopes = [scope["weight"] for scope in (model.parameters, merge_config.parameters) if scope and "weight" in scope]
        if not scopes:
            raise ConfigError(f"{source}: models[{k}] has no weight")
        if any(_is_gradient(setting) for setting in scopes):
            raise ConfigError(f"{source}: models[{k}]: gradient weights (lists of numbers) are not supported here")
        for t, name in enumerate(names):
            values = (evaluate_setting(name, setting, 0.0, validate=float) for setting in scopes)
            value = next((v for v in values if v is not None), None)
            if value is None:
                raise ConfigError(f"{source}: models[{k}]: no weight matches tensor {name!r}")
            coefficients[t, k] = value
    return layout, coefficients


def _is_number(value) -> bool:
    """A number as mergekit reads one (numeric strings such as "5e-1" included)."""
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return False
        return True
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_gradient(setting) -> bool:
    """A list of numbers (interpolated over layers by mergekit), directly or under a filter."""
    if isinstance(setting, list):
        numbers = bool(setting) and all(_is_number(v) for v in setting)
        return numbers or any(_is_gradient(item) for item in setting)
    value = getattr(setting, "value", None)
    return value is not None and _is_gradient(value)
