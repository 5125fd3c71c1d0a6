"""Synthetic expert pools for the speed benchmarks: a random-init Llama-shaped base with
realistic layer shapes, n full fine-tunes (base + small noise) and n rank-r LoRA adapters
on every linear layer. Built once per shape and cached (nothing is downloaded)."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

LINEAR_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class Shape:
    """A Llama shape. The default has 106M parameters (untied 32k vocabulary, 8 blocks of 768)."""

    hidden: int = 768
    layers: int = 8
    intermediate: int = 2048
    vocab: int = 32000
    dtype: str = "bfloat16"

    def config(self):
        from transformers import LlamaConfig

        return LlamaConfig(
            hidden_size=self.hidden,
            intermediate_size=self.intermediate,
            num_hidden_layers=self.layers,
            num_attention_heads=max(1, self.hidden // 64),
            num_key_value_heads=max(1, self.hidden // 64),
            vocab_size=self.vocab,
            max_position_embeddings=512,
            tie_word_embeddings=False,
        )

    @property
    def name(self) -> str:
        return f"llama-h{self.hidden}-l{self.layers}-i{self.intermediate}-v{self.vocab}-{self.dtype}"


@dataclass(frozen=True)
class Pool:
    base: Path
    full: list[Path]
    lora: list[Path]
    parameters: int
    lora_parameters: int


def build_pool(root: Path, shape: Shape, experts: int, rank: int = 16, seed: int = 0) -> Pool:
    """The base, `experts` full experts and `experts` LoRA experts under `root/shape.name`."""
    from transformers import LlamaForCausalLM

    folder = root / shape.name
    stamp = folder / "built.json"
    build_id = {"shape": asdict(shape), "experts": experts, "rank": rank, "seed": seed}
    full = [folder / f"full{k}" for k in range(experts)]
    lora = [folder / f"lora{k}" for k in range(experts)]
    if not (stamp.exists() and json.loads(stamp.read_text()) == build_id):
        shutil.rmtree(folder, ignore_errors=True)
        torch.manual_seed(seed)
        dtype = getattr(torch, shape.dtype)
        base = LlamaForCausalLM(shape.config()).to(dtype)
        base.save_pretrained(folder / "base")
        state = {name: tensor.detach() for name, tensor in base.state_dict().items()}
        gen = torch.Generator().manual_seed(seed + 1)
        for path in full:  # a fine-tune: the base moved a little, every tensor
            tuned = {n: (t.float() + 0.01 * torch.randn(t.shape, generator=gen)).to(dtype) for n, t in state.items()}
            base.load_state_dict(tuned)
            base.save_pretrained(path)
        base.load_state_dict(state)
        _build_lora(base, lora, rank, gen)
        stamp.write_text(json.dumps(build_id))
    return Pool(folder / "base", full, lora, _count(folder / "base", "model"), _count(lora[0], "adapter_model"))


def _build_lora(base, folders: list[Path], rank: int, gen: torch.Generator) -> None:
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(base, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=LINEAR_MODULES))
    for path in folders:
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "lora_" in name:
                    parameter.copy_(0.02 * torch.randn(parameter.shape, generator=gen))
        model.save_pretrained(path)
    model.unload()


def _count(folder: Path, stem: str) -> int:
    from safetensors import safe_open

    total = 0
    with safe_open(str(folder / f"{stem}.safetensors"), framework="pt") as handle:
        names = list(handle.keys())  # a safetensors handle is not iterable
        for name in names:
            size = 1
            for dim in handle.get_slice(name).get_shape():
                size *= dim
            total += size
    return total
