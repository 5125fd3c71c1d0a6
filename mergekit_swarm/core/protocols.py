"""What the package uses of the models and tokenizers it is handed, as structural types.

Models and tokenizers come from transformers and PEFT (`AutoModelForCausalLM`, `PeftModel`,
`AutoTokenizer`), from mergekit's output, or from a user's own code (a `python` utility, a test),
and pass through every layer: the utilities score them, the resident model writes particles into
them, the output folder saves them. These Protocols name the members the package relies on, and
nothing more: any object with them will do, whatever its class.

Type checking only: nothing here is imported from transformers or PEFT at run time.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import torch

if TYPE_CHECKING:
    from typing_extensions import Self


class TorchModule(Protocol):
    """A torch module as the package walks it: its parameters (their device) and its sub-modules."""

    def parameters(self) -> Iterator[torch.nn.Parameter]: ...

    def modules(self) -> Iterator[torch.nn.Module]: ...


class LMOutput(Protocol):
    """What a forward pass returns (transformers' `CausalLMOutputWithPast`): its logits are read."""

    @property
    def logits(self) -> torch.Tensor: ...


class CausalLM(TorchModule, Protocol):
    """A causal language model: a transformers `AutoModelForCausalLM` model, or a PEFT `PeftModel`
    around one (whose forward and `generate` also take `adapter_names=`, one adapter slot per row).

    Its `generation_config`, where it has one, is read with `getattr` (`utilities.text.stop_token_ids`)."""

    def to(self, device: str | torch.device) -> Self: ...

    def eval(self) -> Self: ...

    def __call__(self, *, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs: Any) -> LMOutput: ...

    def generate(self, **kwargs: Any) -> torch.Tensor: ...


class SavableLM(Protocol):
    """A transformers model written as a model folder, in a given dtype."""

    def to(self, dtype: torch.dtype) -> Self: ...

    def save_pretrained(self, save_directory: str | os.PathLike[str], **kwargs: Any) -> Any: ...


class AdapterLM(CausalLM, Protocol):
    """A PEFT `PeftModel` with named LoRA adapter slots, one of them active."""

    @property
    def active_adapter(self) -> str | list[str]: ...

    def set_adapter(self, adapter_name: str) -> Any: ...

    def merge_and_unload(self) -> SavableLM: ...  # (PEFT's LoraModel's, through the PeftModel) the base with the adapter baked in


class Tokenizer(Protocol):
    """A transformers tokenizer (`AutoTokenizer`), as the utilities and the output folder use it."""

    pad_token: str | None
    eos_token: str | None
    padding_side: str

    @property
    def pad_token_id(self) -> int | None: ...

    @property
    def eos_token_id(self) -> int | None: ...

    def __call__(self, text: str | list[str], **kwargs: Any) -> Mapping[str, Any]: ...  # a BatchEncoding

    def batch_decode(self, sequences: torch.Tensor, **kwargs: Any) -> list[str]: ...

    def apply_chat_template(self, conversation: list[dict[str, str]], **kwargs: Any) -> Any: ...  # a str with tokenize=False

    def save_pretrained(self, save_directory: str | os.PathLike[str], **kwargs: Any) -> Any: ...
