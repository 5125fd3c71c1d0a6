"""A Model Swarms search as one stage of `mergekit-multi` (mergekit's multi-document recipes).

`mergekit-multi multi.yml -I inter/ --out-path final/` runs several recipes, each document a stage; a
later stage names an earlier one as a model. mergekit validates every document with its
`MergeConfiguration` (which drops `swarm:`, `utility:` and `evaluation:`) and plans each stage as a
one-shot merge. The hook (`mergekit_plugin.extend_mergekit_multi`) changes three things only, and
only for recipes with a swarm stage:

* a `merge_method: model_swarms` document with `swarm:`/`utility:` keeps those sections aside, and its
  stage runs the search (`run_swarm`), with earlier stages' names resolved to their folders and its
  data paths resolved against the recipe file's folder, as for a single recipe: the same winner,
  bit for bit, as `mergekit-swarm` gives for that document alone;
* `--lazy` (mergekit-multi's default) continues an interrupted swarm stage (`--resume`) or keeps a
  finished one; `--no-lazy` runs it again (`--overwrite`: it replaces only its own earlier output);
* a stage name after the `+` of `base+stage` (a LoRA-pool winner used as an adapter of its base) is
  resolved to that stage's folder, as mergekit resolves names before the `+`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from mergekit_swarm.config import parse_recipe
from mergekit_swarm.core.errors import SwarmError
from mergekit_swarm.core.names import SWARM_KEYS, is_swarm_document
from mergekit_swarm.core.run_options import RunOptions


class SwarmStages:
    """The swarm documents of the recipe being run: stage name -> (their swarm sections, their text)."""

    def __init__(self):
        self.recipe_file: Path | None = None
        self.intermediate_dir: str | None = None
        self.stages: dict[str | None, tuple[dict[str, Any], str]] = {}

    def split(self, source: str) -> str:
        """`source` with every swarm document's own sections set aside (kept here, by stage name): what
        mergekit's loader validates. A recipe without swarm stages comes back unchanged."""
        self.stages = {}
        documents = list(yaml.safe_load_all(source))
        if not any(is_swarm_document(doc) for doc in documents):
            return source
        texts = _document_texts(source)
        kept = []
        for i, doc in enumerate(documents):
            if is_swarm_document(doc):
                sections = {key: doc.pop(key) for key in SWARM_KEYS if key in doc}
                self.stages[doc.get("name")] = (sections, texts[i] if i < len(texts) else yaml.safe_dump(doc))
            kept.append(doc)
        return yaml.safe_dump_all(kept, sort_keys=False)

    def absolute(self, reference: str) -> str:
        """A model reference with earlier stages' folders made absolute: mergekit puts them under `-I` as
        given, relative to where mergekit-multi runs, while a swarm recipe's relative paths are relative
        to its file (as for a single recipe)."""
        from mergekit.common import ModelPath, ModelReference

        parsed = ModelReference.model_validate(reference)
        inter = os.path.normpath(self.intermediate_dir or "") + os.sep

        def fixed(path: ModelPath | None) -> ModelPath | None:
            if path is None or not os.path.normpath(path.path).startswith(inter):
                return path
            return path.model_copy(update={"path": os.path.abspath(path.path)})

        return str(parsed.model_copy(update={"model": fixed(parsed.model), "lora": fixed(parsed.lora)}))

    def stage(self, task_name: str) -> tuple[dict[str, Any], str] | None:
        """The swarm sections of the stage a mergekit-multi task runs (its final, unnamed stage is "final merge")."""
        key = None if task_name == "final merge" and None in self.stages else task_name
        return self.stages.get(key)


STAGES = SwarmStages()


def run_stage(stage: tuple[dict[str, Any], str], config_yaml: str, out_path: str, merge_options, *, lazy: bool, name: str) -> str:
    """Run one swarm stage into `out_path`: mergekit's resolved document (stage names as folders) with
    the stage's swarm sections; returns `out_path`. Errors are one line naming the stage."""
    import click

    from mergekit_swarm.commands.run import run_swarm

    sections, text = stage
    data = {**yaml.safe_load(config_yaml), **sections}
    for model in data.get("models") or []:
        model["model"] = STAGES.absolute(model["model"])
    if data.get("base_model"):
        data["base_model"] = STAGES.absolute(data["base_model"])
    recipe_file = STAGES.recipe_file or Path.cwd() / "multi.yml"
    source = f"{recipe_file} (stage {name})"
    try:
        recipe = parse_recipe(data, base_dir=recipe_file.parent, source=source, text=text)
        options = RunOptions.from_merge_options(merge_options, resume=lazy, overwrite=not lazy)
        run_swarm(recipe, out_path, options)
    except SwarmError as exc:  # in mergekit-multi's words: its --no-lazy is our --overwrite
        message = str(exc).replace("pass --overwrite", "pass --no-lazy to mergekit-multi")
        where = "" if f"(stage {name})" in message else f"{source}: "
        raise click.ClickException(f"{where}{message}") from None
    return out_path


def _document_texts(source: str) -> list[str]:
    """The text of each YAML document of `source` (split on `---` lines), as the user wrote it."""
    documents, current = [], []
    for line in source.splitlines(keepends=True):
        if line.rstrip() == "---":
            if "".join(current).strip():
                documents.append("".join(current))
            current = []
        else:
            current.append(line)
    if "".join(current).strip():
        documents.append("".join(current))
    return documents
