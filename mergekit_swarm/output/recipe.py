"""`mergekit_config.yml`: the winner as a plain recipe of weights, and back.

Full-model pools get a vanilla mergekit recipe, `merge_method: linear` with
`normalize: false`, that stock `mergekit-yaml` (plugin not installed) reproduces bit for
bit. LoRA pools get the same weights under `merge_method: model_swarms`, which
`mergekit-swarm apply` re-materialises bit for bit: stock mergekit can only bake an
adapter into its base model, not combine adapters as adapters.

With one parameter group a model's weight is a scalar. Otherwise it is a list of
`{filter, value}` with one entry per tensor, named in full. mergekit's filters are
substring matches and the first match wins, so the entries are sorted longest name
first: a filter listed before a tensor's own entry is at least as long as that tensor's
name, so it can only match it if it is that very name (`layers.11.` never falls to
`layers.1.`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import yaml

from mergekit_swarm.config import METHOD_NAME
from mergekit_swarm.errors import ConfigError
from mergekit_swarm.experts import ExpertPool, LoraPool
from mergekit_swarm.groups import GroupLayout

RECIPE_FILE = "mergekit_config.yml"

_HEADER = {
    "full": "# The swarm's winner as a vanilla mergekit recipe: `mergekit-yaml {file} out/` reproduces it\n"
    "# bit for bit (no plugin needed). Coefficients are per tensor when the search was per layer/tensor.\n",
    "lora": "# The swarm's winner (LoRA adapters combined as adapters): `mergekit-swarm apply {file} out/`\n"
    "# re-materialises it bit for bit. Stock mergekit can only bake an adapter into its base model.\n",
}


def winner_recipe(
    pool: ExpertPool,
    layout: GroupLayout,
    coefficients: np.ndarray,
    *,
    base_model: Path | None,
    dtype: str | None,
    out_dtype: str | None,
    chat_template: str | None = None,
) -> str:
    """The YAML text of the recipe that reproduces `coefficients` over `pool`."""
    is_lora = isinstance(pool, LoraPool)
    recipe: dict = {"merge_method": METHOD_NAME if is_lora else "linear"}
    if is_lora:
        recipe["base_model"] = str(base_model)
    else:
        recipe["parameters"] = {"normalize": False}
    for key, value in (("dtype", dtype), ("out_dtype", out_dtype), ("chat_template", chat_template)):
        if value is not None:
            recipe[key] = value
    order = sorted(range(len(pool.specs)), key=lambda t: -len(pool.specs[t].name))  # stable: ties keep pool order
    recipe["models"] = [
        {"model": str(path), "parameters": {"weight": _weight(pool.specs, layout, coefficients[:, k], order)}}
        for k, path in enumerate(pool.paths)
    ]
    header = _HEADER["lora" if is_lora else "full"].format(file=RECIPE_FILE)
    return header + yaml.safe_dump(recipe, sort_keys=False, width=1000)


def _weight(specs: Sequence, layout: GroupLayout, column: np.ndarray, order: list[int]):
    if len(layout) == 1:
        return float(column[0])
    return [{"filter": specs[t].name, "value": float(column[layout.of_tensor[t]])} for t in order]


def recipe_coefficients(merge_config, pool: ExpertPool, source: str) -> tuple[GroupLayout, np.ndarray]:
    """Per-tensor coefficients (one group per tensor) of a recipe's `weight` parameters,
    resolved exactly as mergekit resolves them (filters, first match)."""
    from mergekit.config import evaluate_setting

    names = pool.tensor_names
    layout = GroupLayout("tensor", tuple(names), tuple(range(len(names))))
    coefficients = np.zeros((len(names), len(pool)))
    for k, model in enumerate(merge_config.models):
        setting = (model.parameters or {}).get("weight", (merge_config.parameters or {}).get("weight"))
        if setting is None:
            raise ConfigError(f"{source}: models[{k}] has no weight")
        if _is_gradient(setting):
            raise ConfigError(f"{source}: models[{k}]: gradient weights (lists of numbers) are not supported here")
        for t, name in enumerate(names):
            value = evaluate_setting(name, setting, 0.0, validate=float)
            if value is None:
                raise ConfigError(f"{source}: models[{k}]: no weight matches tensor {name!r}")
            coefficients[t, k] = value
    return layout, coefficients


def _is_gradient(setting) -> bool:
    """A list of numbers (interpolated over layers by mergekit), directly or under a filter."""
    if isinstance(setting, list):
        numbers = bool(setting) and all(isinstance(v, (int, float)) for v in setting)
        return numbers or any(_is_gradient(item) for item in setting)
    value = getattr(setting, "value", None)
    return value is not None and _is_gradient(value)
