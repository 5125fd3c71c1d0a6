"""Tiny random-init checkpoints of the architectures users merge, with full and LoRA experts.

Every architecture is built from its real transformers class with a few-kilobyte config, saved
with `save_pretrained` (so the files are in the layout transformers writes, e.g. Mixtral's
per-expert `block_sparse_moe.experts.N.w1.weight`), and given experts of both kinds: full
fine-tunes (the base plus a seeded random perturbation of every weight) and PEFT LoRA adapters
with PEFT's default target modules for the architecture, or `all-linear` where PEFT has none,
with different ranks so that rank padding is exercised.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

# Shared shape: 2 layers, hidden 32, 4 heads (2 KV heads), vocabulary 96, BOS 1 / EOS 2 / PAD 0
# as in the character tokenizer of `mergekit_swarm.testing.toy`.
_SPECIAL = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
_DECODER = {
    "vocab_size": 96,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
    "tie_word_embeddings": False,
    **_SPECIAL,
}
_MOE = {"num_experts_per_tok": 2, "moe_intermediate_size": 16}

# name -> (model_type, config overrides, LoRA target_modules: None = PEFT's default for the model type)
ARCHITECTURES: dict[str, tuple[str, dict, list[str] | str | None]] = {
    "llama": ("llama", {}, None),
    "llama-tied": ("llama", {"tie_word_embeddings": True}, None),
    "mistral": ("mistral", {}, None),
    "qwen2": ("qwen2", {}, None),
    "qwen3": ("qwen3", {"head_dim": 8}, None),
    "qwen3-moe": ("qwen3_moe", {"head_dim": 8, "num_experts": 4, "decoder_sparse_step": 1, **_MOE}, "all-linear"),
    "gemma2": ("gemma2", {"head_dim": 8, "tie_word_embeddings": True}, None),
    "gemma3-text": ("gemma3_text", {"head_dim": 8, "tie_word_embeddings": True}, None),
    "phi3": ("phi3", {}, "all-linear"),
    "gpt-neox": ("gpt_neox", {"num_key_value_heads": None}, None),
    "gpt2": ("gpt2", {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 128, "vocab_size": 96, **_SPECIAL}, None),
    # PEFT 0.21 has default targets for mixtral, but on transformers 5 it drops them (the experts
    # are no modules any more): all-linear, which targets the fused experts as parameters.
    "mixtral": ("mixtral", {"num_local_experts": 4, "num_experts_per_tok": 2}, "all-linear"),
    "olmo2": ("olmo2", {}, "all-linear"),
    "olmoe": ("olmoe", {"num_experts": 4, "num_experts_per_tok": 2}, "all-linear"),
}
LORA_RANKS = (2, 4, 2)


def tiny_config(architecture: str):
    """The transformers config of `architecture` (a key of ARCHITECTURES)."""
    from transformers import AutoConfig

    model_type, overrides, _ = ARCHITECTURES[architecture]
    settings = dict(overrides) if model_type == "gpt2" else {**_DECODER, **overrides}
    settings = {k: v for k, v in settings.items() if v is not None}
    return AutoConfig.for_model(model_type, **settings)


def build_base(architecture: str, folder: Path, tokenizer=None, seed: int = 0) -> Path:
    """A random-init causal LM of `architecture` saved in `folder` (with `tokenizer`, if given)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(architecture))
    model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


def build_full_experts(base: Path, folder: Path, count: int = 3, scale: float = 0.05) -> list[Path]:
    """`count` full experts: the base with a seeded random perturbation of every weight."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base) if (base / "tokenizer_config.json").exists() else None
    experts = []
    for k in range(count):
        model = AutoModelForCausalLM.from_pretrained(base)
        generator = torch.Generator().manual_seed(1000 + k)
        with torch.no_grad():
            for param in model.parameters():
                param.add_(scale * torch.randn(param.shape, generator=generator))
        path = folder / f"full{k}"
        model.save_pretrained(path)
        if tokenizer is not None:
            tokenizer.save_pretrained(path)
        experts.append(path)
    return experts


def build_lora_experts(architecture: str, base: Path, folder: Path, ranks: tuple[int, ...] = LORA_RANKS) -> list[Path]:
    """One PEFT LoRA adapter per rank, with random (non-zero) A and B and alpha = 2 x rank (seeded)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    targets = ARCHITECTURES[architecture][2]
    experts = []
    for k, rank in enumerate(ranks):
        model = AutoModelForCausalLM.from_pretrained(base)
        torch.manual_seed(2000 + k)
        config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=targets, init_lora_weights=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            peft_model = get_peft_model(model, config)
        with torch.no_grad():  # an update as large as a trained adapter's, so that experts score apart
            for name, param in peft_model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0.0, 0.5)
        path = folder / f"lora{k}"
        peft_model.save_pretrained(str(path))
        experts.append(path)
    return experts


def build_per_expert_lora(base: Path, folder: Path, rank: int, seed: int) -> Path:
    """A Mixtral adapter as PEFT saved it on transformers 4, when every expert was a module: LoRA on
    each expert's `block_sparse_moe.experts.N.w1/w2/w3` and on `q_proj`. transformers 5 fuses the
    experts into 3-D parameters; PEFT converts such an adapter to that layout when it loads it."""
    from peft import LoraConfig
    from safetensors.torch import save_file
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(base)
    hidden, inner = config.hidden_size, config.intermediate_size
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(config.num_hidden_layers):
        prefix = f"base_model.model.model.layers.{layer}"
        modules = {f"{prefix}.self_attn.q_proj": (hidden, hidden)}
        for expert in range(config.num_local_experts):
            moe = f"{prefix}.block_sparse_moe.experts.{expert}"
            modules.update({f"{moe}.w1": (hidden, inner), f"{moe}.w3": (hidden, inner), f"{moe}.w2": (inner, hidden)})
        for module, (fan_in, fan_out) in modules.items():
            tensors[f"{module}.lora_A.weight"] = 0.3 * torch.randn(rank, fan_in, generator=generator)
            tensors[f"{module}.lora_B.weight"] = 0.3 * torch.randn(fan_out, rank, generator=generator)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    targets = ["q_proj", "w1", "w2", "w3"]
    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=targets, base_model_name_or_path=str(base))
    config.save_pretrained(str(folder))
    return folder
