"""CI: the winner a run wrote, loaded back as a user loads it, reproduces the dev utility it recorded.

    python .ci/check_winner.py RECIPE OUT

Loads OUT with `from_pretrained` (full models) or `PeftModel.from_pretrained(base, OUT)` (adapters), with
the tokenizer written beside it, scores it with the recipe's dev utility (`mergekit_swarm.commands.rescore`), and compares with
`winner_dev` in OUT/swarm_result.json (to 1e-6: the same weights and greedy decoding give the same
figure). Also checks that every expert and the winner have a test utility. Exits 1 on any mismatch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mergekit_swarm.commands.rescore import score_folder
from mergekit_swarm.config import load_recipe


def main(recipe_file: str, out: str) -> None:
    folder = Path(out)
    result = json.loads((folder / "swarm_result.json").read_text())
    value = score_folder(load_recipe(recipe_file).resolve(), folder, "dev").value
    print(f"{out}: recorded winner dev {result['winner_dev']:.6f}, reloaded {value:.6f}; test {result['winner_test']}")
    problems = []
    if abs(value - result["winner_dev"]) > 1e-6:
        problems.append(f"the written winner scores {value} on dev, its run recorded {result['winner_dev']}")
    if result["winner_test"] is None or any(t is None for t in result["expert_test"] or [None]):
        problems.append(f"missing test utilities: {result['expert_test']}, {result['winner_test']}")
    if problems:
        sys.exit("FAILED: " + "; ".join(problems))


if __name__ == "__main__":
    main(*sys.argv[1:])
