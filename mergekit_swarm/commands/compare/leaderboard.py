"""The comparison's report: `leaderboard.{md,json,png}` and the folder's `README.md`.

Rows are ranked by dev utility, the only thing any method saw; test is reported beside it.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mergekit_swarm.core.console import format_utility
from mergekit_swarm.core.names import CARD_FILE, CURVES_PLOT, LEADERBOARD, PAPER_URL


@dataclass
class Entry:
    """One method's result. `dev`/`test` are None when it failed or was skipped."""

    method: str
    title: str
    family: str  # "baseline" | "search" | "swarm"
    dev: float | None
    test: float | None
    evaluations: int  # dev evaluations it used, including shared ones it relied on
    seconds: float
    settings: dict = field(default_factory=dict)
    recipe: str | None = None  # file in the output folder that reproduces it
    note: str = ""
    curve: list[dict] = field(default_factory=list)  # budget curve: [{evaluations, dev, test}] at improvements
    emergence: dict | None = None  # test examples solved that no expert solves (`new`), or lost (`lost`)


@dataclass
class Leaderboard:
    utility: str
    experts: list[str]
    kind: str  # "lora" | "full"
    budget: int | None
    seed: int
    entries: list[Entry]

    def ranked(self) -> list[Entry]:
        return sorted(self.entries, key=lambda e: -(e.dev if e.dev is not None else -math.inf))

    def entry(self, method: str) -> Entry:
        return next(e for e in self.entries if e.method == method)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def read(cls, folder: Path) -> Leaderboard:
        data = json.loads((folder / f"{LEADERBOARD}.json").read_text(encoding="utf-8"))
        data["entries"] = [Entry(**e) for e in data["entries"]]
        return cls(**data)

    def table(self) -> str:
        has_test = any(e.test is not None for e in self.entries)
        has_emergence = any(e.emergence for e in self.entries)
        head = (
            "| rank | method | dev |"
            + (" test |" if has_test else "")
            + (" test: new / lost |" if has_emergence else "")
            + " evaluations | seconds | chosen settings |"
        )
        rule = "|---:|---|---:|" + ("---:|" if has_test else "") + ("---:|" if has_emergence else "") + "---:|---:|---|"
        rows = [head, rule]
        for rank, e in enumerate(self.ranked(), start=1):
            settings = e.note or ", ".join(f"{k}={_short(v)}" for k, v in e.settings.items())
            rows.append(
                f"| {rank if e.dev is not None else '-'} | {e.title} | {format_utility(e.dev)} |"
                + (f" {format_utility(e.test)} |" if has_test else "")
                + (f" {_new_and_lost(e.emergence)} |" if has_emergence else "")
                + f" {e.evaluations} | {e.seconds:.1f} | {settings} |"
            )
        return "\n".join(rows)

    def markdown(self) -> str:
        budget = f"; search baselines got {self.budget} evaluations each" if self.budget else ""
        raced = next((e.settings for e in self.entries if e.family == "swarm" and "examples_scored" in e.settings), None)
        if budget and raced:  # (see comparison._swarms)
            budget += f" (the {raced['examples_scored']} dev examples the racing swarm scored, in whole evaluations)"
        pool = f"{len(self.experts)} {'LoRA adapters' if self.kind == 'lora' else 'full models'}"
        return (
            f"# Leaderboard: `{self.utility}` utility, {pool}\n\n"
            f"Ranked by dev utility, the only score any method saw (test is reported, never used){budget}; seed {self.seed}.\n\n"
            + self.table()
            + "\n"
        )

    def write(self, folder: Path) -> None:
        (folder / f"{LEADERBOARD}.json").write_text(self.to_json(), encoding="utf-8")
        (folder / f"{LEADERBOARD}.md").write_text(self.markdown(), encoding="utf-8")
        plot_leaderboard(self, folder / f"{LEADERBOARD}.png")
        (folder / CARD_FILE).write_text(self.card(), encoding="utf-8")

    def card(self) -> str:
        recipes = [f"* {e.title}: `{e.recipe}`" for e in self.ranked() if e.recipe]
        curves = (
            [
                "## Budget curves",
                "Best dev utility so far against dev evaluations for each method with a budget, and the test "
                "utility of its best candidate at a few points (measured for this report only).",
                f"![budget curves]({CURVES_PLOT})",
            ]
            if any(e.curve for e in self.entries)
            else []
        )
        emergence = (
            [
                "**test: new / lost**: test examples the method's choice solves that no expert solves, and "
                "examples some expert solves that it misses."
            ]
            if any(e.emergence for e in self.entries)
            else []
        )
        parts = [
            "---\ntags: [mergekit, model-swarms, leaderboard]\n---",
            f"# Model Swarms vs. model-composition baselines: `{self.utility}`",
            "Every method combined the same experts and was tuned on the same dev utility; the test utility was "
            "measured once per method on its final choice. Made with `mergekit-swarm compare`.",
            "Experts: " + ", ".join(f"`{name}`" for name in self.experts) + ".",
            "## Leaderboard",
            self.table(),
            *emergence,
            f"![leaderboard]({LEADERBOARD}.png)",
            *curves,
            "## Reproduce a row",
            "Each method's choice as a recipe (`mergekit-yaml` for mergekit methods and full-model mixes; "
            "`mergekit-swarm apply` for LoRA mixes):\n\n" + "\n".join(recipes),
            "## Methods",
            METHOD_NOTES,
            "## Citation",
            f"Model Swarms: {PAPER_URL}",
        ]
        return "\n\n".join(parts) + "\n"


METHOD_NOTES = """\
* **best single expert**: the expert with the best dev utility.
* **uniform soup**: the average of all experts. **greedy soup** (Wortsman et al. 2022): experts added in
  order of dev utility, each kept if the soup's dev utility does not drop.
* **task arithmetic, TIES, DARE-TIES, Model Stock, SLERP** are mergekit's own methods, run by `run_merge`
  over a small grid of their scalar hyper-parameters (`lambda`, `density`, SLERP's `t` between the two best
  experts), the best grid point on dev kept. LoRA experts are baked into their base for them (mergekit's
  `base+adapter`). Task-vector methods need `base_model`.
* **random search, LoraHub, CMA-ES** get as many dev evaluations as the swarm used: Dirichlet mixtures;
  nevergrad `NGOpt` over one coefficient per expert with LoraHub's L1 term; CMA-ES over one weight per layer
  group and expert like mergekit-evolve's genome.
* **Model Swarms** at each granularity: the recipe's `swarm:` settings, one coefficient vector per model,
  per layer or per tensor; with `--long-swarm K`, once more with K times the iterations and patience."""


def _new_and_lost(counts: dict | None) -> str:
    return f"+{counts['new']} / -{counts['lost']}" if counts else "-"


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "+".join(map(str, value))
    return str(value)


def plot_leaderboard(board: Leaderboard, path: Path) -> None:
    """Horizontal bars: dev and test utility per method, best on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [e for e in board.ranked() if e.dev is not None][::-1]
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(rows) + 1.2), dpi=110)
    y = range(len(rows))
    ax.barh([i + 0.2 for i in y], [e.dev or 0.0 for e in rows], height=0.4, color="tab:blue", label="dev")
    if any(e.test is not None for e in rows):
        ax.barh([i - 0.2 for i in y], [e.test or 0.0 for e in rows], height=0.4, color="tab:orange", label="test")
    ax.set_yticks(list(y), [e.title for e in rows], fontsize=8)
    ax.set_xlabel(f"{board.utility} utility")
    ax.legend(loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
