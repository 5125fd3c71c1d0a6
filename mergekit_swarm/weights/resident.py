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
from typing import TYPE_CHECKING, cast

import numpy as np
import torch

from mergekit_swarm.core.errors import ConfigError, ExpertError
from mergekit_swarm.core.packing import pack_parameters
from mergekit_swarm.core.protocols import AdapterLM, CausalLM, Tokenizer
from mergekit_swarm.experts import ExpertPool, FullModelPool, LoraPool
from mergekit_swarm.experts.groups import GroupLayout
from mergekit_swarm.experts.lora import PEFT_PATTERN_WARNING
from mergekit_swarm.weights.adapter_stack import AdapterStack
from mergekit_swarm.weights.destinations import Destination, adapter_destination, model_destination
from mergekit_swarm.weights.device_memory import HEADROOM
from mergekit_swarm.weights.kernels import constants
from mergekit_swarm.weights.writer import ParticleWriter

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel

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
        model: CausalLM,
        tokenizer: Tokenizer,
        slot_names: list[str],
        destinations: list[Destination],
        writer: ParticleWriter,
        device: str,
        stack: AdapterStack | None = None,
    ):
        """The parts of a resident model; `ResidentModel.open` builds them from a pool and a model folder.
        `stack`: the slots' weights stacked (several slots), which `destinations` must point into."""
        self.pool, self.layout, self.model, self.tokenizer = pool, layout, model, tokenizer
        self.slot_names, self._destinations, self._writer, self.device = slot_names, destinations, writer, device
        self.stack = stack

    @classmethod
    def open(
        cls,
        pool: ExpertPool,
        layout: GroupLayout,
        *,
        model_source: Path,
        tokenizer: Tokenizer,
        model_dtype: torch.dtype | None,
        merge_dtype: torch.dtype | None = None,
        out_dtype: torch.dtype | None = None,
        device: str = "cpu",
        trust_remote_code: bool = False,
        slots: int = 1,
        fewer_slots: bool = False,
        hold_experts: bool | None = None,
    ) -> ResidentModel:
        """Load the model in `model_source` onto `device` (LoRA pools: the base with `slots` adapter slots of
        the pool's common shape), find where each tensor lands, and copy the experts' shared tensors in.

        The pool given is not changed: full experts held on the device (`hold_experts`, or when they fit
        a GPU) are a held copy of it, with the model's parameters packed as they are."""
        if slots > 1 and not isinstance(pool, LoraPool):
            raise ValueError("only LoRA pools have several adapter slots; a full-model pool holds one particle")
        model = _load_model(model_source, model_dtype, trust_remote_code)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        slot_names = [ADAPTER_NAME] + [f"{ADAPTER_NAME}_{i}" for i in range(1, slots)]
        if isinstance(pool, LoraPool):
            adapters = _attach_adapter_slots(model, pool, str(model_source), slot_names, fewer_slots).to(device).eval()
            slot_names = list(adapters.peft_config)
            # several slots: their weights stacked (the slots' tensors become views of the stacks), so that a
            # batch mixing them is served in one pass per layer; found before the destinations, which write into them
            stack = AdapterStack(adapters, slot_names) if len(slot_names) > 1 else None
            destinations = [adapter_destination(adapters, slot, _shapes(pool)) for slot in slot_names]
            resident_model: CausalLM = adapters
        else:
            # PreTrainedModel.to is functools.wraps(nn.Module.to), which pyright does not bind as a method
            model = model.to(device).eval()  # pyright: ignore[reportArgumentType]
            destinations, stack = [model_destination(model, _shapes(pool))], None
            # transformers types `generate`'s self as a Protocol its own models fail (pyright finds no generate)
            resident_model = model  # pyright: ignore[reportAssignmentType]
        if isinstance(pool, FullModelPool) and _hold(pool, device, hold_experts):
            # the parameters packed as the held experts are: a particle is then written by a few large
            # operations per run of tensors, not per tensor (on a GPU, a per-tensor loop is launch-bound).
            # Packed first: its passing extra copy of the model is freed before the experts arrive.
            pack_parameters(model, destinations[0].direct, pool.tensor_names)
            pool = pool.held(device)
        writer = ParticleWriter(pool, layout, dtype=merge_dtype, out_dtype=out_dtype, device=device)
        resident = cls(pool, layout, resident_model, tokenizer, slot_names, destinations, writer, device, stack)
        resident._copy_constants()
        return resident

    @torch.no_grad()
    def _copy_constants(self) -> None:
        """The tensors every expert has bit-identical (and, in update space, the stacked lora_A), once."""
        for name, tensor in constants(self.pool):
            for destination in self._destinations:
                if name in destination.direct:
                    destination.direct[name].copy_(tensor)
                    continue
                converted = [c for c in destination.conversions if name in c.sources]
                if not converted:
                    raise ExpertError(f"tensor {name!r}, the same in every expert, has no counterpart in the resident model")
                # a source of a conversion (per-expert LoRA of fused MoE experts, in update space): kept beside
                # the sources written per particle, where the conversion reads it every time
                model_dtype = next(iter(converted[0].targets.values())).dtype
                destination.scratch[name] = tensor.to(device=self.device, dtype=model_dtype)

    @property
    def slots(self) -> int:
        return len(self.slot_names)

    def nbytes(self) -> int:
        """The bytes of the model's parameters (its adapter slots included; tied ones once)."""
        return sum(p.numel() * p.element_size() for p in self.model.parameters())

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
        self._writer.write(particles, self._destinations[: len(particles)])
        self.activate(0)
        return self.slot_names[: len(particles)]

    def activate(self, slot: int) -> None:
        """Make adapter slot `slot` the one a plain forward uses (LoRA pools)."""
        if isinstance(self.pool, LoraPool) and self.adapter_model.active_adapter != self.slot_names[slot]:
            self.adapter_model.set_adapter(self.slot_names[slot])

    @property
    def adapter_model(self) -> AdapterLM:
        """The model as the PeftModel with adapter slots it is for a LoRA pool (`open` wraps the base in one)."""
        if not isinstance(self.pool, LoraPool):
            raise TypeError("the resident model of a full-model pool has no adapter slots")
        return cast("AdapterLM", self.model)


def _load_model(source: Path, dtype: torch.dtype | None, trust_remote_code: bool) -> PreTrainedModel:
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(source, dtype=dtype or "auto", trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ExpertError(f"cannot load a causal LM from {source}: {exc}") from None


def _shapes(pool: ExpertPool) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor of the pool, checkpoint name -> shape (what its destinations must take)."""
    shapes = {spec.name: spec.shape for spec in pool.specs}
    shapes.update((name, tuple(pool.tensor(0, name).shape)) for name in pool.constant_names)
    return shapes


def _attach_adapter_slots(model: PreTrainedModel, pool: LoraPool, base: str, names: list[str], fewer_slots: bool) -> PeftModel:
    """Wrap the base model in a PeftModel with adapter slots `names` of the pool's common shape
    (only the first, with `fewer_slots`, where PEFT cannot batch the adapters)."""
    from peft import LoraConfig, get_peft_model

    fields = set(LoraConfig.__dataclass_fields__)
    config = {k: v for k, v in pool.output_config(base).items() if k in fields and k not in ("peft_type", "auto_mapping")}
    with warnings.catch_warnings():  # PEFT calls a transformers API deprecated in v5; not actionable by users
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        warnings.filterwarnings("ignore", message=PEFT_PATTERN_WARNING, category=RuntimeWarning)
        peft = get_peft_model(model, LoraConfig(**config), adapter_name=names[0])
        wrapped = _parameter_lora(peft)
        if wrapped is not None and len(names) > 1:  # PEFT cannot batch LoRA on parameters with other adapters
            if not fewer_slots:
                raise ConfigError(
                    f"evaluation: particles_per_batch: {len(names)} needs PEFT mixed-adapter batches, which LoRA on "
                    f"parameters (fused MoE experts, e.g. {wrapped}) does not support; set it to 1 (or auto)"
                )
            names = names[:1]
        for name in names[1:]:
            peft.add_adapter(name, LoraConfig(**config))
    peft.set_adapter(names[0])
    return peft


def _parameter_lora(model: torch.nn.Module) -> str | None:
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
