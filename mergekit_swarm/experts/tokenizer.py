"""The tokenizer of a run, with mergekit's meaning of `tokenizer_source` and `chat_template`.

The swarm never changes the experts' vocabulary (that would need embedding surgery on
every particle), so `tokenizer_source` may be `base`, a model, or `union` when all the
models share one vocabulary. The chosen tokenizer is used for the utilities and written
with the winner, so what is evaluated is what is published.
"""

from __future__ import annotations

from pathlib import Path

from mergekit_swarm.config import UNION, MergeRecipe
from mergekit_swarm.core.errors import ExpertError
from mergekit_swarm.core.protocols import Tokenizer
from mergekit_swarm.hub import HubModel


def has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer_config.json").exists() or (folder / "tokenizer.json").exists()


def tokenizer_folder(recipe: MergeRecipe, trust_remote_code: bool = False) -> Path:
    """The folder whose tokenizer the run uses (resolving `union`)."""
    source = recipe.tokenizer_source
    if source != UNION:
        if isinstance(source, HubModel):
            raise TypeError(f"tokenizer_source: {source} is not a local folder yet; resolve() the recipe first")
        return Path(source)
    from transformers import AutoTokenizer

    folders = [p for p in (recipe.base_folder, *recipe.expert_folders) if p is not None and has_tokenizer(p)]
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


def vocabulary_note(recipe: MergeRecipe, folder: Path, trust_remote_code: bool = False) -> str | None:
    """Check the models' own tokenizers against the one the run uses (in `folder`).

    Without `tokenizer_source`, mergekit merges the embedding rows as each model stores them and
    writes the donor's tokenizer; so does the swarm, and the returned note names the models whose
    vocabulary differs. With a `tokenizer_source`, mergekit would re-map every model's embedding
    rows to that tokenizer (embedding surgery), which a swarm cannot do: refused, naming both.
    """
    from transformers import AutoTokenizer

    def vocabulary(path: Path) -> dict[str, int]:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code).get_vocab()

    reference = vocabulary(folder)
    explicit = recipe.merge.tokenizer_source is not None or recipe.merge.tokenizer is not None
    different = []
    for path in (recipe.base_folder, *recipe.expert_folders):
        if path is None or path == folder or not has_tokenizer(path):
            continue
        own = vocabulary(path)
        if own == reference:
            continue
        token = sorted(set(own.items()) ^ set(reference.items()))[0][0]
        if explicit:
            raise ExpertError(
                f"{recipe.source}: the vocabulary of {path} differs from that of the tokenizer_source {folder} "
                f"(e.g. {token!r}); mergekit would re-map its embedding rows (embedding surgery), which a swarm cannot "
                "do; leave tokenizer_source unset to merge the rows as stored"
            )
        different.append(f"{path.name} (e.g. {token!r})")
    if not different:
        return None
    return (
        f"the vocabulary of {', '.join(different)} differs from that of {folder}; as mergekit does without "
        "tokenizer_source, embedding rows are merged as stored and the winner gets the latter's tokenizer"
    )


def load_tokenizer(folder: Path, recipe: MergeRecipe, trust_remote_code: bool = False) -> Tokenizer:
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
