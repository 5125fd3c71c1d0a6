"""One swarm iteration without the utility's forward passes: ours vs the official approach.

    python benchmarks/bench_step.py                      # both pools, 106M-parameter Llama, n=10, N=20
    python benchmarks/bench_step.py --kind lora --device cuda

Per pool kind (full fine-tunes; rank-16 LoRA adapters on every linear layer), two loops
run side by side in separate processes on the same synthetic experts:

* ours: the real search loop (`run_search`: PSO step in coefficient space, particles
  written into the resident model, checkpoint and history after every iteration), with a
  utility that only reads a few weights, so what is timed is everything but forward passes;
* official-style: `lib/official_style.py`, per-particle weight files updated by five whole-file
  merges, the particle loaded from disk for its evaluation (LoRA: base + adapter), and
  folder copies of improved particles.

Reported: seconds per iteration at N particles, peak memory, bytes written to disk per
iteration, the ratio, and for full pools the materialisation bandwidth against a plain
copy measured in the same run. The official-style loop on full models needs 6 model
copies per particle on disk; where that does not fit in the page cache
(`--official-particles` smaller than N), its per-particle cost is measured on fewer
particles and scaled to N (it is linear in N: particles are independent).
Writes benchmarks/results/bench_step.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

from lib.common import (
    RESULTS,
    MemorySampler,
    accumulate_rate,
    bytes_written,
    command,
    copy_bandwidth,
    header,
    machine,
    versions,
    write_report,
)
from lib.synthetic import Shape, build_pool


def probe_value(model, adapter: str | None = None, module=None) -> float:
    """A 'utility' without forward passes: reads 1024 weights of the particle (the first LoRA B
    matrix, or the first weight), enough to steer the swarm. `module`: that LoRA layer, if known."""
    module = module or first_lora_layer(model)
    tensor = next(model.parameters()) if module is None else module.lora_B[adapter or module.active_adapters[0]].weight
    return float(tensor.reshape(-1)[:1024].float().sum())


def first_lora_layer(model):
    return next((m for m in model.modules() if hasattr(m, "lora_B") and len(m.lora_B)), None)


def run_ours(args, pool, kind: str) -> dict:
    import torch

    from mergekit_swarm import pso
    from mergekit_swarm.experts import open_pool
    from mergekit_swarm.experts.groups import group_layout
    from mergekit_swarm.output.rundir import RunDirectory
    from mergekit_swarm.pso import SwarmState
    from mergekit_swarm.search.evaluator import LocalEvaluator
    from mergekit_swarm.search.loop import run_search
    from mergekit_swarm.search.run_state import Checkpoint
    from mergekit_swarm.utilities import Utility
    from mergekit_swarm.weights.resident import ResidentModel

    class Probe(Utility):
        module = None  # the resident model's first LoRA layer, looked up once

        def __call__(self, model, tokenizer) -> float:
            return probe_value(model, module=self.layer(model))

        @property
        def scores_adapter_batches(self) -> bool:
            return kind == "lora"

        def score_adapters(self, model, tokenizer, adapters):
            return [probe_value(model, a, self.layer(model)) for a in adapters]

        def layer(self, model):
            if self.module is None and kind == "lora":
                self.module = first_lora_layer(model)
            return self.module

    experts = pool.full if kind == "full" else pool.lora
    expert_pool = open_pool(experts)
    layout = group_layout(expert_pool, args.granularity)
    settings = pso.SwarmSettings(
        particles=args.particles, max_iterations=args.iterations, patience=10**6, seed=0, initial="experts"
    )  # the timed loop drives initialize/observe/step itself
    settings = settings.model_copy(update={"granularity": args.granularity})
    start = time.perf_counter()
    resident = ResidentModel.open(
        expert_pool,
        layout,
        model_source=experts[0] if kind == "full" else pool.base,
        tokenizer=SimpleNamespace(pad_token="<pad>"),
        model_dtype=None,
        device=args.device,
        slots=args.particles_per_batch if kind == "lora" else 1,
    )
    setup_seconds = time.perf_counter() - start
    evaluator = LocalEvaluator(resident, Probe())
    state = pso.initialize(settings, len(expert_pool), len(layout))
    list(evaluator.evaluate(list(state.positions)))  # warm-up: first touch of the memory-mapped experts
    initial = state.to_dict()  # every repeat starts from the same swarm
    best = None
    for _ in range(args.repeats):  # the fastest of several whole runs: this machine is a shared VM
        with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
            rundir = RunDirectory(Path(tmp) / "out")
            rundir.open("bench", resume=False, overwrite=True)
            written = bytes_written()
            with MemorySampler() as memory:
                start = time.perf_counter()
                run_search(settings, evaluator, rundir.state, Checkpoint("bench", SwarmState.from_dict(initial)), quiet=True)
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                seconds = time.perf_counter() - start
            written = bytes_written() - written
            history = [json.loads(line) for line in rundir.state.history_path.read_text().splitlines()]
        if best is None or seconds < best[0]:
            best = (seconds, written, memory, history)
    seconds, written, memory, history = best
    rounds = args.iterations + 1  # the initial evaluation round, then one per iteration
    materialise = sum(row["wall_time"] for row in history) / len(history)  # per particle (probe included)
    return {
        "loop": "ours",
        "particles_measured": args.particles,
        "iterations_measured": rounds,
        "seconds_per_iteration": seconds / rounds,
        "materialise_seconds_per_particle": materialise,
        "other_seconds_per_iteration": seconds / rounds - materialise * args.particles,
        "bytes_written_per_iteration": written / rounds,
        "peak_rss_anon_bytes": memory.peak_anon,
        "peak_rss_file_bytes": memory.peak_file,
        "setup_seconds": setup_seconds,
    }


def run_official(args, pool, kind: str) -> dict:
    import torch
    from lib.official_style import OfficialStyleSwarm
    from transformers import AutoModelForCausalLM

    dtype = getattr(torch, args.dtype)

    def load_full(folder: Path):
        return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(args.device)

    def load_lora(folder: Path):
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(pool.base, dtype=dtype)
        return PeftModel.from_pretrained(base, folder).to(args.device)

    particles = min(args.official_particles or args.particles, args.particles)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        swarm = OfficialStyleSwarm(
            Path(tmp) / "search",
            pool.full if kind == "full" else pool.lora,
            particles,
            weights_file="model.safetensors" if kind == "full" else "adapter_model.safetensors",
            load_model=load_full if kind == "full" else load_lora,
            utility=probe_value,
        )
        swarm.iteration()  # warm-up: every file in the page cache
        written = bytes_written()
        with MemorySampler() as memory:
            phases = [swarm.iteration() for _ in range(args.official_iterations or (1 if kind == "full" else 3))]
        written = bytes_written() - written
    scale = args.particles / particles
    fastest = min(phases, key=lambda p: p["seconds"])  # as for ours: the fastest iteration
    return {
        "loop": "official-style",
        "particles_measured": particles,
        "iterations_measured": len(phases),
        "seconds_per_iteration": fastest["seconds"] * scale,
        "merge_seconds_per_iteration": fastest["merge_seconds"] * scale,
        "load_for_evaluation_seconds_per_iteration": fastest["load_for_evaluation_seconds"] * scale,
        "copy_seconds_per_iteration": fastest["copy_seconds"] * scale,
        "bytes_written_per_iteration": fastest["bytes_written"] * scale,
        "syscall_bytes_written_per_iteration": written / len(phases) * scale,
        "peak_rss_anon_bytes": memory.peak_anon,
        "peak_rss_file_bytes": memory.peak_file,
    }


def worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads or torch.get_num_threads())
    pool = built_pool(args)
    run = run_ours if args.worker == "ours" else run_official
    print("RESULT " + json.dumps(run(args, pool, args.kind)))


def built_pool(args):
    """The synthetic pool (at least 10 experts, so smaller n reuse it), cut to `--experts`."""
    pool = build_pool(args.workdir, shape(args), max(args.experts, 10), rank=args.rank)
    return replace(pool, full=pool.full[: args.experts], lora=pool.lora[: args.experts])


def shape(args) -> Shape:
    return Shape(args.hidden, args.layers, args.intermediate, args.vocab, args.dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=["full", "lora", "both"], default="both")
    parser.add_argument("--experts", type=int, default=10)
    parser.add_argument("--particles", type=int, default=20)
    parser.add_argument("--iterations", type=int, default=3, help="measured iterations of our loop")
    parser.add_argument("--repeats", type=int, default=3, help="whole runs of our loop; the fastest is reported")
    parser.add_argument("--official-iterations", type=int, default=None, help="default: 1 for full pools, 3 for LoRA")
    parser.add_argument("--official-particles", type=int, default=None, help="full pools: default 4 (disk/page cache)")
    parser.add_argument("--particles-per-batch", type=int, default=4, help="LoRA adapter slots filled per pass")
    parser.add_argument("--granularity", default="model", choices=["model", "layer", "tensor"])
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--intermediate", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "mergekit-swarm-bench")
    parser.add_argument("--name", default="bench_step", help="results file name")
    parser.add_argument("--loops", nargs="+", default=["ours", "official"], choices=["ours", "official"])
    parser.add_argument("--worker", choices=["ours", "official"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.worker:
        return worker(args)

    pool = built_pool(args)  # built once, before timing
    kinds = ["full", "lora"] if args.kind == "both" else [args.kind]
    rows = []
    for kind in kinds:
        official_particles = args.official_particles or (4 if kind == "full" else args.particles)
        for loop in args.loops:
            argv = _without(sys.argv[1:], "--kind", "--loops")
            extra = ["--official-particles", str(official_particles)] if "--official-particles" not in argv else []
            cmd = [sys.executable, __file__, *argv, *extra, "--kind", kind, "--worker", loop]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"{loop} {kind} failed:\n{done.stderr[-3000:]}")
            result = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])
            rows.append({"pool": kind, **result})
            print(json.dumps(rows[-1]), flush=True)
    report = {
        "command": command(),
        "machine": machine(),
        "versions": versions(),
        "model": {
            "shape": vars(shape(args)),
            "parameters": pool.parameters,
            "lora_parameters_per_expert": pool.lora_parameters,
        },
        "experts": args.experts,
        "particles": args.particles,
        "granularity": args.granularity,
        "particles_per_batch": args.particles_per_batch,
        "device": args.device,
        "copy_bandwidth_gbps": copy_bandwidth(),
        "accumulate_rate_gups": accumulate_rate(args.dtype, args.experts),
        "rows": rows,
    }
    add_ratios(report)
    write_report(args.name, report, markdown(report))


def rewrite(name: str) -> None:
    """Redo the ratios and the markdown of results/<name>.json (after changing how they are shown)."""
    report = json.loads((RESULTS / f"{name}.json").read_text())
    add_ratios(report)
    write_report(name, report, markdown(report))


def _without(argv: list[str], *options: str) -> list[str]:
    """`argv` less the given options and their values."""
    kept, skipping = [], False
    for arg in argv:
        if arg.startswith("--"):
            skipping = arg.split("=")[0] in options
        if not skipping:
            kept.append(arg)
    return kept


def add_ratios(report: dict) -> None:
    bytes_per = {"bfloat16": 2, "float16": 2, "float32": 4}[report["model"]["shape"]["dtype"]]
    model_bytes = report["model"]["parameters"] * bytes_per
    for kind in ("full", "lora"):
        rows = {r["loop"]: r for r in report["rows"] if r["pool"] == kind}
        ours, theirs = rows.get("ours"), rows.get("official-style")
        if ours and theirs:
            ours["speedup"] = theirs["seconds_per_iteration"] / ours["seconds_per_iteration"]
            ours["bytes_written_ratio"] = ours["bytes_written_per_iteration"] / theirs["bytes_written_per_iteration"]
        if ours and kind == "full":
            moved = (report["experts"] + 1) * model_bytes  # every expert read once, the particle written once
            ours["materialise_gbps"] = moved / ours["materialise_seconds_per_particle"] / 1e9
            ours["share_of_copy_bandwidth"] = ours["materialise_gbps"] / report["copy_bandwidth_gbps"]
            updates = report["experts"] * report["model"]["parameters"] / ours["materialise_seconds_per_particle"] / 1e9
            ours["materialise_gups"] = updates
            ours["share_of_accumulate_rate"] = updates / report["accumulate_rate_gups"]


def _size(count: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:,.1f} {unit}"
    return f"{count:.0f} B"


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}x"


def markdown(report: dict) -> str:
    gib = 2**30
    model = report["model"]
    lines = header("One swarm iteration without forward passes: ours vs official-style", report)
    lines += [
        f"- model: random-init Llama {model['shape']['hidden']}x{model['shape']['layers']} "
        f"(intermediate {model['shape']['intermediate']}, vocab {model['shape']['vocab']}), "
        f"{model['parameters'] / 1e6:.1f}M parameters in {model['shape']['dtype']}; LoRA rank 16 on all 7 linear "
        f"layers of every block: {model['lora_parameters_per_expert'] / 1e6:.2f}M parameters per adapter",
        f"- n = {report['experts']} experts, N = {report['particles']} particles, granularity {report['granularity']}, "
        f"device {report['device']}, LoRA adapter slots per pass {report['particles_per_batch']}",
        f"- plain copy bandwidth in this run: {report['copy_bandwidth_gbps']:.1f} GB/s (read + write); the "
        f"accumulation alone on tensors already in memory: {report['accumulate_rate_gups']:.2f} G element-updates/s",
        "",
        "| pool | loop | s / iteration | measured on | bytes written / iteration | peak RSS anon | peak RSS file-backed | "
        "speed-up |",
        "|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        measured = f"{r['particles_measured']} particles x {r['iterations_measured']} it"
        lines.append(
            f"| {r['pool']} | {r['loop']} | {r['seconds_per_iteration']:.3f} | {measured} | "
            f"{_size(r['bytes_written_per_iteration'])} | {r['peak_rss_anon_bytes'] / gib:.2f} GiB | "
            f"{r['peak_rss_file_bytes'] / gib:.2f} GiB | {_ratio(r.get('speedup'))} |"
        )
    lines.append("")
    for r in report["rows"]:
        if r["loop"] == "ours":
            text = (
                f"- ours, {r['pool']}: materialisation {r['materialise_seconds_per_particle'] * 1e3:.1f} ms per particle, "
                f"everything else {r['other_seconds_per_iteration'] * 1e3:.1f} ms per iteration"
            )
            if "bytes_written_ratio" in r:
                text += f"; bytes written {r['bytes_written_ratio']:.2e} of the official-style loop's"
            if "materialise_gbps" in r:
                text += (
                    f"; materialisation moves {r['materialise_gbps']:.1f} GB/s = "
                    f"{100 * r['share_of_copy_bandwidth']:.0f}% of the copy bandwidth, and does "
                    f"{r['materialise_gups']:.2f} G element-updates/s = {100 * r['share_of_accumulate_rate']:.0f}% of the "
                    "accumulation's own rate"
                )
            lines.append(text)
        else:
            lines.append(
                f"- official-style, {r['pool']}: merges {r['merge_seconds_per_iteration']:.2f} s, loading particles for "
                f"evaluation {r['load_for_evaluation_seconds_per_iteration']:.2f} s, folder copies "
                f"{r['copy_seconds_per_iteration']:.2f} s per iteration"
                + (
                    f" (measured on {r['particles_measured']} particles, scaled to {report['particles']})"
                    if r["particles_measured"] != report["particles"]
                    else ""
                )
            )
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
