"""`--svd-rank R`: the winning adapter compressed to rank R by a truncated SVD of each module's update.

The exact winner of an update-space search has the sum of the experts' ranks; a smaller adapter is
often wanted for serving. Each LoRA module's update Delta = B A (scaling 1: alpha = r in our
adapters) is factorised, Delta = U S V^T, and its best rank-R approximation written as
B' = U_R S_R, A' = V_R^T (PEFT's `add_weighted_adapter(combination_type="svd")` does the same for
fixed weights). It is written beside the exact adapter, in `svd-rank-R/`, and its utility is
measured and reported next to the exact one: never a silent replacement.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mergekit_swarm.core.errors import ConfigError
from mergekit_swarm.experts.lora import lora_module, lora_side


def compress_adapter(source: Path, target: Path, rank: int) -> dict[str, float]:
    """Write `source`'s adapter (adapter_model.safetensors + adapter_config.json) truncated to `rank`
    into `target`; returns `max_relative_error`, the largest relative Frobenius error of a module's
    update (0: exact)."""
    config = json.loads((source / "adapter_config.json").read_text(encoding="utf-8"))
    if config.get("target_parameters"):
        raise ConfigError("--svd-rank: adapters on parameters (fused MoE experts) are not compressed")
    if rank >= config["r"]:
        raise ConfigError(f"--svd-rank {rank} is not below the winner's rank {config['r']}: nothing to compress")
    tensors = load_file(str(source / "adapter_model.safetensors"))
    out, worst = {}, 0.0
    pairs: dict[str, dict[str, str]] = {}
    for name in tensors:
        module, side = lora_module(name), lora_side(name)
        if module is None or side is None:
            out[name] = tensors[name]  # modules_to_save and the like: kept as they are
        else:
            pairs.setdefault(module, {})[side] = name
    for names in pairs.values():
        a, b = tensors[names["A"]], tensors[names["B"]]
        delta = b.double() @ a.double()
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
        out[names["B"]] = (u[:, :rank] * s[:rank]).to(b.dtype).contiguous()
        out[names["A"]] = vh[:rank].to(a.dtype).contiguous()
        total = float(s.pow(2).sum())
        if total > 0:
            worst = max(worst, float(s[rank:].pow(2).sum() / total) ** 0.5)
    target.mkdir(parents=True, exist_ok=True)
    save_file(out, str(target / "adapter_model.safetensors"), metadata={"format": "pt"})
    config.update(r=rank, lora_alpha=rank)
    (target / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return {"max_relative_error": round(worst, 6)}
