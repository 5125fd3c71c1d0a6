"""`README.md`: a model card that says what was searched, how, and what it gained."""

from __future__ import annotations

import yaml

from mergekit_swarm.output.result import SwarmResult, format_utility
from mergekit_swarm.pso import SwarmSettings

PAPER_URL = "https://arxiv.org/abs/2410.11163"
CITATION = """@inproceedings{feng2025model,
  title     = {Model Swarms: Collaborative Search to Adapt LLM Experts via Swarm Intelligence},
  author    = {Feng, Shangbin and Wang, Zifeng and Wang, Yike and Ebrahimi, Sayna and Palangi, Hamid and
               Miculicich, Lesly and Kulshrestha, Achin and Rauschmayr, Nathalie and Choi, Yejin and
               Tsvetkov, Yulia and Lee, Chen-Yu and Pfister, Tomas},
  booktitle = {International Conference on Machine Learning},
  year      = {2025}
}"""


def render_card(result: SwarmResult, settings: SwarmSettings, utility_type: str, recipe_text: str, title: str) -> str:
    library = "peft" if result.output_kind == "lora" else "transformers"
    front = {"library_name": library, "tags": ["merge", "mergekit", "model-swarms"]}
    parts = [
        "---\n" + yaml.safe_dump(front, sort_keys=False) + "---",
        f"# {title}",
        f"This {'LoRA adapter' if result.output_kind == 'lora' else 'model'} was found with "
        f"[Model Swarms]({PAPER_URL}) using mergekit-swarm: a swarm of {len(result.experts)} "
        f"experts searched their weight space for the best `{utility_type}` utility on the dev data, without gradients.",
        "## Result",
        _result_table(result),
        f"{result.iterations} iterations, {result.evaluations} evaluations ({result.failed} failed), "
        f"{result.restarts} particle restarts; stopped: {result.stop_reason}.",
        "![search history](swarm_history.png)",
        "## Winner coefficients",
        _coefficient_table(result),
        "## Hyperparameters",
        _settings_table(settings),
        "## Recipe",
        "```yaml\n" + recipe_text.rstrip() + "\n```",
        "## Citation",
        "```bibtex\n" + CITATION + "\n```",
    ]
    if result.output_kind == "lora":
        parts.insert(
            5,
            "Adapters are combined as the paper does: lora_A and lora_B separately, each expert's "
            "alpha/r scaling folded into B and ranks zero-padded to the largest one, so this "
            "adapter has r = lora_alpha.",
        )
    return "\n\n".join(parts) + "\n"


def _result_table(result: SwarmResult) -> str:
    tests = result.expert_test or [None] * len(result.experts)
    has_test = result.expert_test is not None
    head = "| model | dev | test |\n|---|---:|---:|" if has_test else "| model | dev |\n|---|---:|"
    rows = [head]
    for name, dev, test in zip(result.experts, result.expert_dev, tests):
        rows.append(f"| {name} | {format_utility(dev)} |" + (f" {format_utility(test)} |" if has_test else ""))
    rows.append(
        f"| **swarm winner** | **{format_utility(result.winner_dev)}** |"
        + (f" **{format_utility(result.winner_test)}** |" if has_test else "")
    )
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
