"""Expert pools: full models or LoRA adapters, presented as aligned tensors."""

from __future__ import annotations

from pathlib import Path

from mergekit_swarm.errors import ExpertError
from mergekit_swarm.experts.full import FullModelPool
from mergekit_swarm.experts.lora import LoraPool, is_adapter_folder
from mergekit_swarm.experts.pool import ExpertPool, TensorSpec


def open_pool(paths: list[Path], *, allow_pickle: bool = False, names: list[str] | None = None) -> ExpertPool:
    """A LoRA pool if every expert is a PEFT adapter folder, a full-model pool if none is
    (`names`: how tables and messages call the experts; default: their folder names)."""
    for path in paths:
        if not path.is_dir():
            raise ExpertError(f"expert {path} does not exist or is not a folder")
    adapters = [is_adapter_folder(p) for p in paths]
    if all(adapters):
        return LoraPool(paths, allow_pickle=allow_pickle, names=names)
    if any(adapters):
        lora, full = paths[adapters.index(True)], paths[adapters.index(False)]
        raise ExpertError(f"experts mix LoRA adapters ({lora}) and full models ({full}); use one kind per swarm")
    return FullModelPool(paths, allow_pickle=allow_pickle, names=names)


__all__ = ["ExpertPool", "FullModelPool", "LoraPool", "TensorSpec", "open_pool"]
