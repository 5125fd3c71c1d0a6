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


def test_ci_installs_from_scratch_and_runs_the_main_job_with_the_core_install_only():
    """README's two set-up commands, as CI runs them: the tests in a fresh venv with the test extra, the main
    job in another fresh venv that holds the core install only (a dependency missing from it must fail CI)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    main_job, tests = re.findall(r"```bash\n(pip install torch==2\.13\.0 && pip install -e .+?)\n```", readme)[:2]
    script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    venvs = re.findall(r"^python3 -m venv (.+)$", script, flags=re.M)
    assert venvs and all(v.startswith("--clear ") for v in venvs), venvs  # never reuses an earlier environment
    steps = re.split(r"^python3 -m venv ", script, flags=re.M)[1:]  # what runs in each environment
    core = next(s for s in steps if "examples/quickstart/build.py" in s)
    assert "[test]" not in core and "pip install -e .\n" in core
    for command in main_job.split(" && "):
        assert command in core, command
    for command in tests.split(" && "):
        assert command.replace("'", "") in script.replace("'", ""), command
