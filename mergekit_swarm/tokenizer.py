"""The tokenizer of a run, with mergekit's meaning of `tokenizer_source` and `chat_template`.

The swarm never changes the experts' vocabulary (that would need embedding surgery on
every particle), so `tokenizer_source` may be `base`, a model, or `union` when all the
models share one vocabulary. The chosen tokenizer is used for the utilities and written
with the winner, so what is evaluated is what is published.
"""

from __future__ import annotations

from pathlib import Path

from mergekit_swarm.config import UNION, MergeRecipe
from mergekit_swarm.errors import ExpertError


def has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer_config.json").exists() or (folder / "tokenizer.json").exists()


def tokenizer_folder(recipe: MergeRecipe, trust_remote_code: bool = False) -> Path:
    """The folder whose tokenizer the run uses (resolving `union`)."""
    if recipe.tokenizer_source != UNION:
        return Path(recipe.tokenizer_source)
    from transformers import AutoTokenizer

    folders = [p for p in (recipe.base_model, *recipe.experts) if p is not None and has_tokenizer(p)]
    if not folders:
        raise ExpertError(f"{recipe.source}: tokenizer_source: union, but none of the models has a tokenizer")
    reference = AutoTokenizer.from_pretrained(folders[0], trust_remote_code=trust_remote_code).get_vocab()
    for folder in folders[1:]:
        if AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code).get_vocab() != reference:
            raise ExpertError(
                f"{recipe.source}: tokenizer_source: union of different vocabularies ({folders[0]} vs {folder}) would need "
                "embedding surgery, which a swarm cannot do; use base or one model's tokenizer"
            )
    return folders[0]


def load_tokenizer(folder: Path, recipe: MergeRecipe, trust_remote_code: bool = False):
    """The tokenizer in `folder`, with the recipe's `chat_template` applied as mergekit does."""
    from mergekit.merge import _set_chat_template  # mergekit's own resolution: names, "auto", jinja
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ExpertError(f"cannot load a tokenizer from {folder}: {exc}") from None
    try:
        _set_chat_template(tokenizer, recipe.merge, trust_remote_code=trust_remote_code)
    except RuntimeError as exc:
        raise ExpertError(f"{recipe.source}: chat_template: {exc}") from None
    return tokenizer
