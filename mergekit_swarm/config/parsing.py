"""Reading recipe files: YAML -> validated `SwarmRecipe` / `MergeRecipe` (see `config.recipe`).

The mergekit part is validated by mergekit's own `MergeConfiguration`; our sections are strict
(unknown keys are errors with a suggestion). Relative paths resolve against the recipe's folder,
so a recipe runs the same from any working directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from mergekit_swarm.config.adapters import AdapterOnBase
from mergekit_swarm.config.evaluation import EvaluationSettings
from mergekit_swarm.config.recipe import UNION, MergeRecipe, SwarmRecipe, with_absolute_paths
from mergekit_swarm.core.errors import ConfigError
from mergekit_swarm.core.names import METHOD_NAME, SWARM_KEYS
from mergekit_swarm.core.schema import format_validation_error, unknown_key_message
from mergekit_swarm.core.storage import read_text
from mergekit_swarm.hub import HubModel, looks_like_repo_id
from mergekit_swarm.pso.settings import SwarmSettings
from mergekit_swarm.utilities import UtilityConfig, validate_utility

_REFUSED = {
    "slices": "slices: recipes are not supported by model_swarms; list whole models under models:",
    "modules": "modules: recipes are not supported by model_swarms; list whole models under models:",
}


def load_recipe(path: str | Path) -> SwarmRecipe:
    """Read and validate a search recipe (`merge_method: model_swarms` with `swarm:` and `utility:`).

    mergekit's part is validated by mergekit's own `MergeConfiguration`; `swarm:`, `evaluation:` and
    `utility:` are strict (an unknown key is an error suggesting the closest one). Relative paths
    resolve against the recipe's folder; Hub models are only named here (`SwarmRecipe.resolve`
    downloads them).

    Args:
        path (`str` or `Path`):
            The recipe file (YAML).

    Returns:
        `SwarmRecipe`: the validated recipe, with the text as written (copied into the output folder).

    Raises:
        `ConfigError`: every problem, in one line naming the file and the key.

    Example:

    ```python
    >>> from mergekit_swarm import load_recipe
    >>> recipe = load_recipe("examples/quickstart/swarm.yml")
    >>> recipe.swarm.granularity
    'model'
    ```
    """
    data, text, base_dir = _read(path)
    return parse_recipe(data, base_dir=base_dir, source=str(path), text=text)


def load_weights_recipe(path: str | Path) -> MergeRecipe:
    """Read and validate a recipe of explicit weights (`model_swarms`, or `linear` with
    `normalize: false`) for `mergekit-swarm apply`."""
    data, text, base_dir = _read(path)
    source = str(path)
    if isinstance(data, dict) and any(key in data for key in SWARM_KEYS):
        raise ConfigError(f"{source}: this is a search recipe (swarm:/utility:); run it with `mergekit-swarm {source} OUT`")
    method = data.get("merge_method") if isinstance(data, dict) else None
    parameters = data.get("parameters") if isinstance(data, dict) else None
    if parameters is not None and not isinstance(parameters, dict):
        raise ConfigError(f"{source}: parameters: must be a mapping (e.g. normalize: false)")
    normalize = (parameters or {}).get("normalize") is False
    if not (method == METHOD_NAME or (method == "linear" and normalize)):
        raise ConfigError(
            f"{source}: merge_method is {method!r}; apply takes {METHOD_NAME} or linear with normalize: false "
            "(use mergekit-yaml for other methods)"
        )
    recipe = _parse_merge(data, base_dir, source, text, extra_keys=())
    for i, model in enumerate(recipe.merge.models):
        if "weight" not in (model.parameters or {}) and "weight" not in (recipe.merge.parameters or {}):
            raise ConfigError(f"{source}: models[{i}] has no weight")
    if recipe.base_model is not None and recipe.base_model not in recipe.experts and method == "linear":
        raise ConfigError(f"{source}: base_model is not among the models; mergekit would add it as an extra input")
    if recipe.merge.tokenizer_source is not None or recipe.merge.tokenizer is not None:
        raise ConfigError(
            f"{source}: tokenizer_source/tokenizer make mergekit rebuild the embeddings; apply keeps them as merged"
        )
    return recipe


def parse_recipe(data: Any, *, base_dir: Path, source: str = "recipe", text: str = "") -> SwarmRecipe:
    """Validate an already-parsed search recipe; relative paths resolve against `base_dir`."""
    if isinstance(data, dict) and data.get("merge_method") != METHOD_NAME:
        raise ConfigError(
            f"{source}: merge_method is {data.get('merge_method')!r}; a swarm recipe needs merge_method: {METHOD_NAME}"
        )
    if isinstance(data, dict) and "utility" not in data:
        raise ConfigError(f"{source}: missing the utility: section (what the swarm maximises)")
    recipe = _parse_merge(data, base_dir, source, text, extra_keys=SWARM_KEYS)
    if recipe.merge.parameters:
        raise ConfigError(f"{source}: parameters: is not used by a model_swarms search; the swarm finds the weights")
    for i, model in enumerate(recipe.merge.models):
        if model.parameters:
            raise ConfigError(f"{source}: models[{i}] has parameters:; a model_swarms search finds the weights itself")

    context = {"base_dir": base_dir}
    swarm = _validate_section(SwarmSettings, data.get("swarm") or {}, "swarm", source, context)
    try:
        particles = swarm.particle_count(len(recipe.experts))
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    if swarm.drop_k and not swarm.skipped_per_iteration(particles):
        raise ConfigError(
            f"{source}: swarm: drop_k/drop_n = {swarm.drop_k}/{swarm.drop_n} skips no evaluation with {particles} particles"
        )
    utility = _validate_utility(data["utility"], source, context)
    if swarm.holdout and not utility.can_hold_out():
        raise ConfigError(
            f"{source}: swarm: holdout needs a utility whose dev data is a file of examples; {utility.type!r} cannot be cut"
        )
    evaluation = _validate_section(EvaluationSettings, data.get("evaluation") or {}, "evaluation", source, context)
    fields = {name: getattr(recipe, name) for name in MergeRecipe.__dataclass_fields__}
    return SwarmRecipe(**fields, swarm=swarm, utility=utility, evaluation=evaluation)


def _read(path: str | Path) -> tuple[Any, str, Path]:
    path = Path(path)
    text = read_text(path, ConfigError, what="recipe")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    return data, text, path.resolve().parent


def _parse_merge(data: Any, base_dir: Path, source: str, text: str, *, extra_keys: tuple[str, ...]) -> MergeRecipe:
    """Validate the mergekit part of a recipe with mergekit, then resolve its local paths."""
    from mergekit.config import MergeConfiguration

    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a recipe is a YAML mapping (merge_method:, models:, ...)")
    known = [*MergeConfiguration.model_fields, *extra_keys]
    for key in data:
        if key not in known:
            raise ConfigError(f"{source}: {unknown_key_message(str(key), known, 'the recipe')}")
    for key, message in _REFUSED.items():
        if data.get(key) is not None:
            raise ConfigError(f"{source}: {message}")
    try:
        merge = MergeConfiguration.model_validate({k: v for k, v in data.items() if k not in extra_keys})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None
    except RuntimeError as exc:  # mergekit's own validators raise RuntimeError
        raise ConfigError(f"{source}: {exc}") from None
    _check_dtypes(merge, source)

    if not merge.models:  # (mergekit requires models:, slices: or modules:, and the last two are refused above)
        raise ConfigError(f"{source}: a recipe lists its models under models:")
    experts = tuple(_expert_source(m.model, base_dir, f"models[{i}]", source) for i, m in enumerate(merge.models))
    base = _model_source(merge.base_model, base_dir, "base_model", source) if merge.base_model else None
    if len(set(experts)) != len(experts):
        raise ConfigError(f"{source}: the same expert is listed twice under models:")
    first = experts[0].base if isinstance(experts[0], AdapterOnBase) else experts[0]  # a baked model has no tokenizer
    tokenizer = _tokenizer_source(merge, base_dir, base or first, source)
    return MergeRecipe(with_absolute_paths(merge, experts, base), experts, base, tokenizer, source, text, {}, {}, experts)


def _tokenizer_source(merge, base_dir: Path, default: Path | HubModel, source: str) -> Path | HubModel | str:
    """mergekit's `tokenizer_source` / `tokenizer.source`, without embedding surgery:
    `base`, a model, or `union` of identical vocabularies. Default: base model or first expert."""
    chosen = merge.tokenizer_source
    if merge.tokenizer is not None:
        if merge.tokenizer.tokens or merge.tokenizer.pad_to_multiple_of:
            raise ConfigError(
                f"{source}: tokenizer: tokens / pad_to_multiple_of change the embeddings' shape; "
                "a swarm needs the experts' vocabulary as it is"
            )
        chosen = merge.tokenizer.source
    if chosen is None:
        return default
    if chosen == "base":
        if merge.base_model is None:
            raise ConfigError(f"{source}: tokenizer_source: base needs a base_model")
        return default
    if chosen == UNION:
        return UNION
    return _model_source(chosen, base_dir, "tokenizer_source", source)


def _validate_section(cls, data: Any, name: str, source: str, context: dict):
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {name}: must be a mapping")
    try:
        return cls.model_validate(data, context=context)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, f"{source}: {name}")) from None


def _validate_utility(data: Any, source: str, context: dict) -> UtilityConfig:
    try:
        return validate_utility(data, context)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, f"{source}: utility")) from None
    except ValueError as exc:
        raise ConfigError(f"{source}: utility: {exc}") from None


def _check_dtypes(merge, source: str) -> None:
    from mergekit.common import dtype_from_name

    for key in ("dtype", "out_dtype"):
        value = getattr(merge, key)
        if value is not None:
            try:
                dtype_from_name(value)
            except (RuntimeError, ValueError, KeyError):
                raise ConfigError(f"{source}: {key}: unknown dtype {value!r} (float32, bfloat16, float16, float64)") from None


def _model_source(reference, base_dir: Path, where: str, source: str) -> Path | HubModel:
    """A local folder (relative to the recipe) if it exists, else a Hub repo id (`org/name[@rev]`)."""
    if reference.lora is not None:
        raise ConfigError(f"{source}: {where}: base+adapter names an expert; here give a model")
    return _location(reference.model.path, reference.model.revision, base_dir, where, source)


def _expert_source(reference, base_dir: Path, where: str, source: str) -> Path | HubModel | AdapterOnBase[Path | HubModel]:
    """As `_model_source`, or `base+adapter`, mergekit's syntax for an adapter applied to a model."""
    if reference.lora is None:
        return _model_source(reference, base_dir, where, source)
    model = _location(reference.model.path, reference.model.revision, base_dir, where, source)
    return AdapterOnBase(model, _location(reference.lora.path, reference.lora.revision, base_dir, where, source))


def _location(written: str, revision: str | None, base_dir: Path, where: str, source: str) -> Path | HubModel:
    path = Path(written).expanduser()
    resolved = (path if path.is_absolute() else base_dir / path).resolve()
    if resolved.is_dir():
        return resolved
    if looks_like_repo_id(written):
        return HubModel(written, revision, local_path=resolved)
    raise ConfigError(f"{source}: {where}: model folder {written} not found (looked in {resolved}), and it is not a Hub repo id")
