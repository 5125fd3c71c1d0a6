"""`README.md`: a model card in mergekit's layout, plus what the swarm searched and gained.

Only local facts are used: unlike mergekit's own card code, nothing here asks the Hub
whether a path is a repository (mergekit does for relative paths, which fails offline).
"""

from __future__ import annotations

import yaml

from mergekit_swarm.config import MergeRecipe
from mergekit_swarm.core.console import format_utility
from mergekit_swarm.core.names import HISTORY_PLOT, PAPER_URL
from mergekit_swarm.output.emergence import sentence
from mergekit_swarm.output.result import SwarmResult
from mergekit_swarm.pso import SwarmSettings

MERGEKIT_URL = "https://github.com/arcee-ai/mergekit"
CITATION = """@inproceedings{feng2025model,
  title     = {Model Swarms: Collaborative Search to Adapt LLM Experts via Swarm Intelligence},
  author    = {Feng, Shangbin and Wang, Zifeng and Wang, Yike and Ebrahimi, Sayna and Palangi, Hamid and
               Miculicich, Lesly and Kulshrestha, Achin and Rauschmayr, Nathalie and Choi, Yejin and
               Tsvetkov, Yulia and Lee, Chen-Yu and Pfister, Tomas},
  booktitle = {International Conference on Machine Learning},
  year      = {2025}
}"""
LORA_UPDATE_NOTE = (
    "LoRA experts are mixed in update space: this adapter is W0 + sum_k c_k s_k B_k A_k exactly, each expert's own "
    "update s_k B_k A_k (its alpha/r scaling folded into B) scaled by its coefficient, as one adapter whose rank is the "
    "sum of the experts' ranks (A stacks every expert's lora_A, B holds c_k s_k B_k in expert k's columns). With "
    "coefficients summing to 1 it is the linear mix of the experts baked into their base: `mergekit_config.yml` is that "
    "mix as a stock mergekit recipe (`base+adapter` models, `--lora-merge-cache`), equal to this adapter merged into "
    "the base up to float rounding."
)
LORA_NOTE = (
    "LoRA adapters are combined as adapters, as the paper does: lora_A and lora_B separately, each expert's "
    "alpha/r scaling folded into B and ranks zero-padded to the largest one, so this adapter has r = lora_alpha. "
    "`mergekit_config.yml` holds the weights; `mergekit-swarm apply mergekit_config.yml out/` rebuilds this "
    "adapter bit for bit. Stock mergekit cannot: it only bakes an adapter into its base model (`base+adapter`)."
)


def render_card(
    recipe: MergeRecipe,
    *,
    title: str,
    output_kind: str,
    result: SwarmResult | None = None,
    settings: SwarmSettings | None = None,
    utility_type: str | None = None,
) -> str:
    """The card of a search (`result` given) or of a one-shot merge of given weights."""
    front = _front_matter(recipe, output_kind)
    what = "LoRA adapter" if output_kind == "lora" else "model"
    base = f" using {_link(recipe, recipe.base_model)} as a base" if recipe.base_model else ""
    how = (
        f": a particle swarm searched the weight space of the {len(recipe.experts)} models below for the best "
        f"`{utility_type}` utility on the dev data, without gradients"
        if result is not None
        else " with the weights given in the configuration below"
    )
    parts = [
        "---\n" + yaml.safe_dump(front, sort_keys=False) + "---",
        f"# {title}",
        f"This {what} is a merge of pre-trained language models created using [mergekit]({MERGEKIT_URL}) and mergekit-swarm.",
        "## Merge Details",
        "### Merge Method",
        f"This {what} was merged using the [Model Swarms]({PAPER_URL}) merge method{base}{how}.",
        "### Models Merged",
        "The following models were included in the merge:\n\n" + "\n".join(f"* {_link(recipe, p)}" for p in recipe.experts),
        "### Configuration",
        "The following YAML configuration was used to produce this model:",
        "```yaml\n" + recipe.text.rstrip() + "\n```",
    ]
    if output_kind == "lora":
        update_space = isinstance(settings, SwarmSettings) and settings.lora_space == "update"
        parts.append(LORA_UPDATE_NOTE if update_space else LORA_NOTE)
    elif result is not None:
        parts.append("The winner's weights as a plain mergekit recipe are in `mergekit_config.yml`.")
    if result is not None and settings is not None:
        parts += _swarm_sections(result, settings)
    parts += ["## Citation", "```bibtex\n" + CITATION + "\n```"]
    return "\n\n".join(p for p in parts if p) + "\n"


def _front_matter(recipe: MergeRecipe, output_kind: str) -> dict:
    """Hub metadata: a merge lists the Hub models it was made from, an adapter names its base model
    and is a PEFT adapter. `base_model` holds Hub ids only and is left out when there is none: the
    Hub reads it as model links, and mergekit's empty list for local models is not one."""
    tags = ["merge", "mergekit", "model-swarms"]
    hub_models = recipe.hub_models()  # the base first, when it came from the Hub
    if output_kind == "lora":
        base = hub_models[0] if recipe.base_model in recipe.hub_ids else None
        return {**({"base_model": base} if base else {}), "library_name": "peft", "tags": tags}
    merge = {"base_model": hub_models, "base_model_relation": "merge"} if hub_models else {}
    return {**merge, "library_name": "transformers", "tags": tags}


def _link(recipe: MergeRecipe, folder) -> str:
    """A Hub model as a link to its page, a local one as its path."""
    if folder in recipe.hub_ids:
        repo = recipe.hub_ids[folder].split("@")[0]
        return f"[{recipe.hub_ids[folder]}](https://huggingface.co/{repo})"
    return str(folder)


def _swarm_sections(result: SwarmResult, settings: SwarmSettings) -> list[str]:
    return [
        "## Swarm search",
        "### Result",
        _result_table(result),
        f"{result.iterations} iterations, {result.evaluations} evaluations ({result.failed} failed), "
        f"{result.restarts} particle restarts"
        + (f", {result.probes} probes near the global best" if result.probes else "")
        + f"; stopped: {result.stop_reason}."
        + _fallbacks(result)
        + _racing(result)
        + _timing(result),
        _selection(result, settings),
        sentence(result.emergence) + (" (per example: `swarm_examples.json`)" if any(result.emergence.values()) else ""),
        f"![search history]({HISTORY_PLOT})",
        "### Winner coefficients",
        _coefficient_table(result),
        "### Hyperparameters",
        _settings_table(settings),
    ]


def _result_table(result: SwarmResult) -> str:
    tests = result.expert_test or [None] * len(result.experts)
    has_test = result.expert_test is not None
    rows = ["| model | dev | test |\n|---|---:|---:|" if has_test else "| model | dev |\n|---|---:|"]
    for name, dev, test in zip(result.experts, result.expert_dev, tests):
        rows.append(
            f"| {name} | {format_utility(dev, 'failed')} |" + (f" {format_utility(test, 'failed')} |" if has_test else "")
        )
    winner = f"| **swarm winner** | **{format_utility(result.winner_dev, 'failed')}** |"
    rows.append(winner + (f" **{format_utility(result.winner_test, 'failed')}** |" if has_test else ""))
    if result.compressed:  # beside the exact winner, never in its place
        c = result.compressed
        compressed = (
            f"| winner compressed to rank {c['rank']} (`{c['folder']}/`, truncated SVD) | {format_utility(c['dev'], 'failed')} |"
        )
        rows.append(compressed + (f" {format_utility(c.get('test'), 'failed')} |" if has_test else ""))
    return "\n".join(rows)


def _coefficient_table(result: SwarmResult) -> str:
    if len(result.groups) == 1:
        rows = ["| expert | coefficient |", "|---|---:|"]
        rows += [f"| {n} | {c:.4f} |" for n, c in zip(result.experts, result.coefficients[0])]
        return "\n".join(rows)
    columns = list(zip(*result.coefficients))  # per expert, over groups
    rows = [
        f"Granularity `{result.granularity}`: {len(result.groups)} groups, each with its own coefficients "
        "(every row sums to 1). Per expert over the groups:",
        "",
        "| expert | mean | min | max |",
        "|---|---:|---:|---:|",
    ]
    rows += [f"| {n} | {sum(c) / len(c):.4f} | {min(c):.4f} | {max(c):.4f} |" for n, c in zip(result.experts, columns)]
    rows.append("\nAll coefficients are in `swarm_result.json`.")
    return "\n".join(rows)


def _settings_table(settings: SwarmSettings) -> str:
    rows = ["| setting | value |", "|---|---|"]
    rows += [f"| {k} | {v} |" for k, v in settings.model_dump().items()]
    return "\n".join(rows)


def _selection(result: SwarmResult, settings: SwarmSettings) -> str:
    """How the winner was chosen, when part of dev was held out."""
    if not result.selection:
        return ""
    candidates, chosen = result.selection["candidates"], result.selection["chosen"]
    rows = [
        f"The search saw {1 - settings.holdout:.0%} of the dev examples; the winner is the personal best that scored "
        f"best on the other {settings.holdout:.0%} among the {len(candidates)} best ones (dev above is over all of dev).",
        "",
        "| particle | dev, searched part | dev, held out | |",
        "|---:|---:|---:|---|",
    ]
    for i, c in enumerate(candidates):
        mark = " ".join(filter(None, ("**winner**" if i == chosen else "", "(global best)" if i == 0 else "")))
        rows.append(f"| {c['particle']} | {format_utility(c['search'])} | {format_utility(c['holdout'], 'failed')} | {mark} |")
    return "\n".join(rows)


def _fallbacks(result: SwarmResult) -> str:
    if not result.fallbacks:
        return ""
    return (
        f" {result.fallbacks} evaluations were scored one particle at a time because the batched scoring of their "
        "group failed (the error is in each one's `fallback` in swarm_history.jsonl)."
    )


def _racing(result: SwarmResult) -> str:
    if not result.racing:
        return ""
    r = result.racing
    return (
        f" Racing (`swarm.racing`) scored {r['examples_scored']:,} of the {r['examples_in_full']:,} dev examples that scoring "
        f"every evaluation in full would have ({r['saved']:.0%} saved): {r['stopped']} evaluations stopped once they could "
        f"no longer change the search, {r['finished_for_probes']} of them scored to the end later for a stall probe step "
        "(each one's `examples` and `stopped` bounds are in swarm_history.jsonl)."
    )


def _timing(result: SwarmResult) -> str:
    if not result.timing or not result.timing["search_seconds"]:
        return ""
    search, scoring = result.timing["search_seconds"], result.timing["evaluation_seconds"]
    return (
        f" The search took {search:,.1f} s, {scoring / search:.0%} of it scoring particles (writing them into the model "
        "included; each evaluation's share is its `wall_time` in swarm_history.jsonl, `shared_by` the particles of its batch)."
    )
