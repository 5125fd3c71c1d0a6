"""Write a combination of the experts as a standard Hugging Face folder.

* full-model pools: weight shards (+ index) written tensor by tensor with mergekit's
  `TensorWriter` (`--out-shard-size`, `--safe-serialization`, `--async-write` keep
  mergekit's meaning), `config.json`, generation config and tokenizer;
* LoRA pools: a PEFT adapter folder (`adapter_config.json`, `adapter_model.safetensors`)
  that `PeftModel.from_pretrained` loads; with `--merge-lora`, the base model with the
  adapter baked in instead;
* always `mergekit_config.yml`, the weights as a plain recipe (see `output.mergekit_config`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from mergekit_swarm.config import MergeRecipe
from mergekit_swarm.core.protocols import Tokenizer
from mergekit_swarm.core.run_options import OutputFormat
from mergekit_swarm.experts import ExpertPool, LoraPool
from mergekit_swarm.experts.groups import GroupLayout
from mergekit_swarm.output.mergekit_config import RECIPE_FILE, recipe_of
from mergekit_swarm.weights.kernels import combine, constants
from mergekit_swarm.weights.resident import ResidentModel


def write_model_folder(
    folder: Path,
    recipe: MergeRecipe,
    pool: ExpertPool,
    layout: GroupLayout,
    coefficients: np.ndarray,
    options: OutputFormat,
    *,
    tokenizer: Tokenizer,
    device: str = "cpu",
    trust_remote_code: bool = False,
    resident: ResidentModel | None = None,
) -> str:
    """Write the particle `coefficients` and its recipe into `folder`; returns the output kind
    ("full", "lora" or "lora-merged"). `--merge-lora` bakes the adapter into `resident`. Combined on
    `device`; the config is read with `trust_remote_code`."""
    from mergekit.common import dtype_from_name

    merge_dtype, out_dtype = dtype_from_name(recipe.dtype), dtype_from_name(recipe.out_dtype)
    donor = recipe.base_folder or recipe.expert_folders[0]  # mergekit's donor of config, tokenizer and tag-along files
    if not isinstance(pool, LoraPool):
        kind = "full"
        tensors = combine(pool, layout, coefficients, dtype=merge_dtype, out_dtype=out_dtype, device=device)
        _write_tensors(folder, tensors, options)
        _write_config(folder, donor, out_dtype or pool.specs[0].torch_dtype, trust_remote_code)
    elif options.merge_lora:
        if resident is None:
            raise ValueError("--merge-lora needs the resident model")
        kind = "lora-merged"
        resident.load(coefficients)
        merged = resident.adapter_model.merge_and_unload()
        merged = merged.to(out_dtype) if out_dtype is not None else merged
        merged.save_pretrained(folder, max_shard_size=options.out_shard_size, safe_serialization=options.safe_serialization)
    else:
        kind = "lora"
        combined = combine(pool, layout, coefficients, dtype=merge_dtype, out_dtype=out_dtype, device=device)
        adapter = {name: tensor.cpu().contiguous() for name, tensor in [*combined, *constants(pool)]}
        if options.safe_serialization:
            save_file(adapter, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
        else:
            torch.save(adapter, folder / "adapter_model.bin")
        base = recipe.base_folder
        if base is None:  # (refused when the pool was opened)
            raise ValueError("LoRA experts need the recipe's base_model")
        repo, revision = recipe.repo_and_revision(base)  # a Hub id if the base came from the Hub
        config = pool.output_config(repo)
        if revision:
            config["revision"] = revision
        (folder / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if options.copy_tokenizer or recipe.merge.tokenizer_source is not None or recipe.merge.tokenizer is not None:
        tokenizer.save_pretrained(folder)  # an explicit tokenizer is written even with --no-copy-tokenizer, as in mergekit
        if (donor / "generation_config.json").exists() and not (folder / "generation_config.json").exists():
            shutil.copyfile(donor / "generation_config.json", folder / "generation_config.json")
    text = recipe_of(recipe, pool, layout, coefficients)
    (folder / RECIPE_FILE).write_text(text, encoding="utf-8")
    return kind


def _write_tensors(folder: Path, tensors, options: OutputFormat) -> None:
    from mergekit.io import TensorWriter

    writer = TensorWriter(
        str(folder),
        max_shard_size=options.out_shard_size,
        safe_serialization=options.safe_serialization,
        use_async=options.async_write,
        max_write_threads=options.write_threads,
    )
    with writer:
        for name, tensor in tensors:
            writer.save_tensor(name, tensor.cpu())


def _write_config(folder: Path, donor: Path, dtype: torch.dtype, trust_remote_code: bool) -> None:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(donor, trust_remote_code=trust_remote_code)
    config.dtype = dtype
    config.save_pretrained(folder)
