"""The documentation cannot drift: the recipe reference is generated, links resolve, README stays short."""

from __future__ import annotations

import re
from pathlib import Path

from mergekit_swarm.config.reference import recipe_reference

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_the_recipe_reference_is_generated_from_the_code():
    committed = (ROOT / "docs" / "recipe.md").read_text(encoding="utf-8")
    assert committed == recipe_reference(), "docs/recipe.md is stale: python -m mergekit_swarm.config.reference docs/recipe.md"


def test_every_recipe_key_is_documented():
    from mergekit_swarm.config import EvaluationSettings
    from mergekit_swarm.pso import SwarmSettings
    from mergekit_swarm.utilities import UTILITIES

    text = recipe_reference()
    for model in (SwarmSettings, EvaluationSettings, *UTILITIES.values()):
        for name, field in model.model_fields.items():
            assert f"| `{name}` |" in text, (model.__name__, name)
            assert field.description or name == "type", f"{model.__name__}.{name} has no description"


def test_links_between_documents_resolve_and_readme_is_short():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md"]
    for page in pages:
        for target in LINK.findall(page.read_text(encoding="utf-8")):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), f"{page.relative_to(ROOT)} links to {target}, which does not exist"
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 200
