"""Where a checkpoint tensor lands in a loaded model, by transformers' and PEFT's own conversions.

Particles are merged in checkpoint layout: the names and shapes the experts store on disk,
which mergekit reads and the output folder holds. transformers 5 does not load every
checkpoint tensor as it is stored: `from_pretrained` renames keys (GPT-NeoX `embed_out` ->
`lm_head`) and converts layouts (Mixtral's per-expert `block_sparse_moe.experts.3.w1.weight`
are stacked and fused into one 3-D `mlp.experts.gate_up_proj`); `PeftModel.from_pretrained`
does the same for adapters trained on the older per-expert layout.

A `Destination` tells, for one resident model or adapter slot, which checkpoint tensors are
written in place into a model tensor (`direct`) and which are first merged into scratch
tensors and then converted, by the very converter `from_pretrained` would apply, into the
model tensors (`conversions`). Nothing here knows an architecture: the rules come from
`transformers.conversion_mapping.get_model_conversion_mapping` (full models) and
`peft.utils.transformers_weight_conversion` (adapters), applied exactly as their loaders
apply them, so a particle lands where `from_pretrained` would have put the same tensors.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from mergekit_swarm.core.errors import ExpertError
from mergekit_swarm.experts.lora import is_lora_tensor

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel

Shapes = Mapping[str, tuple[int, ...]]  # checkpoint tensor name -> shape


@dataclass
class Conversion:
    """Checkpoint tensors that are converted together into model tensors (e.g. the per-expert
    weights of one MoE layer fused into one 3-D parameter)."""

    sources: tuple[str, ...]  # checkpoint names, in the order the converter collects them
    targets: dict[str, torch.Tensor]  # model tensor name -> the model tensor (shares the model's storage)
    convert: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]  # sources -> model tensor name -> value

    @torch.no_grad()
    def apply(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Convert the merged source tensors and copy the result into the model tensors."""
        converted = self.convert({name: tensors[name] for name in self.sources})
        for name, target in self.targets.items():
            target.copy_(converted[name])


@dataclass
class Destination:
    """Where one particle, in checkpoint layout, is written in a resident model (or adapter slot)."""

    direct: dict[str, torch.Tensor]  # checkpoint name -> the model tensor it is copied into as it is
    conversions: list[Conversion] = field(default_factory=list)
    scratch: dict[str, torch.Tensor] = field(default_factory=dict)  # kept buffers of conversion sources (the writer's)

    def names(self) -> set[str]:
        return set(self.direct) | {name for c in self.conversions for name in c.sources}


def model_destination(model: PreTrainedModel, shapes: Shapes) -> Destination:
    """The destination of a full checkpoint with tensors `shapes` in a transformers `model`.

    Mirrors `transformers.core_model_loading.convert_and_load_state_dict_in_model`: keys are
    visited in its order, renamed by the model's conversion mapping (legacy renames included),
    and the keys one converter collects for one parameter form one `Conversion`.
    """
    from transformers.core_model_loading import WeightConverter, WeightRenaming, dot_natural_key, rename_source_key

    mapping = _conversion_mapping(model)
    renamings = [m for m in mapping if isinstance(m, WeightRenaming)]
    converters = [m for m in mapping if isinstance(m, WeightConverter)]
    by_pattern = {pattern: converter for converter in converters for pattern in converter.source_patterns}
    params = model.state_dict()
    prefix = getattr(model, "base_model_prefix", None)
    direct: dict[str, torch.Tensor] = {}
    groups: dict[str, tuple[object, list[tuple[str, str]]]] = {}  # target -> (converter, [(source, pattern)])
    for name in sorted(shapes, key=dot_natural_key):
        target, pattern = rename_source_key(name, renamings, converters, prefix, params)
        if target not in params and name in params:  # as transformers: the key needed no renaming
            target, pattern = rename_source_key(name, [], [], prefix, params)
        if target not in params:
            raise ExpertError(f"tensor {name!r} of the experts has no counterpart in the resident model (loaded as {target!r})")
        if pattern is None:
            direct[name] = params[target]
        else:
            groups.setdefault(target, (by_pattern[pattern], []))[1].append((name, pattern))

    def converter_of(target: str, template, members: list[tuple[str, str]]):
        def convert(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            converter = copy.deepcopy(template)  # transformers gives every parameter its own converter instance
            for source, pattern in members:
                converter.add_tensor(target, source, pattern, tensors[source])
            values = converter.convert(target, model=model, config=model.config)
            return {key: value[0] if isinstance(value, list) else value for key, value in values.items()}

        return convert

    conversions = []
    for target, (template, members) in groups.items():
        convert = converter_of(target, template, members)
        outputs = _dry_run(convert, [source for source, _ in members], shapes)
        conversions.append(Conversion(tuple(s for s, _ in members), _targets_of(outputs, params, members[0][0]), convert))
    destination = Destination(direct, conversions)
    _check(destination, shapes, model)
    return destination


def adapter_destination(model: PeftModel, slot: str, shapes: Shapes) -> Destination:
    """The destination of an adapter with tensors `shapes` (PEFT-serialized names) in adapter
    slot `slot` of a PeftModel, converted as `PeftModel.from_pretrained` converts adapters
    stored in an older layout than the loaded model's."""
    from peft.utils import get_peft_model_state_dict

    available = get_peft_model_state_dict(model, adapter_name=slot)
    probes = {name: torch.empty(shape, device="meta") for name, shape in shapes.items()}
    loaded = _convert_adapter(model, slot, probes)
    direct = {}
    for name, probe in probes.items():
        if loaded.get(name) is probe:  # passed through untouched
            if name not in available:
                raise ExpertError(f"tensor {name!r} of the adapters has no counterpart in the resident model")
            direct[name] = available[name]
    sources = tuple(name for name in shapes if name not in direct)
    conversions = []
    if sources:

        def convert(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return _convert_adapter(model, slot, tensors)

        outputs = _dry_run(convert, list(sources), shapes)
        conversions.append(Conversion(sources, _targets_of(outputs, available, sources[0]), convert))
    destination = Destination(direct, conversions)
    _check(destination, shapes, model)
    covered = set(direct) | set(destination_targets(destination))
    uncovered = [name for name in available if is_lora_tensor(name) and name not in covered]
    if uncovered:
        raise ExpertError(f"the adapter slot has {uncovered[0]!r}, which the experts do not provide")
    return destination


def destination_targets(destination: Destination) -> list[str]:
    """Names of the model tensors the conversions of `destination` write."""
    return [name for conversion in destination.conversions for name in conversion.targets]


def _conversion_mapping(model: PreTrainedModel) -> list:
    """The conversions `from_pretrained` applies to this model class (none before transformers 5)."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
    except ImportError:
        return []
    return get_model_conversion_mapping(model)


def _convert_adapter(model: PeftModel, slot: str, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """PEFT's own conversion of an adapter state dict to the loaded model's layout."""
    try:
        from peft.utils.transformers_weight_conversion import convert_peft_adapter_state_dict_for_transformers
    except ImportError:  # PEFT or transformers without layout conversions: adapters load as stored
        return state_dict
    return convert_peft_adapter_state_dict_for_transformers(model, model.peft_config[slot], dict(state_dict), adapter_name=slot)


def _dry_run(convert, sources: list[str], shapes: Shapes) -> dict[str, torch.Size]:
    """Output names and shapes of a conversion, run on shape-only (meta) tensors."""
    try:
        outputs = convert({name: torch.empty(shapes[name], device="meta") for name in sources})
    except Exception as exc:  # a converter's own error: shapes that do not fit the model
        raise ExpertError(f"tensor {sources[0]!r} of the experts cannot be converted to the model's layout ({exc})") from None
    return {name: value.shape for name, value in outputs.items()}


def _targets_of(outputs: dict[str, torch.Size], available: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    targets = {}
    for name, shape in outputs.items():
        if name not in available:
            raise ExpertError(f"tensor {source!r} of the experts converts to {name!r}, which the resident model lacks")
        if tuple(available[name].shape) != tuple(shape):
            raise ExpertError(
                f"tensor {source!r} of the experts converts to {name!r} of shape {list(shape)}, "
                f"but the model has {list(available[name].shape)}"
            )
        targets[name] = available[name]
    return targets


def _check(destination: Destination, shapes: Shapes, model: torch.nn.Module) -> None:
    """Direct targets have the checkpoint's shapes, and every target is the model's own storage."""
    storages = {p.data_ptr() for p in model.parameters()} | {b.data_ptr() for b in model.buffers()}
    for name, target in destination.direct.items():
        if tuple(target.shape) != tuple(shapes[name]):
            raise ExpertError(f"tensor {name!r}: experts have shape {list(shapes[name])}, the model {list(target.shape)}")
    for name, target in [*destination.direct.items(), *((n, t) for c in destination.conversions for n, t in c.targets.items())]:
        if target.data_ptr() not in storages:
            raise ExpertError(f"tensor {name!r} does not share storage with the model, so it cannot be written in place")
