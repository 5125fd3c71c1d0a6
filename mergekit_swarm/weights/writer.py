"""Writing particles into a resident model's tensors: its parameters, or its adapter slots.

`kernels` has the arithmetic (one tensor, or one run of tensors, of several particles); this
module decides what is written how: tensors the pool keeps in memory by `FlatGroup`, the streamed
ones in runs (`core.packing`: consecutive tensors lying end to end in every expert and every destination
are written together), and tensors the model holds in another layout through scratch and a
`Conversion` (see `destinations`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mergekit_swarm.core.packing import span
from mergekit_swarm.experts import ExpertPool, TensorSpec
from mergekit_swarm.experts.groups import GroupLayout
from mergekit_swarm.weights.destinations import Destination
from mergekit_swarm.weights.kernels import Accumulator, FlatGroup, check_shape, expert_tensors, write_combinations, write_flat


class ParticleWriter:
    """Writes particles into destinations (a resident model's parameters or adapter slots, see
    `destinations`): in-memory tensors by `FlatGroup`, the rest streamed by `write_flat`, in
    runs where the tensors are packed (`direct_runs`), else one tensor at a time.

    A checkpoint tensor the model holds in another layout (a `Conversion`) is merged into a
    scratch tensor first; once all the sources of a conversion are written, it is converted into
    the model tensors. Scratch for streamed sources is one reused arena per slot, so a full MoE
    model needs one fused parameter's worth of scratch, not a second copy of its experts.
    """

    def __init__(
        self,
        pool: ExpertPool,
        layout: GroupLayout,
        *,
        dtype: torch.dtype | None = None,
        out_dtype: torch.dtype | None = None,
        device: str | torch.device = "cpu",
    ):
        self.pool, self.layout, self.dtype, self.out_dtype = pool, layout, dtype, out_dtype
        self.accumulator = Accumulator(device)
        members: dict[int, list[TensorSpec]] = {}
        self.streamed: list[tuple[TensorSpec, int]] = []
        for spec, group in zip(pool.specs, layout.of_tensor):
            if pool.in_memory(spec.name):
                members.setdefault(group, []).append(spec)
            else:
                self.streamed.append((spec, group))
        self.flat = {g: FlatGroup(pool, specs, dtype=dtype, accumulator=self.accumulator) for g, specs in members.items()}
        self._arenas: list[Arena] = []
        self._runs: dict[tuple[int, ...], tuple[Sequence[Destination], tuple[int, ...], list[Run]]] = {}

    def write(self, particles: Sequence[np.ndarray], destinations: Sequence[Destination]) -> None:
        """destinations[p] <- the particle particles[p], in one pass over the experts."""
        for coefficients in particles:
            check_shape(coefficients, self.layout, self.pool)
        while len(self._arenas) < len(destinations):
            self._arenas.append(Arena(self.accumulator.device))
        targets = [self._kept_targets(destination) for destination in destinations]
        weights = np.stack(particles, axis=1)  # (groups, rows, experts)
        # every group's weights sent to the device once per write (float32; float64 inputs get their own):
        # on a GPU a host-to-device copy per group or tensor would wait for the kernels before it each time
        columns = torch.tensor(weights, dtype=torch.float32, device=self.accumulator.device).transpose(1, 2).unsqueeze(-1)
        for group, flat in self.flat.items():
            flat.write(weights[group], targets, self.out_dtype, columns[group])
        for run in self.direct_runs(destinations):
            write_flat(
                run.sources(self.pool),
                weights[run.group],
                run.targets,
                self.out_dtype or run.dtype,
                dtype=self.dtype,
                accumulator=self.accumulator,
                columns=columns[run.group],
            )
        streamed = {spec.name: (spec, group) for spec, group in self.streamed}
        for c, conversion in enumerate(destinations[0].conversions):  # the same conversions in every slot
            pending = [streamed[name] for name in conversion.sources if name in streamed]
            for slot, arena in zip(targets, self._arenas):
                slot.update(arena.take([(spec.name, spec.shape, self._final_dtype(spec)) for spec, _ in pending]))
            self._stream(weights, columns, pending, targets)
            for destination, slot in zip(destinations, targets):
                destination.conversions[c].apply(slot)

    def direct_runs(self, destinations: Sequence[Destination]) -> list[Run]:
        """The streamed tensors written into `destinations` as they are, in runs: consecutive tensors of
        one group that lie end to end in every expert and every destination (`core.packing`) form one run,
        every other tensor is a run of its own. Worked out once per set of destinations, and again
        if any of their tensors has moved since (e.g. parameters packed after a first write)."""
        key = tuple(map(id, destinations))
        places = tuple(tensor.data_ptr() for d in destinations for tensor in d.direct.values())
        if key not in self._runs or self._runs[key][1] != places:  # kept with their runs, ids stay theirs
            members = [(spec, g) for spec, g in self.streamed if spec.name in destinations[0].direct]
            slots = [d.direct for d in destinations]
            self._runs[key] = (destinations, places, list(_runs(self.pool, members, slots)))
        return self._runs[key][2]

    def _kept_targets(self, destination: Destination) -> dict[str, torch.Tensor]:
        """Direct targets, plus scratch buffers kept for the in-memory sources of conversions (and the
        constant ones, which the resident model put there once)."""
        targets = {**destination.scratch, **destination.direct}
        for conversion in destination.conversions:
            for name in conversion.sources:
                if self.pool.in_memory(name):
                    if name not in destination.scratch:
                        spec = self.pool.spec(name)
                        destination.scratch[name] = torch.empty(
                            spec.shape, dtype=self._final_dtype(spec), device=self.accumulator.device
                        )
                    targets[name] = destination.scratch[name]
        return targets

    def _stream(
        self,
        weights: np.ndarray,
        columns: torch.Tensor,
        members: list[tuple[TensorSpec, int]],
        targets: list[dict[str, torch.Tensor]],
    ) -> None:
        for spec, group in members:
            write_combinations(
                self.pool,
                spec,
                weights[group],
                [slot[spec.name] for slot in targets],
                dtype=self.dtype,
                out_dtype=self.out_dtype,
                accumulator=self.accumulator,
                columns=columns[group],
            )

    def _final_dtype(self, spec: TensorSpec) -> torch.dtype:
        return self.out_dtype or spec.torch_dtype


@dataclass
class Run:
    """Consecutive tensors of one group, seen as one flat tensor in every expert and every slot."""

    group: int
    specs: list[TensorSpec]
    targets: list[torch.Tensor]  # per slot
    packed_sources: list[torch.Tensor] | None  # per expert, for several tensors; one is read per write

    @property
    def dtype(self) -> torch.dtype:
        return self.specs[0].torch_dtype

    def sources(self, pool: ExpertPool) -> list[torch.Tensor]:
        # a single tensor is read when written, as before runs: a LoRA pool too large to be held in
        # memory prepares its tensors per read, and they must not be kept
        return self.packed_sources or expert_tensors(pool, self.specs[0].name)


def _runs(pool: ExpertPool, members: list[tuple[TensorSpec, int]], slots: list[dict[str, torch.Tensor]]) -> Iterator[Run]:
    """Greedy maximal runs of `members`, in order (see `ParticleWriter.direct_runs`)."""

    def tensors(spec: TensorSpec) -> Iterator[torch.Tensor]:  # lazily: the first pair apart ends a check
        yield from (pool.tensor(k, spec.name) for k in range(len(pool)))
        yield from (slot[spec.name] for slot in slots)

    run: list[TensorSpec] = []
    for i, (spec, group) in enumerate(members + [(None, -1)]):
        if run and (
            spec is None
            or group != members[i - 1][1]
            or spec.dtype != run[0].dtype
            or any(span([a, b]) is None for a, b in zip(tensors(run[-1]), tensors(spec)))
        ):
            if len(run) == 1:
                yield Run(members[i - 1][1], run, [slot[run[0].name].view(-1) for slot in slots], None)
            else:
                flat = [_spanned(column) for column in zip(*(list(tensors(s)) for s in run))]
                yield Run(members[i - 1][1], run, flat[len(pool) :], flat[: len(pool)])
            run = []
        if spec is not None:
            run.append(spec)


def _spanned(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """`span` of one column of a run: each consecutive pair was checked to lie end to end as the run grew."""
    whole = span(tensors)
    assert whole is not None
    return whole


class Arena:
    """One growing byte buffer carved into scratch tensors that are reused for every conversion."""

    ALIGN = 64

    def __init__(self, device: torch.device):
        self.device = device
        self._buffer = torch.empty(0, dtype=torch.uint8, device=device)

    def take(self, tensors: list[tuple[str, tuple[int, ...], torch.dtype]]) -> dict[str, torch.Tensor]:
        """Scratch tensors of these names, shapes and dtypes, valid until the next `take`."""
        offsets, size = [], 0
        for _, shape, dtype in tensors:
            offsets.append(size)
            nbytes = math.prod(shape) * dtype.itemsize
            size += -(-nbytes // self.ALIGN) * self.ALIGN
        if size > self._buffer.numel():
            self._buffer = torch.empty(size, dtype=torch.uint8, device=self.device)
        return {
            name: self._buffer[offset : offset + math.prod(shape) * dtype.itemsize].view(dtype).view(shape)
            for (name, shape, dtype), offset in zip(tensors, offsets)
        }
