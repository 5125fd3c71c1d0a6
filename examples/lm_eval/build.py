"""Build the lm-evaluation-harness example (offline, cached; re-uses the quickstart's models).

Writes a local lm-eval task (`tasks/string_skills.yaml`, multiple choice over a JSONL file):
reverse and sort prompts, each with the answers the four skills would give as choices.
Needs the optional extra:
`pip install 'mergekit-swarm[lm-eval]'`.

    python examples/lm_eval/build.py
    mergekit-swarm examples/lm_eval/swarm.yml lm-eval-out/
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from mergekit_swarm.testing import quickstart, toy

HERE = Path(__file__).resolve().parent
QUICKSTART = HERE.parent / "quickstart"  # its models are built there and shared

TASK = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{prompt}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def _items(n: int, seed: int) -> list[dict]:
    """Reverse and sort prompts; the choices are what each skill (reverse, sort, shift, copy)
    would answer for the same letters, in random order: a model must know which skill is asked."""
    rng = random.Random(seed)
    skills = {"rev": lambda w: w[::-1], "sort": lambda w: "".join(sorted(w)), "next": toy.shift, "copy": lambda w: w}
    items = []
    for row in toy.make_examples(("reverse", "sort"), n, seed):
        asked, word = row["prompt"].rstrip("=").split(" ")
        choices = list(dict.fromkeys(f(word) for f in skills.values()))  # distinct answers only
        rng.shuffle(choices)
        items.append({"prompt": row["prompt"], "choices": choices, "answer": choices.index(skills[asked](word))})
    return items


def build(*, force: bool = False) -> Path:
    quickstart.build(QUICKSTART, force=force)
    for name, n, seed in (("string_skills", 100, 6000), ("string_skills_test", 300, 6100)):
        toy.write_jsonl(HERE / "data" / f"{name}.jsonl", _items(n, seed))
        (HERE / "tasks").mkdir(exist_ok=True)
        (HERE / "tasks" / f"{name}.yaml").write_text(TASK.format(name=name, data=HERE / "data" / f"{name}.jsonl"))
    return HERE / "swarm.yml"


if __name__ == "__main__":
    print(f"ready: {build(force='--force' in sys.argv)}")
