"""The `swarm:` section of a recipe: Model Swarms hyperparameters.

Defaults follow the official implementation's argparse (Feng et al., 2025), except
`particles`, which defaults to twice the number of experts as in the authors' launch
scripts (10 experts grown to 20 particles by crossover), and `max_iterations` (50, not
200: with `patience` the search rarely gets that far).
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Literal

from pydantic import Field, model_validator

from mergekit_swarm.core.schema import StrictSection

Granularity = Literal["model", "layer", "tensor"]
LoraSpace = Literal["update", "factor"]


class SwarmSettings(StrictSection):
    """Hyperparameters of the particle swarm search (coefficient space).

    The velocity weights and step length default to the authors' later re-implementation
    (inertia 0.2, cognitive 0.3, social 0.4, repel 0.05, step 0.5), which beat the official
    argparse defaults (0.4, 0.3, 0.3, 0.3, 1.0) on the quality testbed's dev splits
    (benchmarks/tune.py); `initial: merges` and `stall_probes: 0.5`, two additions of ours, beat
    the paper's start from the experts alone and the swarm without probes on held-out dev examples
    there; the other defaults are the official ones (`initial: experts` with `stall_probes: 0` is
    the paper's algorithm exactly).
    """

    section_name = "swarm"

    particles: int | None = Field(
        default=None, ge=2, description="Swarm size; >= number of experts, extra particles by crossover. Default: 2 x experts."
    )
    max_iterations: int = Field(default=50, ge=0, description="Upper bound on swarm iterations (moves).")
    patience: int = Field(default=10, ge=1, description="Stop when the global best has not improved for this many iterations.")
    inertia: float = Field(default=0.2, ge=0, description="Weight of the previous velocity.")
    cognitive: float = Field(default=0.3, ge=0, description="Pull towards the particle's personal best.")
    social: float = Field(default=0.4, ge=0, description="Pull towards the swarm's global best.")
    repel: float = Field(default=0.05, ge=0, description="Push away from the worst position ever seen.")
    step_length: float = Field(default=0.5, gt=0, description="lambda: scales the move x <- x + lambda * v.")
    step_decay: float = Field(
        default=0.95, gt=0, le=1, description="lambda <- max(lambda * step_decay, min_step_length) per iteration."
    )
    min_step_length: float = Field(default=0.1, ge=0, description="Floor of the step length.")
    restart_patience: float = Field(
        default=0.5,
        gt=0,
        description="Restart a particle at its personal best after restart_patience * patience stale iterations.",
    )
    stall_probes: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description=(
            "Share of the particles that, after an iteration that did not improve the global best, are moved to "
            "random points near the global best instead of making their swarm move (those with the lowest "
            "utility): a local search where the swarm stalls. 0: off (the paper)."
        ),
    )
    probe_radius: float = Field(
        default=0.1, gt=0, description="Standard deviation of a probe's offset from the global best, per coefficient."
    )
    initial: Literal["experts", "merges"] = Field(
        default="merges",
        description=(
            "merges: after the experts, the simple merges the baselines find: the uniform soup, mixes of the best "
            "two experts (t = 0.25, 0.5, 0.75) and the uniform mix of the best three; crossovers fill the rest "
            "(the experts' dev utilities are needed first; their evaluations are not repeated). experts: particles "
            "start as the experts, crossovers fill the swarm (the paper)."
        ),
    )
    holdout: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description=(
            "Share of the dev examples the search never sees (0: none, the paper). The winner is then chosen "
            "among the `holdout_candidates` best personal bests by their utility on those examples, rather than "
            "being the global best: a guard against a winner that only fits the rest of dev."
        ),
    )
    holdout_candidates: int = Field(default=5, ge=2, description="Personal bests compared on the held-out dev examples.")
    starting_velocity: Literal["random", "zero", "best"] = Field(
        default="random", description="random: towards another particle; zero; best: towards the global best."
    )
    random_factors: bool = Field(default=True, description="Draw r ~ U(0,1) per (particle, group) for each term; false: all 1.")
    granularity: Granularity = Field(
        default="model", description="One coefficient vector per model (the paper), per layer, or per tensor."
    )
    lora_space: LoraSpace = Field(
        default="update",
        description=(
            "LoRA experts only. update: a particle is W0 + sum_k c_k s_k B_k A_k exactly, the linear mix of the "
            "experts baked into their base (one adapter of rank sum_k r_k, as PEFT's add_weighted_adapter 'cat'). "
            "factor: lora_A and lora_B are mixed separately, as the paper, LoraHub and PEFT 'linear' do, so a "
            "particle is (sum_k c_k s_k B_k)(sum_k c_k A_k), cross terms included: to reproduce the paper."
        ),
    )
    base_as_expert: bool = Field(
        default=False,
        description=(
            "LoRA experts in update space only: the base model joins the pool as one more expert, with no update, so "
            "that the experts' own coefficients need not sum to 1 (W0 + sum_k c_k s_k B_k A_k with a free total: task "
            "arithmetic with a weight per expert, which LoraHub searches)."
        ),
    )
    racing: Literal["off", "exact", "confident"] = Field(
        default="off",
        description=(
            "exact: score each particle slice by slice of dev and stop as soon as its utility on all of dev is sure "
            "to stay at or below its personal best and at or above the global worst, so that no decision of the "
            "search changes (same winner, bit for bit, for fewer examples scored). confident: stop when a confidence "
            "interval (racing_confidence) says so: far fewer examples, at the risk of missing an improvement (stall "
            "probes rank a stopped particle by the middle of its interval, where exact scores it to the end); graded "
            "scores (nll, judge, reward_model) are compared with the personal best's example by example. "
            "exact races a share of examples answered right (exact_match, multiple_choice, a multitask of them); "
            "confident also races nll, judge and reward_model with normalize; others are scored on all of dev. "
            "off: every particle on all of dev."
        ),
    )
    racing_slices: int = Field(default=4, ge=2, description="Slices of dev a racing particle is scored in (whole batches each).")
    racing_confidence: float = Field(
        default=0.95,
        gt=0.5,
        lt=1,
        description="racing: confident: the confidence of each bound of the interval, over all the looks at a particle.",
    )
    seed: int = Field(default=42, description="Seed of every random draw of the search.")
    drop_k: int = Field(default=0, ge=0, description="Evaluation dropout: skip drop_k of every drop_n particle evaluations.")
    drop_n: int = Field(default=1, ge=1, description="Evaluation dropout: see drop_k.")

    @model_validator(mode="after")
    def _consistent(self) -> SwarmSettings:
        if self.inertia + self.cognitive + self.social + self.repel <= 0:
            raise ValueError("inertia, cognitive, social and repel are all 0: particles could never move")
        if self.min_step_length > self.step_length:
            raise ValueError(f"min_step_length ({self.min_step_length}) is larger than step_length ({self.step_length})")
        if self.base_as_expert and self.lora_space != "update":
            raise ValueError("base_as_expert needs lora_space: update (in factor space the base has no factors to mix)")
        if self.racing != "off" and self.drop_k:
            raise ValueError("racing needs drop_k: 0 (a skipped particle would reuse a bound, not a utility)")
        if self.drop_k >= self.drop_n:
            raise ValueError(f"drop_k ({self.drop_k}) must be smaller than drop_n ({self.drop_n}); some evaluations must run")
        return self

    @property
    def search_split(self) -> Literal["dev", "search"]:
        """The utility split the particles are scored on: all of dev, or its part not held out."""
        return "search" if self.holdout else "dev"

    @property
    def racing_z(self) -> float | None:
        """With `racing: confident`, the interval's half-width in standard errors (None: exact bounds): a
        particle is looked at after each slice but the last, so each look gets an equal share of the
        error allowed (Bonferroni), and the chance of stopping a particle whose full-dev utility is
        above its bound stays within 1 - racing_confidence (for a random sample; see `utilities.racing`)."""
        if self.racing != "confident":
            return None
        return NormalDist().inv_cdf(1 - (1 - self.racing_confidence) / (self.racing_slices - 1))

    def skipped_per_iteration(self, particles: int) -> int:
        """How many particle evaluations evaluation dropout skips in each iteration after the first."""
        return particles * self.drop_k // self.drop_n

    def probe_count(self, particles: int) -> int:
        """How many particles probe near the global best after a stalled iteration (half rounds up)."""
        return math.floor(self.stall_probes * particles + 0.5)

    def particle_count(self, experts: int) -> int:
        """The swarm size for `experts` experts (validated: never fewer particles than experts)."""
        count = 2 * experts if self.particles is None else self.particles
        if count < experts:
            raise ValueError(f"swarm.particles = {count} is fewer than the {experts} experts; every expert starts as a particle")
        return count

    @property
    def restart_after(self) -> float:
        """Stale iterations after which a particle restarts from its personal best."""
        return self.restart_patience * self.patience
