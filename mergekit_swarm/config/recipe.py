"""Recipes: mergekit recipes with `merge_method: model_swarms`.

A *search* recipe adds `swarm:` and `utility:` sections; a *weights* recipe (the one-shot
form, e.g. a winner's `mergekit_config.yml`) gives every model a `weight` instead. The
mergekit part is validated by mergekit's own `MergeConfiguration`; our sections are strict
(unknown keys are errors with a suggestion). Relative paths resolve against the recipe's
folder, so a recipe runs the same from any working directory.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import ValidationError

from mergekit_swarm.config.adapters import AdapterOnBase, pool_members
from mergekit_swarm.config.evaluation import EvaluationSettings
from mergekit_swarm.core.errors import ConfigError, ExpertError
from mergekit_swarm.core.fingerprints import DigestCache, identities
from mergekit_swarm.core.names import METHOD_NAME, SWARM_KEYS, display_names
from mergekit_swarm.core.run_options import Sources
from mergekit_swarm.core.schema import format_validation_error, unknown_key_message
from mergekit_swarm.core.storage import read_json, read_text
from mergekit_swarm.hub import HubModel, allowed_files, check_adapter_base, download, looks_like_repo_id
from mergekit_swarm.pso.settings import SwarmSettings
from mergekit_swarm.utilities import UtilityConfig, validate_utility

UNION = "union"
R = TypeVar("R", bound="MergeRecipe")
_REFUSED = {
    "slices": "slices: recipes are not supported by model_swarms; list whole models under models:",
    "modules": "modules: recipes are not supported by model_swarms; list whole models under models:",
}


@dataclass(frozen=True)
class MergeRecipe:
    """The mergekit part of a recipe, validated: absolute local folders, or Hub models that
    `resolve()` turns into local snapshot folders before any work starts."""

    merge: Any  # mergekit.config.MergeConfiguration
    experts: tuple[Path | HubModel | AdapterOnBase[Path | HubModel], ...]  # after `resolve()`: local folders only
    base_model: Path | HubModel | None
    tokenizer_source: Path | HubModel | str  # a model, or "union" (checked when the tokenizers are loaded)
    source: str  # where the recipe came from, for messages
    text: str  # the recipe as written
    hub_ids: dict[Path, str]  # snapshot folder -> the Hub model it holds ("org/name" or "org/name@rev")
    baked: dict[Path, str]  # baked folder -> "base+adapter", as recipes name it
    written_experts: tuple[Path | HubModel | AdapterOnBase[Path | HubModel], ...]  # as written (resolve() keeps them, located)

    def resolve(self: R, options: Sources | None = None) -> R:
        """The same recipe with every Hub model downloaded (or found in the cache), as `options`
        allow: pickled weights with `allow_pickle`, code files with `trust_remote_code`, into `cache_dir`."""
        options = options or Sources()
        hub_ids = dict(self.hub_ids)

        def local(model: Path | HubModel, where: str) -> Path:
            if not isinstance(model, HubModel):
                return model
            folder = download(
                model,
                where=f"{self.source}: {where}",
                allow_pickle=options.allow_pickle,
                trust_remote_code=options.trust_remote_code,
                cache_dir=options.cache_dir,
            )
            hub_ids[folder] = str(model)
            return folder

        def expert(model: Path | HubModel | AdapterOnBase[Path | HubModel], where: str) -> Path | AdapterOnBase[Path]:
            if isinstance(model, AdapterOnBase):
                return AdapterOnBase(local(model.base, f"{where} (its base)"), local(model.adapter, where))
            return local(model, where)

        written = self.written_experts
        located = [expert(m, f"models[{i}]") for i, m in enumerate(written)]
        base = local(self.base_model, "base_model") if self.base_model is not None else None
        tokenizer = (
            self.tokenizer_source if isinstance(self.tokenizer_source, str) else local(self.tokenizer_source, "tokenizer_source")
        )
        if isinstance(self.base_model, HubModel):
            for i, folder in enumerate(located):
                if isinstance(folder, Path) and (folder / "adapter_config.json").exists():
                    config = read_json(folder / "adapter_config.json", ExpertError)
                    check_adapter_base(config, str(self.base_model), f"{self.source}: models[{i}]")
        named = replace(self, hub_ids=hub_ids)
        folders, baked = pool_members(
            located,
            base,
            source=self.source,
            cache=options.lora_merge_cache,
            dtype=options.lora_merge_dtype,
            trust_remote_code=options.trust_remote_code,
            reference=named.reference,
        )
        experts = tuple(folders)
        merge = _with_absolute_paths(self.merge, experts, base)  # mergekit helpers then read the local folders
        return replace(
            self,
            merge=merge,
            experts=experts,
            base_model=base,
            tokenizer_source=tokenizer,
            hub_ids=hub_ids,
            baked=baked,
            written_experts=tuple(located),
        )

    @property
    def expert_folders(self) -> tuple[Path, ...]:
        """The experts' folders, as `resolve()` leaves them: Hub models downloaded, `base+adapter` baked (or,
        in a LoRA pool, its adapter). A recipe not resolved yet has none: TypeError."""
        return tuple(_folder(expert, "models") for expert in self.experts)

    @property
    def base_folder(self) -> Path | None:
        """The base model's folder (a resolved recipe's, as `expert_folders`), or None without `base_model`."""
        return None if self.base_model is None else _folder(self.base_model, "base_model")

    def reference(self, folder: Path) -> str:
        """How a model is named in recipes and cards: `base+adapter` for an adapter baked into its base,
        its Hub id (`org/name[@rev]`, mergekit's syntax) if it came from the Hub, else its absolute path."""
        return self.baked.get(folder) or self.hub_ids.get(folder, str(folder))

    def repo_and_revision(self, folder: Path) -> tuple[str, str | None]:
        """A model as transformers/PEFT name it: (repo id or path, revision or None)."""
        repo, _, revision = self.reference(folder).partition("@")
        return (repo, revision or None) if folder in self.hub_ids else (str(folder), None)

    def expert_names(self) -> list[str]:
        """Short names for tables: the Hub id, or the folder name (with its parent if two collide); a baked
        adapter by the adapter's."""
        written = self.written_experts
        shown = [w.adapter if isinstance(w, AdapterOnBase) and w.adapter != e else e for w, e in zip(written, self.experts)]
        return display_names([p if isinstance(p, Path) else Path(str(p)) for p in shown], self.hub_ids)

    def inputs(self) -> list[Path]:
        """The local files and folders this recipe reads: the recipe file, the experts (both parts of a
        `base+adapter`), the base model and the tokenizer source (after `resolve()`, Hub models are their
        snapshot folders and baked adapters our own cache's). Read-only to us."""
        written = [part for e in self.written_experts for part in _parts(e)]
        models = [*written, *(e for e in self.experts if e not in self.baked), self.base_model, self.tokenizer_source]
        recipe_file = [Path(self.source)] if Path(self.source).is_file() else []
        return recipe_file + [m for m in models if isinstance(m, Path)]

    def hub_models(self) -> list[str]:
        """The Hub ids (without revision) among the base and the experts, base first."""
        folders = [*([self.base_model] if self.base_model else []), *self.experts]
        ids = [self.hub_ids[f].split("@")[0] for f in folders if f in self.hub_ids]
        return list(dict.fromkeys(ids))

    @property
    def dtype(self) -> str | None:
        return self.merge.dtype

    @property
    def out_dtype(self) -> str | None:
        return self.merge.out_dtype or self.merge.dtype

    @property
    def chat_template(self) -> str | None:
        return self.merge.chat_template


@dataclass(frozen=True)
class SwarmRecipe(MergeRecipe):
    """A search recipe: what to search (`swarm:`) and for what (`utility:`)."""

    swarm: SwarmSettings
    utility: UtilityConfig
    evaluation: EvaluationSettings = EvaluationSettings()

    def inputs(self) -> list[Path]:
        """As `MergeRecipe.inputs`, plus what the utility reads: data files, python utility files,
        reward and judge models, lm-eval task folders."""
        return [*super().inputs(), *self.utility.input_paths()]

    def fingerprint(self) -> str:
        """Identifies the search (settings, the objective's files, the experts' and base model's weights,
        configs and tokenizer files, every byte hashed): the same fingerprint resumes, a different one
        is refused. `evaluation:` is not part of it. Digests are cached (`fingerprints.DigestCache`)."""
        models = [*self.experts, *([self.base_model] if self.base_model else [])]
        files = self.utility.input_files()
        ids = identities([*files, *models], allowed_files(allow_pickle=True, trust_remote_code=True), DigestCache())
        swarm = self.swarm.model_dump(mode="json")
        if not swarm["stall_probes"]:
            del swarm["probe_radius"]  # unused without probes: changing it changes no search
        payload = {
            "merge": self.merge.model_dump(mode="json"),
            "swarm": swarm,
            "utility": self.utility.model_dump(mode="json"),
            "files": {str(p): ids[str(p)] for p in files},
            # keyed by Hub id or path, not by cache folder: another --transformers-cache resumes
            "models": {self.reference(p): ids[str(p)] for p in models},
            "packages": self.utility.package_versions(),
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _folder(model: Path | HubModel | AdapterOnBase[Path | HubModel], where: str) -> Path:
    if not isinstance(model, Path):
        raise TypeError(f"{where}: {model} is not a local folder yet; resolve() the recipe first")
    return model


def _parts(expert) -> list:
    return [expert.base, expert.adapter] if isinstance(expert, AdapterOnBase) else [expert]


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
    return MergeRecipe(_with_absolute_paths(merge, experts, base), experts, base, tokenizer, source, text, {}, {}, experts)


def _with_absolute_paths(
    merge, experts: tuple[Path | HubModel | AdapterOnBase[Path | HubModel], ...], base: Path | HubModel | None
):
    """The mergekit configuration with its local model paths made absolute, so mergekit helpers
    given it (e.g. `chat_template: auto`) find the models from any working directory (after
    `resolve()`, each expert is the folder the pool reads: a baked adapter is no longer `base+adapter`)."""

    def placed(path, model: Path | HubModel):  # a mergekit ModelPath
        return path if isinstance(model, HubModel) else path.model_copy(update={"path": str(model)})

    def at(reference, model: Path | HubModel | AdapterOnBase[Path | HubModel]):
        if isinstance(model, AdapterOnBase):
            return reference.model_copy(
                update={"model": placed(reference.model, model.base), "lora": placed(reference.lora, model.adapter)}
            )
        if isinstance(model, HubModel):
            return reference
        return reference.model_copy(update={"model": placed(reference.model, model), "lora": None})

    update: dict[str, Any] = {"models": [m.model_copy(update={"model": at(m.model, p)}) for m, p in zip(merge.models, experts)]}
    if base is not None:
        update["base_model"] = at(merge.base_model, base)
    return merge.model_copy(update=update)


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
