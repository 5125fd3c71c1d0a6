"""Turn particles (coefficients per group) into weights, one tensor at a time.

For each tensor, the experts' tensors are read in expert order and accumulated in
float32 (float64 for float64 inputs) with `addcmul_`, then cast back to the input
dtype: exactly what mergekit's `linear` method does with `normalize: false`, so a
winner written as a vanilla `linear` recipe reproduces these weights bit for bit.

`combine_tensor` states that arithmetic plainly and is the reference. The fast path,
`write_combinations`, does the same arithmetic element by element, but walks each tensor
in cache-sized chunks and fills several particles at once: every expert tensor is read
once per pass (straight from its memory map), the accumulator stays in cache and is
reused across tensors, and results go straight into their destination (the resident
model's parameters or adapter slots). Nothing of the size of a model is ever allocated.
`write_flat` is that arithmetic on flat tensors: one tensor of every expert, or one run of
tensors packed end to end (`core.packing`); `writer` decides which.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from mergekit_swarm.experts import ExpertPool, TensorSpec
from mergekit_swarm.experts.groups import GroupLayout

# Accumulator elements per chunk, shared by the particles filled together. On a CPU it sits
# in L2/L3, so only the experts' bytes come from memory: accumulating 10 bf16 tensors of 24M
# elements on 2 EPYC cores took 0.045 s with 1 Mi-element chunks, 0.10 s with 64 Ki, 0.58 s
# unchunked. On a GPU large chunks keep kernel launches few.
CPU_CHUNK_ELEMENTS = 1 << 20
GPU_CHUNK_ELEMENTS = 1 << 24


def combine_tensor(
    pool: ExpertPool,
    name: str,
    coefficients: np.ndarray,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """sum_k coefficients[k] * expert_k[name], accumulated in expert order (the reference).

    `dtype` is mergekit's `dtype:`: inputs are cast to it before merging.
    """
    result: torch.Tensor | None = None
    for k in range(len(pool)):
        tensor = pool.tensor(k, name).to(device=device, dtype=dtype)
        if result is None:
            input_dtype = tensor.dtype
            weights = torch.tensor(coefficients, dtype=_accumulator_dtype(input_dtype), device=device)
            result = torch.zeros_like(tensor, dtype=weights.dtype)
        result.addcmul_(tensor, weights[k])
    assert result is not None
    return result.to(input_dtype)


class Accumulator:
    """A reusable float32/float64 scratch buffer of one chunk, per device, and the way chunks of
    the experts get there."""

    def __init__(self, device: str | torch.device = "cpu", elements: int | None = None):
        self.device = torch.device(device)
        self.elements = elements or (GPU_CHUNK_ELEMENTS if self.device.type == "cuda" else CPU_CHUNK_ELEMENTS)
        self._buffers: dict[torch.dtype, torch.Tensor] = {}
        self._staging: list[torch.Tensor | None] = [None, None]  # pinned host buffers, used in turn
        self._copied: list = [None, None]  # the CUDA event after each one's last transfer
        self._turn = 0

    def buffer(self, dtype: torch.dtype) -> torch.Tensor:
        if dtype not in self._buffers:
            self._buffers[dtype] = torch.empty(self.elements, dtype=dtype, device=self.device)
        return self._buffers[dtype]

    def upload(self, chunk: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
        """`chunk` of an expert (a memory-mapped view, or a tensor held on the device) on the
        device, in `dtype`. From the page cache to a GPU it goes through two pinned buffers in
        turn, so reading one chunk overlaps the transfer of the previous one."""
        if self.device.type != "cuda" or chunk.device.type != "cpu":
            return chunk.to(device=self.device, dtype=dtype)
        turn, self._turn = self._turn, 1 - self._turn
        nbytes = chunk.numel() * chunk.element_size()
        staging = self._staging[turn]
        if staging is None or staging.numel() < nbytes:
            staging = self._staging[turn] = torch.empty(max(nbytes, 1 << 20), dtype=torch.uint8, pin_memory=True)
        elif self._copied[turn] is not None:
            self._copied[turn].synchronize()  # its previous transfer must be done before it is overwritten
        host = staging[:nbytes].view(chunk.dtype).view(chunk.shape)
        host.copy_(chunk)
        on_device = host.to(self.device, non_blocking=True)
        self._copied[turn] = torch.cuda.Event()
        self._copied[turn].record()
        return on_device if dtype is None else on_device.to(dtype)


def write_combinations(
    pool: ExpertPool,
    spec: TensorSpec,
    weights: np.ndarray,
    targets: Sequence[torch.Tensor],
    *,
    dtype: torch.dtype | None = None,
    out_dtype: torch.dtype | None = None,
    accumulator: Accumulator | None = None,
    columns: torch.Tensor | None = None,
) -> None:
    """targets[p] <- sum_k weights[p, k] * expert_k[spec.name], for every row p of `weights`.

    Bit-identical to `combine_tensor(...).to(out_dtype or spec.torch_dtype)` copied into
    each target, but with one read of each expert tensor for all rows, in chunks. Targets
    are contiguous tensors of the spec's shape (any dtype and device: `copy_` casts).
    `columns`, the weights already on the device as `_weight_columns` lays them out, spares a
    host-to-device copy per tensor (on a GPU each such copy waits for the kernels before it).
    """
    if weights.shape != (len(targets), len(pool)):
        raise ValueError(f"weights of shape {weights.shape}, expected {(len(targets), len(pool))}")
    write_flat(
        expert_tensors(pool, spec.name),
        weights,
        [t.view(-1) for t in targets],
        out_dtype or spec.torch_dtype,
        dtype=dtype,
        accumulator=accumulator,
        columns=columns,
    )


def expert_tensors(pool: ExpertPool, name: str) -> list[torch.Tensor]:
    """Tensor `name` of every expert, flat: memory-mapped views, or prepared (LoRA) tensors."""
    return [pool.tensor(k, name).reshape(-1) for k in range(len(pool))]


def write_flat(
    sources: Sequence[torch.Tensor],
    weights: np.ndarray,
    targets: Sequence[torch.Tensor],
    final_dtype: torch.dtype,
    *,
    dtype: torch.dtype | None = None,
    accumulator: Accumulator | None = None,
    columns: torch.Tensor | None = None,
) -> None:
    """targets[p] <- sum_k weights[p, k] * sources[k], for flat (1-D) sources and targets of one size:
    one tensor of every expert, or one run of packed tensors (`core.packing.span`). The arithmetic of
    `write_combinations`, which it serves."""
    accumulator = accumulator or Accumulator(targets[0].device)
    input_dtype = dtype or sources[0].dtype  # as in combine_tensor: the first expert's, after mergekit's `dtype:`
    acc_dtype = _accumulator_dtype(input_dtype)
    if columns is None or columns.dtype != acc_dtype:
        columns = _weight_columns(weights, acc_dtype, accumulator.device)
    rows, size = len(targets), sources[0].numel()
    step = max(1, accumulator.elements // rows)
    scratch = accumulator.buffer(acc_dtype)
    for start in range(0, size, step):
        stop = min(start + step, size)
        acc = scratch[: rows * (stop - start)].view(rows, stop - start)
        acc.zero_()
        for k, source in enumerate(sources):
            acc.addcmul_(accumulator.upload(source[start:stop], dtype), columns[k])
        for p, target in enumerate(targets):  # rounded to the input dtype first, as mergekit does, then to the output's
            rounded_by_copy = target.dtype == final_dtype == input_dtype  # the copy's one rounding is that
            target[start:stop].copy_(acc[p] if rounded_by_copy else acc[p].to(input_dtype).to(final_dtype))


class FlatGroup:
    """The tensors of one parameter group that the pool keeps in memory (prepared LoRA A/B),
    concatenated once per expert into blocks of whole tensors: a pass then costs a few large
    operations per block, on an accumulator that stays in cache, instead of a few operations
    per (small) tensor. Same arithmetic, element by element, as `combine_tensor`."""

    def __init__(
        self,
        pool: ExpertPool,
        specs: list[TensorSpec],
        *,
        dtype: torch.dtype | None,
        accumulator: Accumulator,
        block_elements: int = 1 << 18,
    ):
        self.accumulator = accumulator
        self.blocks: list[tuple[list[TensorSpec], list[int], list[torch.Tensor]]] = []
        for members in _blocks(specs, block_elements):
            offsets = [0]
            for spec in members:
                offsets.append(offsets[-1] + math.prod(spec.shape))
            sources = [
                torch.cat([pool.tensor(k, spec.name).to(device=accumulator.device, dtype=dtype).reshape(-1) for spec in members])
                for k in range(len(pool))
            ]
            self.blocks.append((members, offsets, sources))

    def write(
        self,
        weights: np.ndarray,
        targets: Sequence[dict[str, torch.Tensor]],
        out_dtype: torch.dtype | None,
        columns: torch.Tensor | None = None,
    ) -> None:
        """targets[p][name] <- row p of `weights` applied to every tensor of the group (`columns`:
        the same weights already on the device, as in `write_combinations`)."""
        input_dtype = self.blocks[0][2][0].dtype
        acc_dtype = _accumulator_dtype(input_dtype)
        if columns is None or columns.dtype != acc_dtype:
            columns = _weight_columns(weights, acc_dtype, self.accumulator.device)
        for members, offsets, sources in self.blocks:
            size = offsets[-1]
            if len(targets) * size <= self.accumulator.elements:
                acc = self.accumulator.buffer(acc_dtype)[: len(targets) * size].view(len(targets), size)
                acc.zero_()
            else:  # a single tensor larger than the accumulator
                acc = torch.zeros((len(targets), size), dtype=acc_dtype, device=self.accumulator.device)
            for k, source in enumerate(sources):
                acc.addcmul_(source, columns[k])
            result = acc.to(input_dtype)
            for spec, start, stop in zip(members, offsets, offsets[1:]):
                for p, slot in enumerate(targets):
                    slot[spec.name].view(-1).copy_(result[p, start:stop].to(out_dtype or spec.torch_dtype))


def _blocks(specs: list[TensorSpec], elements: int) -> Iterator[list[TensorSpec]]:
    """Consecutive runs of whole tensors of at most `elements` elements (or one larger tensor)."""
    block: list[TensorSpec] = []
    size = 0
    for spec in specs:
        numel = math.prod(spec.shape)
        if block and size + numel > elements:
            yield block
            block, size = [], 0
        block.append(spec)
        size += numel
    if block:
        yield block


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
    check_shape(coefficients, layout, pool)
    accumulator = Accumulator(device)
    for spec, group in zip(pool.specs, layout.of_tensor):
        tensor = torch.empty(spec.shape, dtype=out_dtype or spec.torch_dtype, device=device)
        write_combinations(
            pool, spec, coefficients[group][None], [tensor], dtype=dtype, out_dtype=out_dtype, accumulator=accumulator
        )
        yield spec.name, tensor


def check_shape(coefficients: np.ndarray, layout: GroupLayout, pool: ExpertPool) -> None:
    if coefficients.shape != (len(layout), len(pool)):
        raise ValueError(f"coefficients of shape {coefficients.shape}, expected {(len(layout), len(pool))}")


def constants(pool: ExpertPool) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors every expert has bit-identical, as the first expert stores them."""
    for name in pool.constant_names:
        yield name, pool.tensor(0, name)


def one_hot(layout: GroupLayout, experts: int, expert: int) -> np.ndarray:
    """The coefficients that reproduce expert `expert` exactly."""
    coefficients = np.zeros((len(layout), experts))
    coefficients[:, expert] = 1.0
    return coefficients


def _accumulator_dtype(input_dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if input_dtype == torch.float64 else torch.float32


def _weight_columns(weights: np.ndarray, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """weights (rows, experts) as (experts, rows, 1): column k scales expert k's tensor for every row."""
    return torch.tensor(weights, dtype=dtype, device=device).T.unsqueeze(-1).contiguous()
