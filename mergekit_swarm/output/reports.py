"""The files that report a finished run beside its model: `swarm_result.json`, the recipe as written,
the history plot and the model card."""

from __future__ import annotations

from pathlib import Path

from mergekit_swarm.config import SwarmRecipe
from mergekit_swarm.core.names import CARD_FILE, HISTORY_PLOT, RECIPE_COPY
from mergekit_swarm.output.card import render_card
from mergekit_swarm.output.plot import plot_history, read_history
from mergekit_swarm.output.result import SwarmResult
from mergekit_swarm.output.rundir import RunDirectory


def write_reports(
    rundir: RunDirectory, result: SwarmResult, recipe: SwarmRecipe, searched_expert_dev: list[float | None], *, card: bool
) -> None:
    """`searched_expert_dev`: the experts' utilities on what the search saw, to compare with its history."""
    work = rundir.work
    result.write(work)
    header = (  # the file's name only: this folder may be published, the user's directory layout need not be
        f"# Recipe of this run, copied from {Path(recipe.source).name}\n"
        "# (relative paths below are relative to that file's folder)\n"
    )
    (work / RECIPE_COPY).write_text(header + recipe.text, encoding="utf-8")
    best_expert = max((u for u in searched_expert_dev if u is not None), default=None)
    plot_history(read_history(rundir.state.history_path), best_expert, work / HISTORY_PLOT)
    if card:
        text = render_card(
            recipe,
            title=rundir.out.name,
            output_kind=result.output_kind,
            result=result,
            settings=recipe.swarm,
            utility_type=recipe.utility.type,
        )
        (work / CARD_FILE).write_text(text, encoding="utf-8")
