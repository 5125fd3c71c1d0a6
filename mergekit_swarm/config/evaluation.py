"""The `evaluation:` section of a recipe: how particles are evaluated (not what is searched).

These settings change speed and memory, never the search: they are left out of the run's
fingerprint, so an interrupted run can resume with other values (another backend included).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from mergekit_swarm.core.schema import StrictSection

Backend = Literal["local", "ray"]


class EvaluationSettings(StrictSection):
    """How the utility is run on the particles: in this process, or on Ray workers."""

    section_name = "evaluation"

    particles_per_batch: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        default="auto",
        description=(
            "LoRA pools: particles written into adapter slots of the resident model in one pass and scored together "
            "in one batch (batch_size prompts x particles rows per forward; every LoRA layer serves all slots with "
            "batched matmuls). `auto`: every particle of an iteration, on a GPU as many as its memory holds "
            "(measured once; an out-of-memory halves it), on a CPU as many as fit in a budget of the model's own "
            "size, at least 256 MiB (measured once: there a bigger batch buys little once the model's compute "
            "dominates), 1 where PEFT cannot batch the adapters (LoRA on fused MoE parameters). Full-model pools: 1."
        ),
    )
    backend: Backend = Field(
        default="local",
        description=(
            "`local`: one resident model in this process. `ray`: Ray actors each hold a resident model and evaluate "
            "their share of every iteration; only coefficients travel (`pip install 'mergekit-swarm[ray]'`)."
        ),
    )
    address: str | None = Field(
        default=None,
        description=(
            "Ray: the cluster to join, as `ray.init(address=...)` takes it: `auto` (a cluster started with "
            "`ray start --head` on this machine's network), `ray://head:10001` (Ray Client), or unset: RAY_ADDRESS "
            "if set, else a local cluster started for this run and stopped at its end."
        ),
    )
    workers: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Ray: number of workers (resident models). Default: as many as the cluster's GPUs (or CPUs) fit, "
            "and no more than the particle groups of one iteration."
        ),
    )
    gpus_per_worker: float | None = Field(
        default=None,
        ge=0,
        description="Ray: GPUs each worker reserves. Default: 1 with --device cuda, else 0.",
    )
    cpus_per_worker: float = Field(
        default=1,
        ge=0,
        description="Ray: CPUs each worker reserves; also its torch thread count (at least 1).",
    )
    max_retries: int = Field(
        default=2,
        ge=0,
        description=(
            "Ray: times a group of particles is evaluated again on a replacement worker after its worker died "
            "(process crash, out of memory, lost node) before the run stops with an error (it can be resumed)."
        ),
    )
