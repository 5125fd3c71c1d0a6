"""How often the real testbed's judge gives a rating it can read: SmolLM2-135M-Instruct judging replies.

    python benchmarks/judge_parse_rate.py

The real testbed's preference objective (`real_testbed`: prompts of the add, digits, join and double
skills, `JUDGE_TEMPLATE`) is judged by the instruct model itself (`backend: local`, 12 new tokens). An
answer without a readable `Rating: x` scores 1 and is counted (`unparseable`). This scores the dev
prompts' replies of the base model and of the SmolLM2 example's LoRA experts (built first if needed,
~6 min) and reports the share the judge rated, its mean rating and the utility. Writes
benchmarks/results/judge_parse_rate.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from lib.common import ROOT, command, header, machine, versions, write_report

from mergekit_swarm.testing import real_testbed

EXAMPLE = ROOT / "examples" / "smollm2"


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mergekit_swarm.utilities import validate_utility

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    real_testbed.build_example(EXAMPLE)
    base = EXAMPLE / "models" / "base"
    rows, start = [], time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        # the preference data of testbed 0, as its build writes it
        real_testbed.write_splits(Path(tmp), *real_testbed.data_folders(0)["preference"])
        config = {**real_testbed._utilities()["judge"], "dev": str(Path(tmp) / "dev.jsonl"), "test": None}
        config["backend"] = {**config["backend"], "model": str(base)}
        utility = validate_utility(config).build("dev")
        tokenizer = AutoTokenizer.from_pretrained(base)
        for name in ("base", *real_testbed.EXAMPLE_EXPERTS):
            model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
            if name != "base":
                model = PeftModel.from_pretrained(model, EXAMPLE / "models" / name)
            with torch.no_grad():
                score = utility(model.eval(), tokenizer)
            prompts = len(utility.prompts)
            rated = prompts - int(score.details["unparseable"])
            rows.append(
                {
                    "replies_of": name,
                    "prompts": prompts,
                    "rated": rated,
                    "parse_rate": rated / prompts,
                    "mean_rating": score.details["mean_rating"],
                    "utility": score.value,
                }
            )
            print(rows[-1], flush=True)
    report = {
        "command": command(),
        "machine": machine(),
        "versions": versions(),
        "seconds": round(time.perf_counter() - start, 1),
        "rows": rows,
    }
    write_report("judge_parse_rate", report, markdown(report))


def markdown(report: dict) -> str:
    lines = header("The real testbed's judge: how often SmolLM2-135M-Instruct gives a readable rating", report)
    lines += [
        "The preference objective's 100 dev prompts (add, digits, join, double), each reply judged by the instruct "
        "model itself with the testbed's template (12 new tokens); **parse rate**: the share of answers with a readable "
        f"`Rating: x` (the others score 1). {report['seconds']:.0f} s in all.",
        "",
        "| replies of | prompts | rated | parse rate | mean rating | utility |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['replies_of']} | {r['prompts']} | {r['rated']} | {r['parse_rate']:.0%} | {r['mean_rating']:.2f} | "
            f"{r['utility']:.3f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
