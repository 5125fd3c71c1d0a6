"""What a utility is, how it is configured, and the registry that maps `type:` to it.

A utility scores a model: f(model, tokenizer) -> float, higher is better. Each kind is
one small module holding a config class (the `utility:` section, unknown keys refused)
and the utility itself; `@register_utility` makes it available by its `type`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from mergekit_swarm.config_base import RecipePath, StrictSection

Split = Literal["dev", "test"]


class Utility(ABC):
    """Scores the resident model; called once per particle evaluation."""

    @abstractmethod
    def __call__(self, model, tokenizer) -> float:
        """Return the utility (higher is better). Raising marks the evaluation as failed."""


class UtilityConfig(StrictSection):
    """Base of every `utility:` section. Subclasses set `type` to a Literal default."""

    section_name: ClassVar[str] = "utility"
    type: str

    def build(self, split: Split) -> Utility | None:
        """The utility on `split`, or None when the recipe gives no data for it."""
        raise NotImplementedError

    def input_files(self) -> list[Path]:
        """Files whose content defines the objective (part of the run's fingerprint)."""
        return [value for value in self.__dict__.values() if isinstance(value, Path)]


class DatasetUtilityConfig(UtilityConfig):
    """Utilities computed on JSONL examples: a dev split for the search, a test split to report."""

    dev: RecipePath = Field(description="JSONL used by the search.")
    test: RecipePath | None = Field(None, description="JSONL reported only, never used by the search.")
    batch_size: int = Field(32, ge=1, description="Examples per forward/generate batch.")

    def path(self, split: Split) -> Path | None:
        return self.dev if split == "dev" else self.test


UTILITIES: dict[str, type[UtilityConfig]] = {}


def register_utility(cls: type[UtilityConfig]) -> type[UtilityConfig]:
    """Class decorator: make a utility config available under its `type` literal."""
    name = cls.model_fields["type"].default
    if not isinstance(name, str) or name in UTILITIES:
        raise ValueError(f"utility type {name!r} is missing or already registered")
    UTILITIES[name] = cls
    return cls
