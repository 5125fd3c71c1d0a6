"""How to run (not what to search): where models come from, where they live, how the output is written.

`RunOptions` is what the commands take (the CLI's flags, mergekit's included). It is made of three small
parts, and each layer below the commands asks only for the part it uses: `Sources` (how models are found
and read: recipes, pools), `ModelAccess` (that, and where the resident model lives: evaluation engines),
`OutputFormat` (how a model folder is written: the output layer).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal, TypeVar

Part = TypeVar("Part", bound="_Part")


class _Part:
    @classmethod
    def of(cls: type[Part], options: _Part, **changes) -> Part:
        """This part of `options` (e.g. the `ModelAccess` of a `RunOptions`), with `changes`."""
        return cls(**{f.name: getattr(options, f.name) for f in fields(cls)} | changes)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Sources(_Part):
    """How models named by a recipe are found and read."""

    allow_pickle: bool = False  # read pickled checkpoints (weights_only) and download them from the Hub
    trust_remote_code: bool = False
    cache_dir: str | None = None  # mergekit's --transformers-cache: where Hub models are stored
    lora_merge_cache: str | None = None  # where base+adapter experts of a full pool are baked (mergekit's flag)
    lora_merge_dtype: str | None = None  # the dtype they are baked in (mergekit's flag)


@dataclass(frozen=True)
class ModelAccess(Sources):
    """`Sources`, and where the model particles are written into lives."""

    device: str = "cpu"
    read_to_gpu: bool | None = None  # full experts held on the device: None = when they fit (GPU only)


@dataclass(frozen=True)
class OutputFormat(_Part):
    """How a model folder is written (mergekit's flags keep mergekit's meaning)."""

    out_shard_size: int = 5_000_000_000
    safe_serialization: bool = True
    async_write: bool = False
    write_threads: int = 1
    copy_tokenizer: bool = True
    write_model_card: bool = True
    merge_lora: bool = False  # LoRA pools: the base with the winner baked in, instead of the adapter
    svd_rank: int | None = None  # LoRA winners: also a copy compressed to this rank (truncated SVD)


@dataclass(frozen=True)
class RunOptions(ModelAccess, OutputFormat):
    """Run options: `ModelAccess` and `OutputFormat`, and how the command itself behaves; the mergekit
    ones keep mergekit's meaning (`MergeOptions`)."""

    resume: bool = False
    overwrite: bool = False
    fail_fast: bool = False
    quiet: bool = False
    backend: Literal["local", "ray"] | None = None  # --backend: overrides the recipe's `evaluation: backend`

    @classmethod
    def from_merge_options(cls, merge_options, **ours) -> RunOptions:
        """mergekit's `MergeOptions` fields that act here, plus our own flags."""
        return cls(
            device=merge_options.device or "cpu",
            quiet=merge_options.quiet,
            out_shard_size=merge_options.out_shard_size,
            copy_tokenizer=merge_options.copy_tokenizer,
            write_model_card=merge_options.write_model_card,
            trust_remote_code=merge_options.trust_remote_code,
            safe_serialization=merge_options.safe_serialization,
            async_write=merge_options.async_write,
            write_threads=merge_options.write_threads,
            cache_dir=merge_options.transformers_cache,
            read_to_gpu=True if merge_options.read_to_gpu else None,
            lora_merge_cache=merge_options.lora_merge_cache,
            lora_merge_dtype=merge_options.lora_merge_dtype,
            **ours,
        )


# mergekit options that a swarm run accepts but cannot use, and why.
NO_EFFECT = {
    "allow_crimes": "experts must align tensor by tensor anyway",
    "lazy_unpickle": "pickles are read with torch.load(weights_only=True), and only with --allow-pickle",
    "low_cpu_memory": "one resident model is used",
    "multi_gpu": "one resident model is used",
    "clone_tensors": "tensors are written once each",
    "unsafe_truncate_embeddings": "the experts' vocabulary is kept as it is",
}


def unused_options(merge_options) -> list[str]:
    """Notes for the options the user set that have no effect here."""
    defaults = type(merge_options).model_fields
    return [
        f"--{name.replace('_', '-')} has no effect here ({why})"
        for name, why in NO_EFFECT.items()
        if getattr(merge_options, name) != defaults[name].default
    ]


def silence_library_progress_bars() -> None:
    """--quiet (and Ray workers) also cover the loading bars of transformers and huggingface_hub."""
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as transformers_logging

    disable_progress_bars()
    transformers_logging.disable_progress_bar()
