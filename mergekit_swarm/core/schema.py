"""Pydantic building blocks shared by every section of a swarm recipe.

Recipes are written by hand, so a misspelt key must never be silently ignored (mergekit
itself ignores unknown top-level keys). Every section derives from `StrictSection`,
which rejects unknown keys and suggests the closest valid one; paths are resolved
against the recipe's folder through the validation context.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError, ValidationInfo, model_validator


def unknown_key_message(key: str, valid: Iterable[str], where: str) -> str:
    """`unknown key 'inertai' in swarm (did you mean 'inertia'?)`."""
    valid = sorted(valid)
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}?" if close else "valid keys: " + ", ".join(valid)
    return f"unknown key {key!r} in {where} ({hint})"


class StrictSection(BaseModel):
    """A recipe section: frozen, unknown keys are errors with a suggestion."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    section_name: ClassVar[str] = "section"  # how error messages name this section

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in data:
                if key not in cls.model_fields:
                    raise ValueError(unknown_key_message(str(key), cls.model_fields, cls.section_name))
        return data


def _resolve_against_recipe(value: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir")
    value = value.expanduser()
    if not value.is_absolute() and base is not None:
        value = Path(base) / value
    return value.resolve()


RecipePath = Annotated[Path, AfterValidator(_resolve_against_recipe)]
"""A path written in the recipe: relative paths resolve against the recipe's folder."""


def format_validation_error(error: ValidationError, source: str) -> str:
    """One line per problem, `file: section.key: message`, first problem first."""
    lines = []
    for item in error.errors():
        loc = ".".join(str(part) for part in item["loc"])
        msg = item["msg"].removeprefix("Value error, ")
        lines.append(f"{source}: {loc + ': ' if loc else ''}{msg}")
    return "; ".join(lines)
