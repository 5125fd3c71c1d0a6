"""`base+adapter` experts (mergekit's syntax for a LoRA adapter applied to a model), and which pool
a recipe's experts make once they are local folders.

* Every expert an adapter of the recipe's `base_model` (a plain adapter folder, or `base+adapter`
  with that very base): a LoRA pool, the adapters used as adapters (nothing is baked).
* Otherwise a full-model pool: each `base+adapter` baked into its own base, and a plain adapter
  folder into the recipe's `base_model`, by mergekit's own code (`ModelReference.merged`, the same
  bits as mergekit's `--lora-merge-cache`), cached once in `--lora-merge-cache` (default:
  `lora-merge-cache/` in mergekit-swarm's cache folder). Adapters trained on another base than the
  recipe's can only join such a full pool.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from mergekit_swarm.core.errors import ConfigError, ExpertError
from mergekit_swarm.core.fingerprints import cache_folder
from mergekit_swarm.hub import HubModel

Location = TypeVar("Location", bound="Path | HubModel", covariant=True)


@dataclass(frozen=True)
class AdapterOnBase(Generic[Location]):
    """`base+adapter`: a PEFT LoRA adapter named with the model it applies to (each local or a Hub model;
    `AdapterOnBase[Path]` once both are local folders, as `MergeRecipe.resolve` leaves them)."""

    base: Location
    adapter: Location

    def __str__(self) -> str:
        return f"{self.base}+{self.adapter}"


def is_adapter_folder(folder: Path) -> bool:
    return (folder / "adapter_config.json").is_file()


def pool_members(
    experts: Sequence[Path | AdapterOnBase[Path]],
    base: Path | None,
    *,
    source: str,
    cache: str | None,
    dtype: str | None,
    trust_remote_code: bool,
    reference: Callable[[Path], str],
) -> tuple[list[Path], dict[Path, str]]:
    """The experts' folders as the pool reads them (adapter folders for a LoRA pool, model folders for a
    full one), and for each baked folder the `base+adapter` reference recipes and cards name it by
    (`reference(folder)`: how a local folder or Hub snapshot is named)."""
    for i, expert in enumerate(experts):
        if isinstance(expert, AdapterOnBase) and not is_adapter_folder(expert.adapter):
            raise ConfigError(
                f"{source}: models[{i}]: {expert.adapter} is not a PEFT adapter folder (no adapter_config.json); "
                "in base+adapter the part after '+' is the adapter"
            )
    if all(_adapter_of(expert, base) for expert in experts):
        return [expert.adapter if isinstance(expert, AdapterOnBase) else expert for expert in experts], {}
    folders, baked = [], {}
    for i, expert in enumerate(experts):
        if isinstance(expert, AdapterOnBase):
            on = expert.base
        elif is_adapter_folder(expert):
            if base is None:
                raise ConfigError(
                    f"{source}: models[{i}] ({expert}) is a LoRA adapter among full models: write it as "
                    f"BASE+{expert} (mergekit's syntax) or give base_model:, and it is baked into that base"
                )
            on = base
        else:
            folders.append(expert)
            continue
        adapter = expert.adapter if isinstance(expert, AdapterOnBase) else expert
        folder = bake(on, adapter, cache=cache, dtype=dtype, trust_remote_code=trust_remote_code, where=f"{source}: models[{i}]")
        folders.append(folder)
        baked[folder] = f"{reference(on)}+{reference(adapter)}"
    return folders, baked


def _adapter_of(expert: Path | AdapterOnBase[Path], base: Path | None) -> bool:
    """Whether an expert is an adapter that a LoRA pool on `base` takes as it is."""
    if isinstance(expert, AdapterOnBase):
        return base is not None and Path(expert.base).resolve() == base.resolve()
    return is_adapter_folder(expert)


def bake(base: Path, adapter: Path, *, cache: str | None, dtype: str | None, trust_remote_code: bool, where: str) -> Path:
    """`adapter` merged into `base` by mergekit's own code (cached: an earlier bake is reused)."""
    from mergekit.common import ModelPath, ModelReference

    folder = Path(cache) if cache else cache_folder() / "lora-merge-cache"
    model, lora = ModelPath(path=str(base)), ModelPath(path=str(adapter))
    reference = ModelReference(model=model, lora=lora)
    target = folder / f"{model._unique_id()}_{lora._unique_id()}"  # where mergekit puts it
    try:
        merged = reference.merged(cache_dir=str(folder), trust_remote_code=trust_remote_code, lora_merge_dtype=dtype)
    except Exception as exc:  # PEFT's or transformers' own message says what does not fit
        shutil.rmtree(target, ignore_errors=True)  # mergekit would take a half-written bake for a finished one
        raise ExpertError(f"{where}: cannot bake {adapter} into {base} ({type(exc).__name__}: {exc})") from None
    return Path(merged.model.path)
