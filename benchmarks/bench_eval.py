"""Evaluation speed on a tiny LM with a 200-example exact-match utility (the quickstart's).

    python benchmarks/bench_eval.py
    python benchmarks/bench_eval.py --device cuda

(a) overhead outside `generate` as a share of one evaluation (LoRA and full pools);
(b) evaluations per second of mixed-adapter batches (k particles as adapter slots of one
    PeftModel) against one particle at a time, at the same prompts per batch, and against
    one particle at a time with k times larger batches (the same rows per forward);
(c) one whole search iteration (N particles, forward passes included) of our loop against
    a mergekit-evolve-style loop that writes every candidate with mergekit's `run_merge` to
    a temporary folder and loads it with `from_pretrained` before evaluating it; on full
    experts made by merging the quickstart's adapters into the base.
Writes benchmarks/results/bench_eval.{json,md}.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from lib.common import command, header, machine, versions, write_report

ROOT = Path(__file__).resolve().parents[1]


class GenerateTimer:
    """Wraps `model.generate` and adds up the seconds spent inside it."""

    def __init__(self, model):
        self.seconds, self._generate = 0.0, model.generate
        model.generate = self

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self._generate(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start


def particles(layout, experts: int, count: int, seed: int = 0):
    """`count` particles as a swarm has them: experts, then affine mixtures."""
    import numpy as np

    from mergekit_swarm.weights.kernels import one_hot

    rng = np.random.default_rng(seed)
    mixes = [rng.dirichlet(np.ones(experts), size=len(layout)) * 1.4 - 0.1 for _ in range(max(0, count - experts))]
    return [one_hot(layout, experts, k) for k in range(min(count, experts))] + mixes


def resident_for(experts, base, layout_granularity: str, tokenizer, device: str, slots: int = 1):
    from mergekit_swarm.experts import open_pool
    from mergekit_swarm.experts.groups import group_layout
    from mergekit_swarm.weights.resident import ResidentModel

    pool = open_pool(experts)
    layout = group_layout(pool, layout_granularity)
    source = base if base is not None else experts[0]
    resident = ResidentModel.open(
        pool, layout, model_source=source, tokenizer=tokenizer, model_dtype=None, device=device, slots=slots
    )
    return resident, layout


def timed_evaluations(evaluator, batch, repeats: int) -> float:
    """Best-of-`repeats` seconds to evaluate `batch`."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        results = list(evaluator.evaluate(batch))
        best = min(best, time.perf_counter() - start)
        assert not any(r.failed for r in results), results
    return best


def overhead(resident, layout, utility, repeats: int) -> dict:
    """(a): one evaluation at a time; the share of its time spent outside generate()."""
    from mergekit_swarm.search.evaluator import LocalEvaluator

    evaluator = LocalEvaluator(resident, utility)
    batch = particles(layout, len(resident.pool), 4, seed=1)
    timer = GenerateTimer(resident.model)
    list(evaluator.evaluate(batch))  # warm-up
    timer.seconds, start = 0.0, time.perf_counter()
    for _ in range(repeats):
        list(evaluator.evaluate(batch))
    total = time.perf_counter() - start
    evaluations = repeats * len(batch)
    resident.model.generate = timer._generate
    return {
        "seconds_per_evaluation": total / evaluations,
        "generate_seconds_per_evaluation": timer.seconds / evaluations,
        "overhead_share": (total - timer.seconds) / total,
    }


def throughput(args, experts, base, tokenizer, config) -> list[dict]:
    """(b): evaluations per second, one particle at a time vs k slots in mixed-adapter batches."""
    from mergekit_swarm.search.evaluator import LocalEvaluator

    rows = []
    examples = len(config.build("dev").examples)
    batch_size = min(config.batch_size, examples)
    # one particle at a time: at the same prompts per batch, and with larger batches (up to every prompt at once)
    settings = [(1, batch_size), (1, min(batch_size * max(args.slots), examples))] + [(k, batch_size) for k in args.slots]
    for slots, prompts_per_batch in dict.fromkeys(settings):
        utility = config.model_copy(update={"batch_size": prompts_per_batch}).build("dev")
        resident, layout = resident_for(experts, base, "model", tokenizer, args.device, slots=slots)
        batch = particles(layout, len(experts), args.particles)
        list(LocalEvaluator(resident, utility).evaluate(batch[:slots]))  # warm-up
        seconds = timed_evaluations(LocalEvaluator(resident, utility), batch, args.repeats)
        rows.append(
            {
                "particles_per_batch": slots,
                "prompts_per_batch": prompts_per_batch,
                "rows_per_forward": slots * prompts_per_batch,
                "evaluations_per_second": len(batch) / seconds,
            }
        )
        print(rows[-1], flush=True)
    reference = rows[0]["evaluations_per_second"]
    for row in rows:
        row["speedup"] = row["evaluations_per_second"] / reference
    return rows


def merge_adapters_into_full_experts(base: Path, adapters: list[Path], root: Path) -> list[Path]:
    """Full-model experts of the same tiny LM: each adapter baked into the base."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    experts = []
    for adapter in adapters:
        out = root / f"full-{adapter.name}"
        if not (out / "model.safetensors").exists():
            model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).merge_and_unload()
            model.save_pretrained(out)
        experts.append(out)
    return experts


def iteration_vs_evolve_style(args, experts: list[Path], tokenizer, utility) -> dict:
    """(c): one iteration of N evaluations, ours vs write-with-run_merge-then-from_pretrained."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions
    from transformers import AutoModelForCausalLM

    from mergekit_swarm.search.evaluator import LocalEvaluator

    resident, layout = resident_for(experts, None, "model", tokenizer, args.device)
    batch = particles(layout, len(experts), args.particles, seed=2)
    ours = timed_evaluations(LocalEvaluator(resident, utility), batch, 1)

    def evolve_style(coefficients) -> float:
        recipe = {
            "merge_method": "linear",
            "parameters": {"normalize": False},
            "dtype": "float32",
            "models": [{"model": str(e), "parameters": {"weight": float(w)}} for e, w in zip(experts, coefficients[0])],
        }
        with tempfile.TemporaryDirectory() as tmp:
            run_merge(MergeConfiguration.model_validate(recipe), tmp, MergeOptions(quiet=True, copy_tokenizer=False))
            model = AutoModelForCausalLM.from_pretrained(tmp).to(args.device).eval()
            return float(utility(model, tokenizer))

    evolve_style(batch[0])  # warm-up
    start = time.perf_counter()
    for coefficients in batch:
        evolve_style(coefficients)
    evolve = time.perf_counter() - start
    return {
        "particles": len(batch),
        "ours_seconds_per_iteration": ours,
        "evolve_style_seconds_per_iteration": evolve,
        "speedup": evolve / ours,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, default=8, help="particles per iteration / throughput run")
    parser.add_argument("--slots", type=int, nargs="+", default=[2, 4, 8], help="particles per mixed-adapter batch")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--name", default="bench_eval")
    args = parser.parse_args()

    from mergekit_swarm.config import load_recipe
    from mergekit_swarm.experts.tokenizer import load_tokenizer
    from mergekit_swarm.testing import quickstart

    recipe = load_recipe(quickstart.build(ROOT / "examples" / "quickstart", quiet=True))
    tokenizer = load_tokenizer(recipe.base_model, recipe, False)
    config = recipe.utility
    utility = config.build("dev")
    adapters = list(recipe.experts)
    scratch = Path(tempfile.gettempdir()) / "mergekit-swarm-bench-eval"
    full = merge_adapters_into_full_experts(recipe.base_model, adapters, scratch)

    lora_resident, lora_layout = resident_for(adapters, recipe.base_model, "model", tokenizer, args.device)
    full_resident, full_layout = resident_for(full, None, "model", tokenizer, args.device)
    report = {
        "command": command(),
        "machine": machine(),
        "versions": versions(),
        "device": args.device,
        "utility": {"type": config.type, "examples": len(utility.examples), "batch_size": config.batch_size},
        "overhead": {
            "lora": overhead(lora_resident, lora_layout, utility, args.repeats),
            "full": overhead(full_resident, full_layout, utility, args.repeats),
        },
        "throughput": throughput(args, adapters, recipe.base_model, tokenizer, config),
        "iteration": iteration_vs_evolve_style(args, full, tokenizer, utility),
    }
    write_report(args.name, report, markdown(report))


def markdown(report: dict) -> str:
    u = report["utility"]
    lines = header("Evaluation speed: overhead, mixed-adapter batches, whole iterations", report)
    lines += [
        f"- utility: {u['type']} on {u['examples']} dev examples (the quickstart's), {u['batch_size']} prompts per batch, "
        f"greedy, 8 new tokens; tiny char-level Llama; device {report['device']}",
        "",
        "## (a) Time outside generate() per evaluation",
        "",
        "| pool | s / evaluation | in generate() | outside (materialisation, tokenising, scoring) |",
        "|---|---:|---:|---:|",
    ]
    for kind, row in report["overhead"].items():
        lines.append(
            f"| {kind} | {row['seconds_per_evaluation']:.4f} | {row['generate_seconds_per_evaluation']:.4f} | "
            f"{100 * row['overhead_share']:.1f}% |"
        )
    lines += [
        "",
        "## (b) Mixed-adapter batches (LoRA pool)",
        "",
        "| particles per batch | prompts per batch | rows per forward | evaluations / s | vs one at a time |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in report["throughput"]:
        lines.append(
            f"| {row['particles_per_batch']} | {row['prompts_per_batch']} | {row['rows_per_forward']} | "
            f"{row['evaluations_per_second']:.2f} | {row['speedup']:.2f}x |"
        )
    it = report["iteration"]
    lines += [
        "",
        "## (c) One iteration, forward passes included (full-model pool)",
        "",
        "| loop | s / iteration |",
        "|---|---:|",
        f"| ours (resident model, particles written in place) | {it['ours_seconds_per_iteration']:.2f} |",
        f"| mergekit-evolve style (`run_merge` to disk, `from_pretrained`) | {it['evolve_style_seconds_per_iteration']:.2f} |",
        "",
        f"{it['particles']} particles per iteration: ours is **{it['speedup']:.1f}x** faster.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
