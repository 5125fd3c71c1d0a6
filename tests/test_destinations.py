"""Where checkpoint tensors land in a loaded model (`weights/destinations.py`).

A destination must put every checkpoint tensor where `from_pretrained` (or `PeftModel.from_pretrained`)
puts it: in place, in the model's own storage, renamed (GPT-NeoX `embed_out` -> `lm_head`) or converted
(Mixtral's per-expert weights fused into 3-D parameters) by transformers' and PEFT's own rules. Checked by
writing an expert's tensors through the destination into another model and comparing with the expert
as the stock loader loads it, bit for bit.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mergekit_swarm.core.errors import ExpertError
from mergekit_swarm.testing import toy
from mergekit_swarm.testing.architectures import build_base, build_full_experts, build_per_expert_lora
from mergekit_swarm.weights.destinations import Destination, adapter_destination, destination_targets, model_destination


def checkpoint(folder: Path, pattern: str = "*.safetensors") -> dict[str, torch.Tensor]:
    """Every tensor a checkpoint folder stores (all shards), by its stored name."""
    tensors = {}
    for path in sorted(folder.glob(pattern)):
        tensors.update(load_file(str(path)))
    return tensors


def shapes_of(tensors: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {name: tuple(tensor.shape) for name, tensor in tensors.items()}


@torch.no_grad()
def write(destination: Destination, tensors: dict[str, torch.Tensor]) -> None:
    """A particle equal to `tensors`, written as the materializer writes it: direct copies, then conversions."""
    for name, target in destination.direct.items():
        target.copy_(tensors[name])
    for conversion in destination.conversions:
        conversion.apply(tensors)


def storages(model) -> set[int]:
    return {p.data_ptr() for p in model.parameters()} | {b.data_ptr() for b in model.buffers()}


def load_full(folder: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder).eval()


def test_every_checkpoint_tensor_of_a_full_expert_is_the_model_tensor_of_its_name(zoo):
    """The zoo's (sharded) Llama expert needs no renaming: every stored tensor is written, as it is, into
    the model parameter of the same name and shape, in the model's own storage."""
    stored = checkpoint(zoo.full[0])
    model = load_full(zoo.full[1])  # another expert: the destination is about names, not values
    destination = model_destination(model, shapes_of(stored))
    assert destination.conversions == [] and destination.names() == set(stored)
    parameters = dict(model.named_parameters())
    for name, shape in shapes_of(stored).items():
        target = destination.direct[name]
        assert tuple(target.shape) == shape and target.data_ptr() == parameters[name].data_ptr(), name
    reference = load_full(zoo.full[0]).state_dict()
    assert not torch.equal(model.lm_head.weight, reference["lm_head.weight"])  # another expert: the check has power
    write(destination, stored)
    assert all(torch.equal(tensor, reference[name]) for name, tensor in model.state_dict().items())


@pytest.fixture(scope="module")
def architectures(tmp_path_factory):
    """architecture -> (base, full expert), tiny random-init checkpoints in the layout transformers writes."""
    root = tmp_path_factory.mktemp("destinations")
    tokenizer = toy.build_char_tokenizer()
    built = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for architecture in ("gpt-neox", "mixtral"):
            base = build_base(architecture, root / architecture / "base", tokenizer)
            built[architecture] = (base, build_full_experts(base, root / architecture, count=1)[0])
    return built


def test_a_renamed_key_lands_where_from_pretrained_puts_it(architectures):
    """GPT-NeoX checkpoints store the output head as `embed_out`; transformers 5 loads it as `lm_head`."""
    base, expert = architectures["gpt-neox"]
    stored = checkpoint(expert)
    model = load_full(base)
    assert "embed_out.weight" in stored and "embed_out.weight" not in model.state_dict()
    destination = model_destination(model, shapes_of(stored))
    assert destination.conversions == [] and destination.names() == set(stored)
    assert destination.direct["embed_out.weight"].data_ptr() == model.lm_head.weight.data_ptr()
    reference = load_full(expert).state_dict()
    assert not torch.equal(model.lm_head.weight, reference["lm_head.weight"])  # the base: the check has power
    write(destination, stored)
    assert model.state_dict().keys() == reference.keys()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, reference[name]), name


def test_per_expert_weights_are_fused_by_the_converter_from_pretrained_applies(architectures):
    """Mixtral checkpoints store every MoE expert's w1/w2/w3; transformers 5 fuses them per layer into
    `mlp.experts.gate_up_proj` and `mlp.experts.down_proj`: conversions of the stored tensors, whose
    targets are those 3-D parameters of the model."""
    base, expert = architectures["mixtral"]
    stored = checkpoint(expert)
    model = load_full(base)
    destination = model_destination(model, shapes_of(stored))
    assert destination.names() == set(stored)
    fused = [name for name in stored if ".block_sparse_moe.experts." in name]
    assert fused and not set(fused) & set(destination.direct)
    assert sorted(name for c in destination.conversions for name in c.sources) == sorted(fused)
    parameters = dict(model.named_parameters())
    targets = destination_targets(destination)
    assert "model.layers.1.mlp.experts.gate_up_proj" in targets and "model.layers.0.mlp.experts.down_proj" in targets
    for conversion in destination.conversions:
        for name, target in conversion.targets.items():
            assert target.dim() == 3 and target.data_ptr() == parameters[name].data_ptr(), name
    reference = load_full(expert).state_dict()
    assert not torch.equal(parameters[targets[0]], reference[targets[0]])  # the base: the check has power
    write(destination, stored)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, reference[name]), name


def peft_slot(base: Path, adapter: Path, slot: str):
    """A PeftModel with an adapter slot `slot` configured as `adapter`, its LoRA weights zeroed."""
    from peft import PeftModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = PeftModel.from_pretrained(load_full(base), adapter, adapter_name=slot).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.zero_()
    return model


def load_adapter(base: Path, adapter: Path):
    from peft import PeftModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PeftModel.from_pretrained(load_full(base), adapter).eval()


def test_adapter_tensors_land_in_their_slot_as_peft_loads_them(zoo):
    """A PEFT-serialized adapter of the zoo: every stored tensor is its slot's tensor of the same shape
    (the slot named as the resident model names it), and written there it is the adapter PEFT loads."""
    adapter = zoo.lora[2]
    stored = checkpoint(adapter, "adapter_model.safetensors")
    model = peft_slot(zoo.base, adapter, "swarm")
    destination = adapter_destination(model, "swarm", shapes_of(stored))
    assert destination.conversions == [] and destination.names() == set(stored)
    own = storages(model)
    for name, shape in shapes_of(stored).items():
        assert tuple(destination.direct[name].shape) == shape and destination.direct[name].data_ptr() in own, name
    ids = torch.tensor([[1, 20, 7, 8, 9, 40, 7]])
    reference = load_adapter(zoo.base, adapter)
    with torch.no_grad():
        assert not torch.equal(model(input_ids=ids).logits, reference(input_ids=ids).logits)  # zeroed: the check has power
        write(destination, stored)
        assert torch.equal(model(input_ids=ids).logits, reference(input_ids=ids).logits)


def test_an_adapter_in_the_older_per_expert_layout_is_converted_as_peft_converts_it(architectures, tmp_path):
    """A Mixtral adapter saved when the experts were modules: PEFT converts it into the fused layout on
    loading, and the destination applies that very conversion."""
    base, _ = architectures["mixtral"]
    adapter = build_per_expert_lora(base, tmp_path / "per-expert", rank=2, seed=0)
    stored = checkpoint(adapter, "adapter_model.safetensors")
    model = peft_slot(base, adapter, "swarm")
    destination = adapter_destination(model, "swarm", shapes_of(stored))
    assert destination.conversions and destination.names() == set(stored)
    assert all(".block_sparse_moe.experts." in name for c in destination.conversions for name in c.sources)
    ids = torch.tensor([[1, 10, 20, 30, 11, 21, 31, 12, 22, 32, 2]])
    reference = load_adapter(base, adapter)
    with torch.no_grad():
        assert not torch.equal(model(input_ids=ids).logits, reference(input_ids=ids).logits)
        write(destination, stored)
        torch.testing.assert_close(model(input_ids=ids).logits, reference(input_ids=ids).logits, rtol=0, atol=0)


def test_tensors_without_a_place_in_the_model_are_refused_by_name(zoo):
    model = load_full(zoo.full[0])
    shapes = shapes_of(checkpoint(zoo.full[0]))
    with pytest.raises(ExpertError, match=r"'model\.extra\.weight' of the experts has no counterpart in the resident model"):
        model_destination(model, {**shapes, "model.extra.weight": (4, 4)})
    wrong = {**shapes, "model.norm.weight": (3,)}
    with pytest.raises(ExpertError, match=r"tensor 'model\.norm\.weight': experts have shape \[3\], the model \["):
        model_destination(model, wrong)

    stored = shapes_of(checkpoint(zoo.lora[0], "adapter_model.safetensors"))
    slot = peft_slot(zoo.base, zoo.lora[0], "swarm")
    missing = sorted(stored)[0]
    with pytest.raises(ExpertError, match="which the experts do not provide"):
        adapter_destination(slot, "swarm", {name: shape for name, shape in stored.items() if name != missing})
    with pytest.raises(ExpertError, match="has no counterpart in the resident model"):
        adapter_destination(slot, "swarm", {**stored, "base_model.model.model.extra.lora_A.weight": (2, 4)})
