"""One model kept in memory for the whole search; particles are written into it in place.

Loading a model per evaluation (what the official code and mergekit-evolve do) costs
more than a small utility's forward passes. Instead the model is loaded once, and
`load(coefficients)` streams the particle's tensors straight into its parameters
(full pools) or into its single LoRA adapter slot (LoRA pools).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from mergekit_swarm.errors import ExpertError
from mergekit_swarm.experts import ExpertPool, LoraPool
from mergekit_swarm.experts.lora import is_lora_tensor
from mergekit_swarm.groups import GroupLayout
from mergekit_swarm.materialize import combine, constants

ADAPTER_NAME = "swarm"


class ResidentModel:
    """A causal LM whose weights (or adapter) are set from particle coefficients.

    `load` writes exactly the tensors the output folder would hold for the same
    coefficients (same merge, same `out_dtype`), so what is evaluated is what is written.
    """

    def __init__(
        self,
        pool: ExpertPool,
        layout: GroupLayout,
        *,
        model_source: Path,
        tokenizer,
        model_dtype: torch.dtype | None,
        merge_dtype: torch.dtype | None = None,
        out_dtype: torch.dtype | None = None,
        device: str = "cpu",
        trust_remote_code: bool = False,
    ):
        from transformers import AutoModelForCausalLM

        self.pool, self.layout = pool, layout
        self.merge_dtype, self.out_dtype, self.device = merge_dtype, out_dtype, device
        try:
            model = AutoModelForCausalLM.from_pretrained(
                model_source, dtype=model_dtype or "auto", trust_remote_code=trust_remote_code
            )
        except (OSError, ValueError) as exc:
            raise ExpertError(f"cannot load a causal LM from {model_source}: {exc}") from None
        self.tokenizer = tokenizer
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if isinstance(pool, LoraPool):
            model = _attach_adapter_slot(model, pool, str(model_source))
        self.model = model.to(device).eval()
        self._targets = self._map_targets()
        with torch.no_grad():
            for name, tensor in constants(pool):
                self._targets[name].copy_(tensor)

    def _map_targets(self) -> dict[str, torch.Tensor]:
        """Checkpoint tensor name -> the model tensor (sharing storage) it is written into."""
        if isinstance(self.pool, LoraPool):
            from peft import get_peft_model_state_dict

            available = get_peft_model_state_dict(self.model, adapter_name=ADAPTER_NAME)
            uncovered = [n for n in available if is_lora_tensor(n) and n not in self.pool.tensor_names]
            if uncovered:
                raise ExpertError(f"the adapter slot has {uncovered[0]!r}, which the experts do not provide")
        else:
            available = self.model.state_dict()
        storages = {p.data_ptr() for p in self.model.parameters()} | {b.data_ptr() for b in self.model.buffers()}
        shapes = {spec.name: spec.shape for spec in self.pool.specs}
        shapes.update((name, tuple(self.pool.tensor(0, name).shape)) for name in self.pool.constant_names)
        targets = {}
        for name, shape in shapes.items():
            target = available.get(name)
            if target is None:
                raise ExpertError(f"tensor {name!r} of the experts has no counterpart in the resident model")
            if tuple(target.shape) != shape:
                raise ExpertError(f"tensor {name!r}: experts have shape {list(shape)}, the model {list(target.shape)}")
            if target.data_ptr() not in storages:
                raise ExpertError(f"tensor {name!r} does not share storage with the model, so it cannot be written in place")
            targets[name] = target
        return targets

    @torch.no_grad()
    def load(self, coefficients: np.ndarray) -> None:
        """Write the particle with `coefficients` (groups, experts) into the model."""
        tensors = combine(
            self.pool, self.layout, coefficients, dtype=self.merge_dtype, out_dtype=self.out_dtype, device=self.device
        )
        for name, tensor in tensors:
            self._targets[name].copy_(tensor)


def _attach_adapter_slot(model, pool: LoraPool, base: str):
    """Wrap the base model in a PeftModel with one adapter slot of the pool's common shape."""
    from peft import LoraConfig, get_peft_model

    fields = set(LoraConfig.__dataclass_fields__)
    config = {k: v for k, v in pool.output_config(base).items() if k in fields and k not in ("peft_type", "auto_mapping")}
    with warnings.catch_warnings():  # PEFT calls a transformers API deprecated in v5; not actionable by users
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, LoraConfig(**config), adapter_name=ADAPTER_NAME)
