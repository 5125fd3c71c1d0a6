"""What every expert pool offers: aligned tensor names, shapes and memory-mapped reads.

A pool presents n experts as n aligned lists of tensors: the same names, in the same
order, with the same shapes. `tensor(k, name)` reads one tensor of expert k from its
memory-mapped safetensors file (prepared, for LoRA: rank-padded and alpha-folded), so
materialising a particle never holds more than one tensor per expert at a time.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from safetensors import safe_open

from mergekit_swarm.core.errors import ExpertError
from mergekit_swarm.core.names import display_names
from mergekit_swarm.core.storage import read_json, required

STORED_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape (after preparation) and stored dtype of one aligned tensor."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # safetensors name, e.g. "BF16"

    @property
    def torch_dtype(self) -> torch.dtype:
        return STORED_DTYPES[self.dtype]


class SafetensorsFiles:
    """Read-only access to the tensors of one checkpoint (single file or sharded)."""

    def __init__(self, folder: Path, weight_map: dict[str, str]):
        self.folder = folder
        self.weight_map = weight_map  # tensor name -> shard file name
        self._handles: dict[str, object] = {}

    def _read(self, name: str, what):
        """`what(handle)` on the shard holding `name`; read errors name the file and tensor."""
        shard = self.weight_map[name]
        try:
            if shard not in self._handles:
                self._handles[shard] = safe_open(str(self.folder / shard), framework="pt", device="cpu")
            return what(self._handles[shard])
        except Exception as exc:  # safetensors raises its own error types
            raise ExpertError(f"{self.folder / shard}: cannot read tensor {name!r} ({exc})") from None

    def names(self) -> list[str]:
        return list(self.weight_map)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._read(name, lambda h: h.get_slice(name).get_shape()))

    def dtype(self, name: str) -> str:
        return self._read(name, lambda h: h.get_slice(name).get_dtype())

    def get(self, name: str) -> torch.Tensor:
        return self._read(name, lambda h: h.get_tensor(name))


_TORCH_TO_STORED = {dtype: name for name, dtype in STORED_DTYPES.items()}


class PickleFiles:
    """The same access to pickled checkpoints (`pytorch_model.bin`, sharded or not), only with
    --allow-pickle: loaded with `weights_only=True` (no code runs) and memory-mapped."""

    def __init__(self, folder: Path, weight_map: dict[str, str]):
        self.folder, self.weight_map = folder, weight_map
        self._shards: dict[str, dict[str, torch.Tensor]] = {}

    def load(self, shard: str) -> dict[str, torch.Tensor]:
        if shard not in self._shards:
            path = self.folder / shard
            try:
                try:
                    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                except RuntimeError:  # the legacy (non-zip) format cannot be memory-mapped
                    state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:
                raise ExpertError(f"{path}: cannot read this pickle checkpoint safely ({exc})") from None
            stray = (
                next((k for k, v in state.items() if not isinstance(v, torch.Tensor)), None) if isinstance(state, dict) else ""
            )
            if stray is not None:
                raise ExpertError(f"{path}: not a flat state dict of tensors (entry {stray!r})")
            self._shards[shard] = state
        return self._shards[shard]

    def _tensor(self, name: str) -> torch.Tensor:
        return self.load(self.weight_map[name])[name]

    def names(self) -> list[str]:
        return list(self.weight_map)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._tensor(name).shape)

    def dtype(self, name: str) -> str:
        dtype = self._tensor(name).dtype
        return _TORCH_TO_STORED.get(dtype, str(dtype))

    def get(self, name: str) -> torch.Tensor:
        return self._tensor(name)


class ExpertPool(ABC):
    """n experts of one architecture, seen as aligned tensors.

    `specs` are the tensors the swarm combines; `constant_names` are tensors every
    expert has bit-identical (e.g. a base layer PEFT saved beside the adapter): they
    are taken from the first expert as they are, never combined.
    """

    def __init__(self, paths: list[Path], names: list[str] | None = None):
        if len(paths) < 2:
            raise ExpertError("a swarm needs at least 2 experts under models:")
        self.paths = paths
        self.names = names or display_names(paths)
        self.specs: list[TensorSpec] = []
        self.constant_names: list[str] = []

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def tensor_names(self) -> list[str]:
        return [spec.name for spec in self.specs]

    def spec(self, name: str) -> TensorSpec:
        return self._spec_index[name]

    @cached_property
    def _spec_index(self) -> dict[str, TensorSpec]:
        return {spec.name: spec for spec in self.specs}

    @abstractmethod
    def tensor(self, expert: int, name: str) -> torch.Tensor:
        """Tensor `name` of expert `expert`, ready to be combined linearly."""

    def in_memory(self, name: str) -> bool:
        """Whether tensor `name` is small enough, over all experts, to be held in memory (prepared)
        for a whole search by whoever combines it over and over, instead of read again per pass."""
        return False

    @abstractmethod
    def unit(self, name: str) -> str:
        """The unit a tensor belongs to for `granularity: tensor` (LoRA: its module)."""

    def _check_aligned(self, per_expert: list[dict[str, tuple[int, ...]]]) -> None:
        """Every expert has the first expert's tensors with the same shapes."""
        reference = per_expert[0]
        for k, shapes in enumerate(per_expert[1:], start=1):
            for name, shape in reference.items():
                if name not in shapes:
                    raise ExpertError(
                        f"expert {self.names[k]!r} ({self.paths[k]}) has no tensor {name!r}, which {self.names[0]!r} has"
                    )
                if shapes[name] != shape:
                    raise ExpertError(
                        f"expert {self.names[k]!r} ({self.paths[k]}): tensor {name!r} has shape {list(shapes[name])}, "
                        f"but {list(shape)} in {self.names[0]!r}"
                    )
            extra = [name for name in shapes if name not in reference]
            if extra:
                raise ExpertError(
                    f"expert {self.names[k]!r} ({self.paths[k]}) has tensor {extra[0]!r}, which {self.names[0]!r} lacks"
                )

    def _check_floating(self, files: list[SafetensorsFiles | PickleFiles]) -> None:
        for k, f in enumerate(files):
            for name in f.names():
                if f.dtype(name) not in STORED_DTYPES:
                    raise ExpertError(
                        f"expert {self.names[k]!r}: tensor {name!r} has dtype {f.dtype(name)}; "
                        "only floating-point tensors can be merged"
                    )


def open_checkpoint(folder: Path, stem: str, what: str, *, allow_pickle: bool = False) -> SafetensorsFiles | PickleFiles:
    """`stem.safetensors` or its sharded index in `folder`. Pickled weights (`pytorch_model.bin`
    for "model", `adapter_model.bin` for adapters) only with `allow_pickle`."""
    single = folder / f"{stem}.safetensors"
    index = folder / f"{stem}.safetensors.index.json"
    if index.exists():
        return SafetensorsFiles(folder, _weight_map(folder, index))
    if single.exists():
        try:
            with safe_open(str(single), framework="pt") as handle:
                names = list(handle.keys())
        except Exception as exc:  # safetensors raises its own error types
            raise ExpertError(f"{single}: not a readable safetensors file ({exc})") from None
        return SafetensorsFiles(folder, {name: single.name for name in names})
    pickle_stem = "pytorch_model" if stem == "model" else stem
    pickle_index, pickle_single = folder / f"{pickle_stem}.bin.index.json", folder / f"{pickle_stem}.bin"
    if allow_pickle and pickle_index.exists():
        return PickleFiles(folder, _weight_map(folder, pickle_index))
    if allow_pickle and pickle_single.exists():
        files = PickleFiles(folder, {})
        files.weight_map = {name: pickle_single.name for name in files.load(pickle_single.name)}
        return files
    pickles = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt"))
    if pickles:
        raise ExpertError(
            f"{what} {folder} has only pickle weights ({pickles[0]}); convert them to safetensors, "
            "or pass --allow-pickle to load them with torch.load(weights_only=True)"
        )
    raise ExpertError(f"{what} {folder} has no {stem}.safetensors (or sharded index)")


def _weight_map(folder: Path, index: Path) -> dict[str, str]:
    """The tensor -> shard map of a sharded checkpoint's index; every shard is a file of `folder`
    itself (a name with `/`, `..` or an absolute path could reach any file on the machine)."""
    weight_map = required(read_json(index, ExpertError), "weight_map", str(index), ExpertError, dict)
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or Path(shard).name != shard or shard in ("", ".", ".."):
            raise ExpertError(f"{index}: tensor {name!r} is mapped to {shard!r}, which is not a file name in {folder}")
    missing = sorted({f for f in weight_map.values() if not (folder / f).is_file()})
    if missing:
        raise ExpertError(f"{index} lists shard {missing[0]!r}, which does not exist")
    return weight_map
