"""Adapter slots stored stacked, and a LoRA forward that serves every slot's rows at once.

PEFT's mixed-adapter batches (`adapter_names=`) loop over the adapters in every LoRA layer:
for each one, the indices of its rows (a Python list comprehension over the batch), a gather,
two matmuls and a scatter. With a swarm's 10-20 particles per batch that loop, not the base
model, is the cost (measured 0.63x of one particle at a time on the quickstart).

Here the slots' weights live in one tensor per LoRA layer and side, `A: (slots, rank, in)` and
`B: (slots, out, rank)` (the PEFT modules' weights are views into them, so writing a particle
into a slot fills the stack), and a batch whose rows are grouped by slot, in equal blocks, as
the utilities build them (each batch of prompts repeated once per slot), is served with one
index select and two batched matmuls per layer (the punica / S-LoRA idea, in plain torch). It
works wherever PEFT's `adapter_names` reach the layers: `generate` (KV cache, left padding) and
plain forwards. Any other row layout, and LoRA layers of other kinds (embeddings), take PEFT's
own path.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mergekit_swarm.core.protocols import TorchModule


class AdapterStack:
    """The LoRA linear layers of a PeftModel with adapter slots `slot_names`, restacked."""

    def __init__(self, model: TorchModule, slot_names: Sequence[str]):
        from peft.tuners.lora import Linear as LoraLinear

        self.slot_names = list(slot_names)
        self._slot_index = {name: i for i, name in enumerate(self.slot_names)}
        self.layers = 0
        self.stacked_forwards = 0  # layer forwards served stacked (tests and benchmarks read it)
        self.enabled = True  # False: PEFT's own mixed-batch loop (benchmarks compare the two)
        self._last_names: list[str] | None = None
        self._last_layout: tuple[slice | torch.Tensor, int] | None = None
        for module in model.modules():
            if isinstance(module, LoraLinear) and all(name in module.lora_A for name in self.slot_names):
                self._restack(module)
                self.layers += 1

    def _restack(self, module) -> None:
        """Move the slots' A and B into stacked tensors the modules' weights are views of."""
        with torch.no_grad():
            a = torch.stack([module.lora_A[name].weight for name in self.slot_names])  # (slots, rank, in)
            b = torch.stack([module.lora_B[name].weight for name in self.slot_names])  # (slots, out, rank)
            for i, name in enumerate(self.slot_names):
                module.lora_A[name].weight = nn.Parameter(a[i], requires_grad=False)
                module.lora_B[name].weight = nn.Parameter(b[i], requires_grad=False)
        scales = [module.scaling[name] for name in self.slot_names]
        scaling = None if all(s == 1 for s in scales) else torch.tensor(scales, dtype=a.dtype, device=a.device)
        peft_forward = module.forward

        def forward(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            layout = self._layout(kwargs.get("adapter_names"), x)
            if layout is None:
                return peft_forward(x, *args, **kwargs)
            kwargs.pop("adapter_names")
            self.stacked_forwards += 1
            return _stacked(module.base_layer(x, *args, **kwargs), x, a, b, scaling, *layout)

        module.forward = forward  # this instance only: the class and other models keep PEFT's

    def _layout(self, names: list[str] | None, x: torch.Tensor) -> tuple[slice | torch.Tensor, int] | None:
        """(slot indices, rows per slot) when the rows come in equal blocks of one slot each.

        PEFT hands every layer the same `adapter_names` list for a whole forward or `generate`,
        so it is read once per list, not once per layer and step."""
        if names is None or not self.enabled:
            return None
        if names is not self._last_names:
            self._last_names, self._last_layout = names, _slot_blocks(names, self._slot_index, x.device)
        layout = self._last_layout
        if layout is None or x.shape[0] != len(names):
            return None
        return layout


def _slot_blocks(names: Sequence[str], index: dict[str, int], device: torch.device) -> tuple[slice | torch.Tensor, int] | None:
    """The slots of `names` (a slice when they are the first ones in order, the common case) and
    the rows per slot, if the rows come in equal blocks of one slot each."""
    slots = list(dict.fromkeys(names))
    if any(name not in index for name in slots) or len(names) % len(slots):
        return None
    per = len(names) // len(slots)
    if any(names[i] != slots[i // per] for i in range(len(names))):
        return None
    positions = [index[name] for name in slots]
    if positions == list(range(len(slots))):
        return slice(0, len(slots)), per
    return torch.tensor(positions, device=device), per


def _stacked(
    result: torch.Tensor,
    x: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    scaling: torch.Tensor | None,
    slots: slice | torch.Tensor,
    per: int,
) -> torch.Tensor:
    """result + scaling_s * B_s A_s x for every row, s its slot: rows grouped (slots, per*tokens)."""
    a_s, b_s = (a[slots], b[slots]) if isinstance(slots, slice) else (a.index_select(0, slots), b.index_select(0, slots))
    xs = x.reshape(a_s.shape[0], -1, x.shape[-1])  # slot-major rows: a view, no copy
    if xs.dtype != a.dtype:
        xs = xs.to(a.dtype)
    delta = torch.bmm(torch.bmm(xs, a_s.transpose(1, 2)), b_s.transpose(1, 2))
    if scaling is not None:  # (our slots have scaling 1: alpha is folded into B)
        delta = delta * (scaling[slots] if isinstance(slots, slice) else scaling.index_select(0, slots))[:, None, None]
    return result.add_(delta.view(result.shape).to(result.dtype))  # the base layer's fresh output: added in place
