"""Experts that are PEFT LoRA adapters of one base model.

As in the paper (and LoraHub, PEFT `linear`), lora_A and lora_B are combined
separately, so the merged update is (sum_k c_k B_k)(sum_k c_k A_k). To combine adapters
of different ranks and scalings, every adapter is brought to one common form first:

* each expert's scaling s_k = lora_alpha / r (or / sqrt(r) with rsLoRA, per-module
  patterns included) is folded into B: B_k' = s_k B_k, and the output adapter has
  r = lora_alpha = R (scaling 1), so each expert's own update s_k B_k A_k is unchanged;
* A is zero-padded to R rows and B to R columns, R = the largest rank in the pool;
  the padded rows/columns contribute exact zeros.
"""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from mergekit_swarm.errors import ExpertError
from mergekit_swarm.experts.pool import ExpertPool, TensorSpec, open_checkpoint
from mergekit_swarm.storage import read_json

# base_model.model.<module>.lora_A.weight / .lora_embedding_B (embeddings have no .weight)
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?:embedding_)?(?P<side>[AB])(?:\.weight)?$")
_PEFT_PREFIX = "base_model.model."
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
    """LoRA adapters, rank-padded and alpha-folded into one common shape per tensor.

    Non-LoRA tensors (`modules_to_save`, an embedding base layer PEFT saved beside the
    adapter) are combined like full weights, unless every expert has them bit-identical:
    then they are constants, copied from the first expert.
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
    ):
        super().__init__(paths, names)
        self.configs = [read_adapter_config(p) for p in paths]
        self.files = [open_checkpoint(p, "adapter_model", "adapter", allow_pickle=allow_pickle) for p in paths]
        raw = [{name: f.shape(name) for name in f.names()} for f in self.files]
        # Rank and scaling of every (expert, module), read from the tensors and configs; for LoRA on
        # (fused MoE) parameters, from the layers PEFT builds for that config (see `_parameter_layers`).
        self._scale: list[dict[str, float]] = []
        self._experts_of: dict[str, int] = {}  # module -> experts stacked in its lora_A/lora_B (parameter LoRA)
        ranks = []
        for config, path, shapes in zip(self.configs, paths, raw):
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
        self.rank = max(max(r.values(), default=0) for r in ranks)
        if self.rank == 0:
            raise ExpertError(f"adapter {paths[0]} has no lora_A/lora_B tensors")
        per_expert = [{name: self._padded_shape(name, shape) for name, shape in shapes.items()} for shapes in raw]
        self._check_aligned(per_expert)
        self._check_floating(self.files)
        first = self.files[0]
        self.constant_names = [
            name
            for name in first.names()
            if not _LORA_KEY.match(name) and all(torch.equal(first.get(name), f.get(name)) for f in self.files[1:])
        ]
        self.specs = [
            TensorSpec(name, per_expert[0][name], first.dtype(name)) for name in first.names() if name not in self.constant_names
        ]
        # Adapters are small: their prepared (padded, scaled) A/B tensors are worth holding in memory
        # for a whole search, which the materializer does when all experts' together fit the budget.
        prepared_bytes = 4 * len(paths) * sum(math.prod(spec.shape) for spec in self.specs if _LORA_KEY.match(spec.name))
        self._small = prepared_bytes <= in_memory_bytes

    def _padded_shape(self, name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        m = _LORA_KEY.match(name)
        if m is None:  # modules_to_save and the like: combined as full tensors
            return shape
        axis = 0 if m["side"] == "A" else 1
        return shape[:axis] + (self.rank * self._experts_of.get(m["module"], 1),) + shape[axis + 1 :]

    def in_memory(self, name: str) -> bool:
        return self._small and _LORA_KEY.match(name) is not None

    def tensor(self, expert: int, name: str) -> torch.Tensor:
        raw = self.files[expert].get(name)
        m = _LORA_KEY.match(name)
        if m is None:
            return raw
        out = torch.zeros(self._padded_shape(name, tuple(raw.shape)), dtype=torch.float32)
        # PEFT stacks the experts of parameter LoRA as (experts, rank, in) in lora_A and (out, rank, experts)
        # in lora_B; padding the rank of every expert keeps each expert's own update.
        experts = self._experts_of.get(m["module"], 1)
        if m["side"] == "A":
            out.view(experts, self.rank, -1)[:, : raw.shape[0] // experts] = raw.view(experts, -1, raw.shape[1])
        else:
            scaled = raw.float() * self._scale[expert][m["module"]]
            out.view(raw.shape[0], self.rank, experts)[:, : raw.shape[1] // experts] = scaled.view(raw.shape[0], -1, experts)
        return out

    def unit(self, name: str) -> str:
        m = _LORA_KEY.match(name)
        return m["module"] if m else name

    def output_config(self, base_model: str) -> dict[str, Any]:
        """adapter_config.json of a combined adapter: rank R, scaling 1, no patterns.

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
        return config


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
        _PEFT_PREFIX + name: (layer.r["probe"], layer.num_experts, float(layer.scaling["probe"]))
        for name, layer in model.named_modules()
        if isinstance(layer, ParamWrapper) and "probe" in layer.r
    }


def is_lora_tensor(name: str) -> bool:
    return _LORA_KEY.match(name) is not None


def _scaling(config: dict[str, Any], module: str, rank: int, folder: Path) -> float:
    """PEFT's scaling for one module: alpha/r, or alpha/sqrt(r) with rsLoRA."""
    from peft.utils.other import get_pattern_key

    key = module.removeprefix(_PEFT_PREFIX)
    patterns = config.get("alpha_pattern") or {}
    alpha = patterns.get(get_pattern_key(patterns.keys(), key), config.get("lora_alpha", 8))  # PEFT's default alpha
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or rank <= 0:
        raise ExpertError(f"{folder / 'adapter_config.json'}: invalid lora_alpha {alpha!r} for {module}")
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
