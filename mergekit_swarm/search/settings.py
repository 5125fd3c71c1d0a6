"""The `evaluation:` section of a recipe: how particles are evaluated (not what is searched).

These settings change speed and memory, never the search: they are left out of the run's
fingerprint, so an interrupted run can resume with other values.
"""

from __future__ import annotations

from pydantic import Field

from mergekit_swarm.config_base import StrictSection


class EvaluationSettings(StrictSection):
    """How the utility is run on the particles."""

    section_name = "evaluation"

    particles_per_batch: int = Field(
        1,
        ge=1,
        description=(
            "LoRA pools: particles written into adapter slots of one PeftModel in one pass and scored together in "
            "mixed-adapter batches (batch_size prompts x particles_per_batch rows per forward). Full-model pools: 1. "
            "Default 1: on CPU with small models, mixed batches measured slower than one particle at a time."
        ),
    )
