"""One model kept in memory for the whole search; particles are written into it in place.

Loading a model per evaluation (what the official code and mergekit-evolve do) costs
more than a small utility's forward passes. Instead the model is loaded once, and
`load(coefficients)` streams the particle's tensors straight into its parameters
(full pools) or into a LoRA adapter slot (LoRA pools). A LoRA resident model has
`slots` adapter slots: `load_many` fills them all in one pass over the experts, and
utilities score them together in mixed-adapter batches.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from mergekit_swarm.adapter_stack import AdapterStack
from mergekit_swarm.checkpoint_layout import adapter_destination, model_destination
from mergekit_swarm.device_memory import HEADROOM
from mergekit_swarm.errors import ConfigError, ExpertError
from mergekit_swarm.experts import ExpertPool, FullModelPool, LoraPool
from mergekit_swarm.experts.lora import PEFT_PATTERN_WARNING
from mergekit_swarm.groups import GroupLayout
from mergekit_swarm.materialize import constants
from mergekit_swarm.materializer import Materializer
from mergekit_swarm.packed import pack_parameters

ADAPTER_NAME = "swarm"  # slot 0; slot i > 0 is swarm_<i>


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
        slots: int = 1,
        fewer_slots: bool = False,
        hold_experts: bool | None = None,
    ):
        from transformers import AutoModelForCausalLM

        if slots > 1 and not isinstance(pool, LoraPool):
            raise ValueError("only LoRA pools have several adapter slots; a full-model pool holds one particle")
        self.pool, self.layout = pool, layout
        self.slot_names = [ADAPTER_NAME] + [f"{ADAPTER_NAME}_{i}" for i in range(1, slots)]
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
            model = _attach_adapter_slots(model, pool, str(model_source), self.slot_names, fewer_slots)
            self.slot_names = list(model.peft_config)
        self.model = model.to(device).eval()
        # several slots: their weights stacked, so that a batch mixing them is served in one pass per layer
        self.stack = AdapterStack(self.model, self.slot_names) if self.slots > 1 else None
        shapes = {spec.name: spec.shape for spec in pool.specs}
        shapes.update((name, tuple(pool.tensor(0, name).shape)) for name in pool.constant_names)
        if isinstance(pool, LoraPool):
            self._destinations = [adapter_destination(self.model, slot, shapes) for slot in self.slot_names]
        else:
            self._destinations = [model_destination(self.model, shapes)]
        if isinstance(pool, FullModelPool) and _hold(pool, device, hold_experts):
            # the parameters packed as the held experts are: a particle is then written by a few large
            # operations per run of tensors, not per tensor (on a GPU, a per-tensor loop is launch-bound).
            # Packed first: its passing extra copy of the model is freed before the experts arrive.
            pack_parameters(self.model, self._destinations[0].direct, pool.tensor_names)
            pool.hold_on(device)
        self._materializer = Materializer(pool, layout, dtype=merge_dtype, out_dtype=out_dtype, device=device)
        with torch.no_grad():
            for name, tensor in constants(pool):
                for destination in self._destinations:
                    if name not in destination.direct:
                        raise ExpertError(f"tensor {name!r}, the same in every expert, has no counterpart in the resident model")
                    destination.direct[name].copy_(tensor)

    @property
    def slots(self) -> int:
        return len(self.slot_names)

    def tensors(self, slot: int = 0) -> dict[str, torch.Tensor]:
        """The model tensors checkpoint tensors are written into as they are (by checkpoint name), for one slot;
        tensors transformers or PEFT convert on loading (fused MoE experts) are not among them."""
        return self._destinations[slot].direct

    def load(self, coefficients: np.ndarray) -> None:
        """Write the particle with `coefficients` (groups, experts) into the model (slot 0,
        made the active adapter)."""
        self.load_many([coefficients])

    @torch.no_grad()
    def load_many(self, particles: list[np.ndarray]) -> list[str]:
        """Write up to `slots` particles into slots 0, 1, ... in one pass over the experts;
        returns the names of the slots filled. Slot 0 becomes the active adapter."""
        if not 1 <= len(particles) <= self.slots:
            raise ValueError(f"{len(particles)} particles for {self.slots} slot(s)")
        self._materializer.write(particles, self._destinations[: len(particles)])
        self.activate(0)
        return self.slot_names[: len(particles)]

    def activate(self, slot: int) -> None:
        """Make adapter slot `slot` the one a plain forward uses (LoRA pools)."""
        if isinstance(self.pool, LoraPool) and self.model.active_adapter != self.slot_names[slot]:
            self.model.set_adapter(self.slot_names[slot])


def _attach_adapter_slots(model, pool: LoraPool, base: str, names: list[str], fewer_slots: bool):
    """Wrap the base model in a PeftModel with adapter slots `names` of the pool's common shape
    (only the first, with `fewer_slots`, where PEFT cannot batch the adapters)."""
    from peft import LoraConfig, get_peft_model

    fields = set(LoraConfig.__dataclass_fields__)
    config = {k: v for k, v in pool.output_config(base).items() if k in fields and k not in ("peft_type", "auto_mapping")}
    with warnings.catch_warnings():  # PEFT calls a transformers API deprecated in v5; not actionable by users
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        warnings.filterwarnings("ignore", message=PEFT_PATTERN_WARNING, category=RuntimeWarning)
        model = get_peft_model(model, LoraConfig(**config), adapter_name=names[0])
        wrapped = _parameter_lora(model)
        if wrapped is not None and len(names) > 1:  # PEFT cannot batch LoRA on parameters with other adapters
            if not fewer_slots:
                raise ConfigError(
                    f"evaluation: particles_per_batch: {len(names)} needs PEFT mixed-adapter batches, which LoRA on "
                    f"parameters (fused MoE experts, e.g. {wrapped}) does not support; set it to 1 (or auto)"
                )
            names = names[:1]
        for name in names[1:]:
            model.add_adapter(name, LoraConfig(**config))
    model.set_adapter(names[0])
    return model


def _parameter_lora(model) -> str | None:
    """The first module with LoRA on a parameter (PEFT's ParamWrapper), if any."""
    from peft.tuners.lora import ParamWrapper

    wrapped = (name for name, module in model.named_modules() if isinstance(module, ParamWrapper))
    return next((name.removeprefix("base_model.model.") for name in wrapped), None)


def _hold(pool: FullModelPool, device: str, wanted: bool | None) -> bool:
    """Whether full experts are held on the device: asked for (`--read-to-gpu`), or on a GPU whose
    free memory takes them all (they are then read at its bandwidth, not from the page cache)."""
    if wanted is not None:
        return wanted
    if torch.device(device).type != "cuda":
        return False  # on a CPU, the page cache already holds them
    free = torch.cuda.mem_get_info(torch.device(device))[0]
    return pool.nbytes < HEADROOM * free
