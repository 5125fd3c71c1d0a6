"""Write the winner as a standard Hugging Face folder.

* full-model pools: safetensors shards (+ index) written tensor by tensor with mergekit's
  `TensorWriter` (`--out-shard-size` has mergekit's meaning), `config.json`, generation
  config and tokenizer;
* LoRA pools: a PEFT adapter folder (`adapter_config.json`, `adapter_model.safetensors`)
  that `PeftModel.from_pretrained` loads; with `--merge-lora`, the base model with the
  adapter baked in instead.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from mergekit_swarm.experts import ExpertPool, LoraPool
from mergekit_swarm.groups import GroupLayout
from mergekit_swarm.materialize import combine, constants
from mergekit_swarm.resident import ResidentModel


def write_full_model(
    folder: Path,
    pool: ExpertPool,
    layout: GroupLayout,
    coefficients: np.ndarray,
    *,
    merge_dtype: torch.dtype | None,
    out_dtype: torch.dtype | None,
    device: str,
    config_source: Path,
    max_shard_size: int,
    trust_remote_code: bool = False,
) -> None:
    from mergekit.io import TensorWriter
    from transformers import AutoConfig

    tensors = combine(pool, layout, coefficients, dtype=merge_dtype, out_dtype=out_dtype, device=device)
    with TensorWriter(str(folder), max_shard_size=max_shard_size, safe_serialization=True) as writer:
        for name, tensor in tensors:
            writer.save_tensor(name, tensor.cpu())
    config = AutoConfig.from_pretrained(config_source, trust_remote_code=trust_remote_code)
    config.dtype = out_dtype or pool.specs[0].torch_dtype
    config.save_pretrained(folder)


def write_lora_adapter(
    folder: Path,
    pool: LoraPool,
    layout: GroupLayout,
    coefficients: np.ndarray,
    *,
    merge_dtype: torch.dtype | None,
    out_dtype: torch.dtype | None,
    device: str,
    base_model: str,
) -> None:
    combined = combine(pool, layout, coefficients, dtype=merge_dtype, out_dtype=out_dtype, device=device)
    tensors = {name: tensor.cpu().contiguous() for name, tensor in [*combined, *constants(pool)]}
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = pool.output_config(base_model)
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_merged_lora(
    folder: Path, resident: ResidentModel, coefficients: np.ndarray, *, out_dtype: torch.dtype | None, max_shard_size: int
) -> None:
    """Bake the winner adapter into the resident base model and save it (consumes the slot)."""
    resident.load(coefficients)
    merged = resident.model.merge_and_unload()
    if out_dtype is not None:
        merged = merged.to(out_dtype)
    merged.save_pretrained(folder, max_shard_size=max_shard_size, safe_serialization=True)


def copy_tokenizer_files(folder: Path, source: Path, trust_remote_code: bool = False) -> None:
    """The tokenizer (as loaded from `source`, untouched) and the generation config."""
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code).save_pretrained(folder)
    if (source / "generation_config.json").exists():
        shutil.copyfile(source / "generation_config.json", folder / "generation_config.json")
