"""`mergekit-swarm compare`: the swarm against model-composition baselines on the user's own objective.

Every method gets the same experts and the same dev utility; the test utility only reports.
The data flow: `settings` (which methods, budgets) -> `scoring` (one resident model, mergekit
runs, evaluation counts) -> `baselines` (experts, soups, mergekit's merge methods with a small
dev-tuned grid) and `search` (budget-matched random search, LoraHub, CMA-ES, and the swarm
itself) -> `leaderboard` (markdown, JSON, bar chart, card).
"""

from mergekit_swarm.commands.compare.comparison import run_comparison
from mergekit_swarm.commands.compare.leaderboard import Entry, Leaderboard
from mergekit_swarm.commands.compare.plan import BASELINES, SEARCH_BASELINES, CompareOptions

__all__ = ["BASELINES", "SEARCH_BASELINES", "CompareOptions", "Entry", "Leaderboard", "run_comparison"]
