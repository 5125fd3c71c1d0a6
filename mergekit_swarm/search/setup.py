"""What a search needs, opened from a resolved recipe before any output folder is touched.

`prepare` opens the expert pool, its parameter groups and the tokenizer source, and checks
what can be checked; `SearchSetup` then loads what the evaluation engines need: the resident
model (`resident_model`) and the utilities (`utilities`, built once, on first use: the Ray
driver never builds them, its workers do).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal

from mergekit_swarm.config import SwarmRecipe
from mergekit_swarm.core.errors import ConfigError
from mergekit_swarm.core.run_options import ModelAccess, Sources
from mergekit_swarm.experts import ExpertPool, LoraPool, open_recipe_pool
from mergekit_swarm.experts.groups import GroupLayout, group_layout
from mergekit_swarm.experts.tokenizer import load_tokenizer, tokenizer_folder, vocabulary_note
from mergekit_swarm.pso import Granularity
from mergekit_swarm.utilities import Split, Utility
from mergekit_swarm.weights.resident import ResidentModel


@dataclass(frozen=True)
class SearchSetup:
    """A resolved recipe's experts, parameter groups and tokenizer, checked."""

    recipe: SwarmRecipe
    pool: ExpertPool
    layout: GroupLayout
    tokenizer_source: Path
    notes: tuple[str, ...] = ()  # what the user should know before the search (printed by the run)

    @property
    def is_lora(self) -> bool:
        return isinstance(self.pool, LoraPool)

    def slots(self, particles_per_batch: int | Literal["auto"], particles: int) -> int:
        """Particles one resident model holds and scores together: adapter slots for LoRA pools, else 1
        (`auto`: all `particles` of an iteration; the device's memory may lower it when scoring)."""
        if not self.is_lora:
            return 1
        return particles if particles_per_batch == "auto" else particles_per_batch

    def check_utilities(self) -> None:
        """Build the utilities now, so that a broken objective fails before any output is touched."""
        self.utilities  # noqa: B018  (built and kept on first use)

    @cached_property
    def utilities(self) -> dict[Split, Utility]:
        """The recipe's utility on each split it has data for: "dev", "test" if given, and with
        `swarm.holdout` the two parts of dev ("search", "holdout")."""
        holdout = self.recipe.swarm.holdout
        splits: tuple[Split, ...] = ("dev", "test", *(("search", "holdout") if holdout else ()))
        built: dict[Split, Utility | None] = {split: self.recipe.utility.build(split, holdout) for split in splits}
        if built["dev"] is None:
            raise ConfigError(f"{self.recipe.source}: utility: nothing to evaluate on the dev side")
        return {split: utility for split, utility in built.items() if utility is not None}

    def resident_model(
        self, options: ModelAccess, slots: int = 1, layout: GroupLayout | None = None, *, fewer_slots: bool = False
    ) -> ResidentModel:
        """Load the model particles are written into (the base with adapter slots, or the first
        expert), for particles of `layout` (default: the setup's). With `fewer_slots` (`auto`), one
        slot where PEFT cannot batch the adapters instead of an error."""
        from mergekit.common import dtype_from_name

        recipe = self.recipe
        merge_dtype, out_dtype = dtype_from_name(recipe.dtype), dtype_from_name(recipe.out_dtype)
        source = recipe.base_folder if self.is_lora else recipe.expert_folders[0]
        if source is None:  # (the pool of LoRA experts was refused already)
            raise ConfigError(f"{recipe.source}: base_model: is required when the experts are LoRA adapters")
        return ResidentModel.open(
            self.pool,
            layout or self.layout,
            model_source=source,
            tokenizer=load_tokenizer(self.tokenizer_source, recipe, options.trust_remote_code),
            model_dtype=merge_dtype if self.is_lora else out_dtype,
            merge_dtype=merge_dtype,
            out_dtype=out_dtype,
            device=options.device,
            trust_remote_code=options.trust_remote_code,
            slots=slots if self.is_lora else 1,
            fewer_slots=fewer_slots,
            hold_experts=options.read_to_gpu,
        )


def prepare(recipe: SwarmRecipe, options: Sources, granularity: Granularity) -> SearchSetup:
    """Open the expert pool, its parameter groups at `granularity` and the tokenizer source of a
    resolved recipe (`SwarmRecipe.resolve`); refuse what cannot be searched."""
    pool = open_recipe_pool(recipe, allow_pickle=options.allow_pickle, trust_remote_code=options.trust_remote_code)
    tokenizer_source = tokenizer_folder(recipe, options.trust_remote_code)
    note = vocabulary_note(recipe, tokenizer_source, options.trust_remote_code)
    return SearchSetup(recipe, pool, group_layout(pool, granularity), tokenizer_source, notes=(note,) if note else ())
