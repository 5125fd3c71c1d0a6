"""Tensors laid end to end in one buffer per dtype, so that a run of them is one tensor.

Writing a particle costs a few operations per tensor and per expert, and a model has hundreds
of tensors (Qwen2-0.5B: 290), most of them small: on a GPU, where one operation is a kernel
launch, a per-tensor loop is bound by launches, not by memory bandwidth. When the experts held
on the device and the resident model's parameters are both packed in checkpoint order,
consecutive tensors of one parameter group form one long run in every expert and in the model,
and a particle is written by a few large operations per run (`weights.kernels`). The arithmetic is
elementwise, so where a run is cut changes no bit.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def pack(tensors: Sequence[torch.Tensor], device: str | torch.device) -> list[torch.Tensor]:
    """Copies of `tensors` on `device`, laid end to end in their order in one new buffer per dtype
    (views of it, in the same order)."""
    sizes: dict[torch.dtype, int] = {}
    for tensor in tensors:
        sizes[tensor.dtype] = sizes.get(tensor.dtype, 0) + tensor.numel()
    buffers = {dtype: torch.empty(size, dtype=dtype, device=device) for dtype, size in sizes.items()}
    used = dict.fromkeys(sizes, 0)
    packed = []
    for tensor in tensors:
        start = used[tensor.dtype]
        used[tensor.dtype] = start + tensor.numel()
        view = buffers[tensor.dtype][start : used[tensor.dtype]].view(tensor.shape)
        view.copy_(tensor)
        packed.append(view)
    return packed


@torch.no_grad()
def pack_parameters(model: torch.nn.Module, direct: dict[str, torch.Tensor], order: Sequence[str]) -> int:
    """Re-lay the model parameters that `direct` (checkpoint name -> model tensor) writes into end to
    end, in `order`, one buffer per dtype, and point `direct` at them; returns how many were moved.

    A parameter keeps its identity (only its `.data` moves), so the model, its tied weights and
    anything holding the parameter see the new place. Tensors that are not whole parameters
    (buffers, slices) stay where they are. Peak memory: one more copy of the moved parameters.
    """
    owners = {p.data_ptr(): p for p in model.parameters() if p.numel() and p.is_contiguous()}
    moved: list[torch.nn.Parameter] = []
    for name in order:
        tensor = direct.get(name)
        if tensor is None or not tensor.numel():
            continue
        owner = owners.pop(tensor.data_ptr(), None)
        if owner is not None and owner.shape == tensor.shape and owner.dtype == tensor.dtype:
            moved.append(owner)
    old = {p.data_ptr(): p for p in moved}
    for parameter, view in zip(moved, pack([p.data for p in moved], moved[0].device if moved else "cpu")):
        parameter.data = view
    for name, tensor in direct.items():  # every name of a moved parameter (tied ones too) now points at its new place
        if tensor.numel() and tensor.data_ptr() in old:
            direct[name] = old[tensor.data_ptr()].data
    return len(moved)


def span(tensors: Sequence[torch.Tensor]) -> torch.Tensor | None:
    """One flat tensor over `tensors` when they lie end to end in one storage (contiguous, one dtype
    and device, in this order), else None. Writing into it writes into them."""
    first = tensors[0]
    storage = first.untyped_storage().data_ptr()
    end = first.data_ptr()
    for tensor in tensors:
        if (
            tensor.data_ptr() != end
            or tensor.dtype != first.dtype
            or not tensor.is_contiguous()
            or tensor.untyped_storage().data_ptr() != storage
        ):
            return None
        end += tensor.numel() * tensor.element_size()
    return first.as_strided((sum(t.numel() for t in tensors),), (1,))
