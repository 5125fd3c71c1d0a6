"""Experts that are PEFT LoRA adapters of one base model, searched in one of two spaces.

Every adapter is first brought to one common form: each expert's scaling s_k = lora_alpha / r
(or / sqrt(r) with rsLoRA, per-module patterns included) is folded into B (B_k' = s_k B_k) and the
combined adapter has r = lora_alpha = R (scaling 1), so each expert's own update s_k B_k A_k is
kept; a module an expert does not adapt is an update of zero (its tensors are zeros). Then:

* `factor` space (the paper, LoraHub, PEFT `linear`): lora_A and lora_B are combined
  separately, so a particle's update is (sum_k c_k s_k B_k)(sum_k c_k A_k), cross terms included.
  A is zero-padded to R rows and B to R columns, R = the largest rank in the pool.
* `update` space: a particle is W0 + sum_k c_k s_k B_k A_k exactly, the linear mix of the baked
  models (PEFT's `add_weighted_adapter(combination_type="cat")`): one adapter of rank R = the
  largest sum of the experts' ranks over modules, whose A stacks every expert's A_k in its own
  rows (the same for every particle: a constant, never combined) and whose B holds c_k s_k B_k in
  expert k's columns (the combined tensors; each expert's B is zero outside its block).

Padded rows and columns contribute exact zeros in both spaces.
"""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from mergekit_swarm.core.errors import ExpertError
from mergekit_swarm.core.storage import read_json
from mergekit_swarm.experts.pool import STORED_DTYPES, ExpertPool, SafetensorsFiles, TensorSpec, open_checkpoint
from mergekit_swarm.pso.settings import LoraSpace

# base_model.model.<module>.lora_A.weight / .lora_embedding_B (embeddings have no .weight)
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?:embedding_)?(?P<side>[AB])(?:\.weight)?$")
PEFT_PREFIX = "base_model.model."
BASE_EXPERT = "base (no update)"  # the name of the base model when it joins an update-space pool
# PEFT 0.21 checks rank/alpha patterns against module names only, and warns wrongly about those of
# LoRA on parameters (`.*\.gate_up_proj` of fused MoE experts), which it does apply.
PEFT_PATTERN_WARNING = ".*_pattern keys did not match any targeted module"
_UNSUPPORTED = {"use_dora": "DoRA", "lora_bias": "lora_bias", "use_qalora": "QALoRA"}


def read_adapter_config(folder: Path) -> dict[str, Any]:
    path = folder / "adapter_config.json"
    if not path.exists():
        raise ExpertError(f"{folder} is not a PEFT adapter folder (no adapter_config.json)")
    config = read_json(path, ExpertError)
    if config.get("peft_type") != "LORA":
        raise ExpertError(f"{path}: peft_type is {config.get('peft_type')!r}; only LORA adapters can be swarmed")
    for key, label in _UNSUPPORTED.items():
        if config.get(key):
            raise ExpertError(f"{path}: {label} adapters are not supported (set in {key!r})")
    return config


def is_adapter_folder(folder: Path) -> bool:
    return (folder / "adapter_config.json").exists()


class LoraPool(ExpertPool):
    """LoRA adapters, alpha-folded and placed into one common shape per tensor, in `space`.

    Non-LoRA tensors (`modules_to_save`, an embedding base layer PEFT saved beside the
    adapter) are combined like full weights, unless every expert has them bit-identical:
    then they are constants, copied from the first expert. Experts may adapt different modules.
    """

    def __init__(
        self,
        paths: list[Path],
        *,
        allow_pickle: bool = False,
        names: list[str] | None = None,
        in_memory_bytes: int = 1 << 30,
        base: Path | None = None,
        trust_remote_code: bool = False,
        space: LoraSpace = "factor",
        zero_expert: bool = False,
    ):
        if zero_expert:  # the base itself, as the last expert: no tensors, an update of zero everywhere
            if space != "update" or base is None:
                raise ValueError("the base joins as an expert only in update space, and needs the base model")
            paths = [*paths, base]
        super().__init__(paths, names)
        self.space = space
        adapters = paths[:-1] if zero_expert else paths
        self.configs = [read_adapter_config(p) for p in adapters]
        self.files = [open_checkpoint(p, "adapter_model", "adapter", allow_pickle=allow_pickle) for p in adapters]
        if zero_expert:
            self.configs.append(self.configs[0])
            self.files.append(SafetensorsFiles(paths[-1], {}))  # the base, the last of the paths
        raw = [{name: f.shape(name) for name in f.names()} for f in self.files]
        ranks = self._read_ranks(raw, base, trust_remote_code)
        self.rank, self._offset = _placement(ranks, space)
        if self.rank == 0:
            raise ExpertError(f"adapter {paths[0]} has no lora_A/lora_B tensors")
        shapes = self._shapes = self._aligned_shapes(raw)
        self._check_floating(self.files)
        first = self.files[0]
        self.constant_names = [
            name
            for name in shapes
            if (_LORA_KEY.match(name) is None and all(torch.equal(first.get(name), f.get(name)) for f in self.files[1:]))
            or (space == "update" and lora_side(name) == "A")  # every expert's A in its own rows: the same for all particles
        ]
        self.specs = [
            TensorSpec(name, shape, self._stored_dtype(name)) for name, shape in shapes.items() if name not in self.constant_names
        ]
        # Adapters are small: their prepared (padded, scaled) A/B tensors are worth holding in memory
        # for a whole search, which the particle writer does when all experts' together fit the budget.
        prepared_bytes = 4 * len(paths) * sum(math.prod(spec.shape) for spec in self.specs if _LORA_KEY.match(spec.name))
        self._small = prepared_bytes <= in_memory_bytes

    def _read_ranks(
        self, raw: list[dict[str, tuple[int, ...]]], base: Path | None, trust_remote_code: bool
    ) -> list[dict[str, int]]:
        """Rank of every (expert, module) it adapts, read from the tensors and configs, and (into `_scale`,
        `_experts_of`) its scaling and, for LoRA on (fused MoE) parameters, the experts it stacks, read from
        the layers PEFT builds for that config (see `_parameter_layers`)."""
        self._scale: list[dict[str, float]] = []
        self._experts_of: dict[str, int] = {}  # module -> experts stacked in its lora_A/lora_B (parameter LoRA)
        ranks = []
        for config, path, shapes in zip(self.configs, self.paths, raw):
            wrapped = _parameter_layers(config, base, trust_remote_code, path) if config.get("target_parameters") else {}
            rank, scale = {}, {}
            for name in shapes:
                if (m := _LORA_KEY.match(name)) and m["side"] == "A":
                    module = m["module"]
                    if module in wrapped:
                        rank[module], experts, scale[module] = wrapped[module]
                        if shapes[name][0] != rank[module] * experts:
                            raise ExpertError(
                                f"adapter {path}: {name!r} has {shapes[name][0]} rows; PEFT expects rank {rank[module]} "
                                f"x {experts} experts for this config"
                            )
                        if self._experts_of.setdefault(module, experts) != experts:
                            raise ExpertError(f"adapter {path}: {module} spans {experts} experts, other adapters another count")
                    else:
                        rank[module] = shapes[name][0]
                        scale[module] = _scaling(config, module, rank[module], path)
            ranks.append(rank)
            self._scale.append(scale)
        return ranks

    def _aligned_shapes(self, raw: list[dict[str, tuple[int, ...]]]) -> dict[str, tuple[int, ...]]:
        """The common (padded) shape of every tensor of any expert, checked across the experts that
        have it; LoRA modules may be missing from some experts (an update of zero), other tensors not."""
        shapes: dict[str, tuple[int, ...]] = {}
        owner: dict[str, int] = {}
        for k, tensors in enumerate(raw):
            for name, shape in tensors.items():
                padded = self._padded_shape(name, shape)
                if name not in shapes:
                    shapes[name], owner[name] = padded, k
                elif shapes[name] != padded:
                    j = owner[name]
                    raise ExpertError(
                        f"expert {self.names[k]!r} ({self.paths[k]}): tensor {name!r} has shape {list(padded)}, "
                        f"but {list(shapes[name])} in {self.names[j]!r}"
                    )
        for name, k in owner.items():
            lacking = [j for j, tensors in enumerate(raw) if name not in tensors]
            if lacking and _LORA_KEY.match(name) is None:
                j = lacking[0]
                raise ExpertError(
                    f"expert {self.names[j]!r} ({self.paths[j]}) has no tensor {name!r}, which {self.names[k]!r} has"
                )
        return shapes

    def _stored_dtype(self, name: str) -> str:
        """How a combined tensor is stored: as the first expert that has it stores it."""
        return next(f.dtype(name) for f in self.files if name in f.weight_map)

    def _padded_shape(self, name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        m = _LORA_KEY.match(name)
        if m is None:  # modules_to_save and the like: combined as full tensors
            return shape
        axis = 0 if m["side"] == "A" else 1
        return shape[:axis] + (self.rank * self._experts_of.get(m["module"], 1),) + shape[axis + 1 :]

    def in_memory(self, name: str) -> bool:
        return self._small and _LORA_KEY.match(name) is not None

    def tensor(self, expert: int, name: str) -> torch.Tensor:
        m = _LORA_KEY.match(name)
        if m is None:
            return self.files[expert].get(name)
        out = torch.zeros(self._shapes[name], dtype=torch.float32)
        if self.space == "update" and m["side"] == "A":  # the constant: every expert's A in its own rows
            for k in range(len(self)):
                self._place(k, name, m, out)
            dtypes = {f.dtype(name) for f in self.files if name in f.weight_map}
            return out.to(STORED_DTYPES[dtypes.pop()]) if len(dtypes) == 1 else out  # exact either way
        self._place(expert, name, m, out)
        return out

    def _place(self, expert: int, name: str, m: re.Match[str], out: torch.Tensor) -> None:
        """Expert `expert`'s A (or s_k B) of `name` (`m`: its `_LORA_KEY` match) into its rows (columns) of
        `out`; nothing if it does not adapt that module. PEFT stacks the experts of parameter LoRA as
        (experts, rank, in) in lora_A and (out, rank, experts) in lora_B: each of them is placed the same way."""
        if name not in self.files[expert].weight_map:
            return
        raw = self.files[expert].get(name)
        experts = self._experts_of.get(m["module"], 1)
        start = self._offset[expert].get(m["module"], 0)
        if m["side"] == "A":
            rank = raw.shape[0] // experts
            out.view(experts, self.rank, -1)[:, start : start + rank] = raw.view(experts, rank, raw.shape[1])
        else:
            rank = raw.shape[1] // experts
            scaled = raw.float() * self._scale[expert][m["module"]]
            out.view(raw.shape[0], self.rank, experts)[:, start : start + rank] = scaled.view(raw.shape[0], rank, experts)

    def unit(self, name: str) -> str:
        m = _LORA_KEY.match(name)
        return m["module"] if m else name

    def output_config(self, base_model: str) -> dict[str, Any]:
        """adapter_config.json of a combined adapter: rank R, scaling 1, no patterns, every module
        some expert adapts.

        `init_lora_weights` is reset to the plain default: initialisations such as PiSSA,
        OLoRA or LoftQ modify the base weights when the adapter is created.
        """
        config = dict(self.configs[0])
        config.update(
            r=self.rank,
            lora_alpha=self.rank,
            use_rslora=False,
            rank_pattern={},
            alpha_pattern={},
            init_lora_weights=True,
            base_model_name_or_path=base_model,
            inference_mode=True,
        )
        if any(c.get("target_modules") != config.get("target_modules") for c in self.configs):
            config.update(target_modules=self._adapted_modules(), layers_to_transform=None, layers_pattern=None)
        return config

    def _adapted_modules(self) -> list[str]:
        """The modules some expert adapts, by their full names (PEFT matches a name ending with a target)."""
        modules = {m["module"] for name in self._spec_index | dict.fromkeys(self.constant_names) if (m := _LORA_KEY.match(name))}
        return sorted(module.removeprefix(PEFT_PREFIX) for module in modules if module not in self._experts_of)


def lora_side(name: str) -> str | None:
    """ "A" or "B" for a lora_A / lora_B tensor, None for other tensors."""
    m = _LORA_KEY.match(name)
    return m["side"] if m else None


def _placement(ranks: list[dict[str, int]], space: LoraSpace) -> tuple[int, list[dict[str, int]]]:
    """The common rank R and where each expert's rows start, per module: all at 0 in factor space (R
    the largest rank); one after the other in update space (R the largest sum of ranks over modules)."""
    if space == "factor":
        return max((r for rank in ranks for r in rank.values()), default=0), [{} for _ in ranks]
    offsets: list[dict[str, int]] = [{} for _ in ranks]
    total: dict[str, int] = {}
    for k, rank in enumerate(ranks):
        for module, r in rank.items():
            offsets[k][module] = total.get(module, 0)
            total[module] = total.get(module, 0) + r
    return max(total.values(), default=0), offsets


def _parameter_layers(config: dict[str, Any], base: Path | None, trust_remote_code: bool, folder: Path):
    """module -> (rank, experts, scaling) of the LoRA layers PEFT puts on parameters (`target_parameters`,
    e.g. fused MoE experts) for this adapter config, read from the layers PEFT itself builds on a
    shape-only (meta) copy of the base model: which parameter a nested wrapper holds, its rank and
    alpha patterns and the experts it stacks are PEFT's to decide."""
    if base is None:
        raise ExpertError(f"{folder / 'adapter_config.json'}: target_parameters adapters need the base_model to be read")
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.lora import ParamWrapper
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = set(LoraConfig.__dataclass_fields__)
    settings = {k: v for k, v in config.items() if k in fields and k not in ("peft_type", "auto_mapping")}
    settings.update(init_lora_weights=True, inference_mode=True)
    try:
        model_config = AutoConfig.from_pretrained(base, trust_remote_code=trust_remote_code)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(model_config, trust_remote_code=trust_remote_code)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=PEFT_PATTERN_WARNING, category=RuntimeWarning)
            model = inject_adapter_in_model(LoraConfig(**settings), model, adapter_name="probe", low_cpu_mem_usage=True)
    except Exception as exc:  # PEFT's or transformers' own message says what does not fit
        raise ExpertError(f"{folder}: cannot place this adapter on {base} ({exc})") from None
    return {
        PEFT_PREFIX + name: (layer.r["probe"], layer.num_experts, float(layer.scaling["probe"]))
        for name, layer in model.named_modules()
        if isinstance(layer, ParamWrapper) and "probe" in layer.r
    }


def is_lora_tensor(name: str) -> bool:
    return _LORA_KEY.match(name) is not None


def lora_module(name: str) -> str | None:
    """The module a lora_A / lora_B tensor belongs to (with PEFT's prefix), None for other tensors."""
    m = _LORA_KEY.match(name)
    return m["module"] if m else None


def _scaling(config: dict[str, Any], module: str, rank: int, folder: Path) -> float:
    """PEFT's scaling for one module: alpha/r, or alpha/sqrt(r) with rsLoRA."""
    from peft.utils.other import get_pattern_key

    key = module.removeprefix(PEFT_PREFIX)
    patterns = config.get("alpha_pattern") or {}
    alpha = patterns.get(get_pattern_key(list(patterns), key), config.get("lora_alpha", 8))  # PEFT's default alpha
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or rank <= 0:
        raise ExpertError(f"{folder / 'adapter_config.json'}: invalid lora_alpha {alpha!r} for {module}")
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
