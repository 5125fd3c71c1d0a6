"""Turn one particle (coefficients per group) into weights, one tensor at a time.

For each tensor, the experts' tensors are read in expert order and accumulated in
float32 (float64 for float64 inputs) with `addcmul_`, then cast back to the input
dtype: exactly what mergekit's `linear` method does with `normalize: false`, so a
winner written as a vanilla `linear` recipe reproduces these weights bit for bit.
Only one expert tensor and one accumulator are alive at a time.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from mergekit_swarm.experts import ExpertPool
from mergekit_swarm.groups import GroupLayout


def combine_tensor(
    pool: ExpertPool,
    name: str,
    coefficients: np.ndarray,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """sum_k coefficients[k] * expert_k[name], accumulated in expert order.

    `dtype` is mergekit's `dtype:`: inputs are cast to it before merging.
    """
    result: torch.Tensor | None = None
    for k in range(len(pool)):
        tensor = pool.tensor(k, name).to(device=device, dtype=dtype)
        if result is None:
            input_dtype = tensor.dtype
            acc_dtype = torch.float64 if input_dtype == torch.float64 else torch.float32
            weights = torch.tensor(coefficients, dtype=acc_dtype, device=device)
            result = torch.zeros_like(tensor, dtype=acc_dtype)
        result.addcmul_(tensor, weights[k])
    assert result is not None
    return result.to(input_dtype)


def combine(
    pool: ExpertPool,
    layout: GroupLayout,
    coefficients: np.ndarray,
    *,
    dtype: torch.dtype | None = None,
    out_dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
) -> Iterator[tuple[str, torch.Tensor]]:
    """Stream (name, tensor) of the particle with `coefficients` of shape (groups, experts).

    Tensors come out in `out_dtype` (mergekit's `out_dtype:`), by default in the dtype
    the first expert stores them in. Constant tensors of the pool are not included.
    """
    if coefficients.shape != (len(layout), len(pool)):
        raise ValueError(f"coefficients of shape {coefficients.shape}, expected {(len(layout), len(pool))}")
    for spec, group in zip(pool.specs, layout.of_tensor):
        tensor = combine_tensor(pool, spec.name, coefficients[group], dtype=dtype, device=device)
        yield spec.name, tensor.to(out_dtype or spec.torch_dtype)


def constants(pool: ExpertPool) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors every expert has bit-identical, as the first expert stores them."""
    for name in pool.constant_names:
        yield name, pool.tensor(0, name)


def one_hot(layout: GroupLayout, experts: int, expert: int) -> np.ndarray:
    """The coefficients that reproduce expert `expert` exactly."""
    coefficients = np.zeros((len(layout), experts))
    coefficients[:, expert] = 1.0
    return coefficients
