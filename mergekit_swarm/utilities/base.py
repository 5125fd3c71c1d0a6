"""What a utility is, how it is configured, and the registry that maps `type:` to it.

A utility scores a model: f(model, tokenizer) -> float (or a `Score` with details),
higher is better. Each kind is one small module holding a config class (the `utility:`
section, unknown keys refused) and the utility itself; `@register_utility` makes it
available by its `type`.
"""

from __future__ import annotations

import difflib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

import numpy as np
from pydantic import Field

from mergekit_swarm.core.errors import ConfigError
from mergekit_swarm.core.protocols import CausalLM, Tokenizer
from mergekit_swarm.core.schema import RecipePath, StrictSection
from mergekit_swarm.utilities.data import Example, load_examples
from mergekit_swarm.utilities.score import Score
from mergekit_swarm.utilities.text import NO_ADAPTERS, Adapters, GenerationSettings

if TYPE_CHECKING:
    from mergekit_swarm.utilities.racing import Racer

Split = Literal["dev", "test", "search", "holdout"]
"""`dev` is searched on and `test` only reported; with `swarm.holdout`, dev is cut in two: the search
sees `search` and the winner is chosen on `holdout` (see `UtilityConfig.build`)."""
HOLDOUT_SEED = 0  # which dev examples are held out depends on the data only, not on the swarm's seed


class Utility(ABC):
    """Scores the resident model; called once per particle evaluation."""

    @abstractmethod
    def __call__(self, model: CausalLM, tokenizer: Tokenizer) -> float | Score:
        """Return the utility (higher is better). Raising marks the evaluation as failed."""

    @property
    def scores_adapter_batches(self) -> bool:
        """Whether `score_adapters` can score several adapter slots in one pass."""
        return False

    def score_adapters(self, model: CausalLM, tokenizer: Tokenizer, adapters: Sequence[str]) -> list[float | Score]:
        """The utility of each of `adapters` (slots of the PeftModel `model`), in one pass of
        mixed-adapter batches. Only called when `scores_adapter_batches` is true."""
        raise NotImplementedError(f"{type(self).__name__} scores one model at a time")

    def racer(self, tokenizer: Tokenizer, slices: int, whole_batches: bool = True) -> Racer | None:
        """How to score this utility `slices` slices of dev at a time for `swarm.racing` (see
        `utilities.racing`: slices of whole batches, or with `whole_batches` false, of examples drawn
        at random); None where it is not a mean over examples each scored within a known range
        (every particle is then scored on all of dev)."""
        return None

    racing_note = "it is not a mean over examples each scored within a known range"
    """Why `racer` gives None, for the run's note."""


class AdapterBatchedUtility(Utility):
    """A utility written once, for a list of adapters: `score_adapters` does the work, and
    scoring the model as it is is the one-element case (`NO_ADAPTERS`)."""

    def __call__(self, model: CausalLM, tokenizer: Tokenizer) -> float | Score:
        return self.score_adapters(model, tokenizer, NO_ADAPTERS)[0]

    @property
    def scores_adapter_batches(self) -> bool:
        return True

    @abstractmethod
    def score_adapters(self, model: CausalLM, tokenizer: Tokenizer, adapters: Adapters) -> list[float | Score]:
        """One score per adapter (`NO_ADAPTERS`: one score, for the model as it is)."""


class UtilityConfig(StrictSection):
    """Base of every `utility:` section. Subclasses set `type` to a Literal default."""

    section_name: ClassVar[str] = "utility"
    type: str

    def build(self, split: Split, holdout: float = 0.0) -> Utility | None:
        """The utility on `split`, or None when the recipe gives no data for it. `search` and
        `holdout` are the two parts of dev when a `holdout` share of its examples is held out."""
        raise NotImplementedError

    def can_hold_out(self) -> bool:
        """Whether dev is a list of examples that `swarm.holdout` can cut in two."""
        return False

    def input_files(self) -> list[Path]:
        """Files and model folders that define the objective (part of the run's fingerprint),
        found in this section and the sections nested in it."""
        return list(_paths(self, "input_files"))

    def input_paths(self) -> list[Path]:
        """The files and folders this section names (data, models, task folders, utility files):
        what a run must never write into or replace."""
        return list(_paths(self, "input_paths"))

    def package_versions(self) -> dict[str, str]:
        """Versions of installed packages that define the objective (e.g. lm-eval's registry tasks),
        part of the run's fingerprint."""
        versions: dict[str, str] = {}
        for nested in _nested_utilities(self):
            versions.update(nested.package_versions())
        return versions

    def may_be_negative(self) -> bool:
        """Whether the utility can score below 0 (a harmonic mean needs scores >= 0)."""
        return False

    def right_or_wrong(self) -> bool:
        """Whether the utility is the share of examples answered right (each one right or wrong), so
        that which examples a model solves can be compared (`output.emergence`)."""
        return False


class DatasetUtilityConfig(UtilityConfig):
    """Utilities computed on JSONL examples: a dev split for the search, a test split to report."""

    dev: RecipePath = Field(description="JSONL used by the search.")
    test: RecipePath | None = Field(default=None, description="JSONL reported only, never used by the search.")
    batch_size: int = Field(default=32, ge=1, description="Examples per forward/generate batch.")

    example_format: ClassVar[dict[str, bool]] = {}  # how this kind reads its JSONL (`load_examples` keywords)

    def path(self, split: Split) -> Path | None:
        return self.test if split == "test" else self.dev

    def build(self, split: Split, holdout: float = 0.0) -> Utility | None:
        path = self.path(split)
        if path is None:
            return None
        examples = load_examples(path, **self.example_format)
        if split in ("search", "holdout"):
            examples = dev_part(examples, holdout, split, path)
        return self.utility_on(examples)

    def can_hold_out(self) -> bool:
        return True

    def utility_on(self, examples: list[Example]) -> Utility:
        """The utility scoring the model on `examples` (one split's)."""
        raise NotImplementedError


class GenerativeUtilityConfig(DatasetUtilityConfig):
    """Utilities that read the model's greedy generations for the prompts."""

    max_new_tokens: int = Field(default=16, ge=1, description="Tokens generated per prompt (greedy).")
    chat_template: bool = Field(default=False, description="Wrap each prompt in the tokenizer's chat template (as a user turn).")

    def generation(self) -> GenerationSettings:
        return GenerationSettings(self.max_new_tokens, self.batch_size, self.chat_template)


def dev_part(examples: list[Example], share: float, part: Split, source: Path) -> list[Example]:
    """The `search` or `holdout` part of dev when `share` of its examples is held out: a fixed
    random subset (`HOLDOUT_SEED`), in file order."""
    n = len(examples)
    k = round(n * share)
    if not 0 < k < n:
        raise ConfigError(f"{source}: holding out {share} of its {n} examples leaves an empty part")
    held = set(np.random.default_rng(HOLDOUT_SEED).permutation(n)[:k].tolist())
    return [example for i, example in enumerate(examples) if (i in held) == (part == "holdout")]


UTILITIES: dict[str, type[UtilityConfig]] = {}
C = TypeVar("C", bound=UtilityConfig)


def register_utility(cls: type[C]) -> type[C]:
    """Class decorator: make a utility config available under its `type` literal."""
    name = cls.model_fields["type"].default
    if not isinstance(name, str) or name in UTILITIES:
        raise ValueError(f"utility type {name!r} is missing or already registered")
    UTILITIES[name] = cls
    return cls


def validate_utility(data: Any, context: dict | None = None) -> UtilityConfig:
    """The config object of a `utility:` mapping, dispatched on its `type` (ValueError if invalid)."""
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise ValueError(f"a utility needs a type ({', '.join(sorted(UTILITIES))})")
    kind = data["type"]
    if kind not in UTILITIES:
        close = difflib.get_close_matches(kind, UTILITIES, n=1)
        hint = f"did you mean {close[0]!r}?" if close else "known: " + ", ".join(sorted(UTILITIES))
        raise ValueError(f"unknown utility type {kind!r} ({hint})")
    return UTILITIES[kind].model_validate(data, context=context)


def _paths(section: StrictSection, method: str):
    """The paths of a section's fields; a nested utility (a multitask component) answers for itself."""
    for value in _leaves(section):
        if isinstance(value, Path):
            yield value
        elif isinstance(value, UtilityConfig):
            yield from getattr(value, method)()


def _nested_utilities(section: StrictSection):
    return [value for value in _leaves(section) if isinstance(value, UtilityConfig)]


def _leaves(section: StrictSection):
    """The values of a section's fields, through nested sections and lists; nested utilities whole."""

    def walk(value: Any):
        if isinstance(value, StrictSection) and not isinstance(value, UtilityConfig):
            for item in value.__dict__.values():
                yield from walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                yield from walk(item)
        else:
            yield value

    for item in section.__dict__.values():
        yield from walk(item)
