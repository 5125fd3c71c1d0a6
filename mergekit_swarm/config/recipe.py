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

from mergekit_swarm.config.adapters import AdapterOnBase, pool_members
from mergekit_swarm.config.evaluation import EvaluationSettings
from mergekit_swarm.core.errors import ExpertError
from mergekit_swarm.core.fingerprints import DigestCache, identities
from mergekit_swarm.core.names import display_names
from mergekit_swarm.core.run_options import Sources
from mergekit_swarm.core.storage import read_json
from mergekit_swarm.hub import HubModel, allowed_files, check_adapter_base, download
from mergekit_swarm.pso.settings import SwarmSettings
from mergekit_swarm.utilities import UtilityConfig

UNION = "union"
R = TypeVar("R", bound="MergeRecipe")


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
        merge = with_absolute_paths(self.merge, experts, base)  # mergekit helpers then read the local folders
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


def with_absolute_paths(
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
