"""Evaluating every particle of an iteration in one batch, and writing full-model particles, on CPU or GPU.

    python benchmarks/gpu_eval.py                    # CPU: the quickstart, a small Qwen2, a small full pool
    python benchmarks/gpu_eval.py --device cuda      # GPU: the quickstart, a ~0.5B Qwen2, a ~0.5B full pool

(a) The quickstart (10 LoRA particles, 200 dev prompts, exact match): seconds per iteration with one
    particle at a time, with all 10 in PEFT's mixed-adapter batches, and with all 10 stacked (one
    batched matmul per LoRA layer); the utilities must be identical.
(b) A random-init Qwen2 built in code (Qwen2-0.5B's shape on a GPU, a small one on CPU), 10 LoRA
    experts (rank 16 on q/k/v/o/up/down), 20 particles, exact match on 200 prompts with 64 new tokens
    (fewer on CPU): evaluations per second for the same three ways, and the peak GPU memory.
(c) A full-model pool of 10 experts of that model: milliseconds per particle written into the
    resident model, with the experts held on the device (packed: runs of tensors written together;
    and, side by side, one tensor at a time as before packing) and streamed from the page cache, the
    bandwidth reached against the device's own copy bandwidth, and whether every way wrote the same bits.

Writes `benchmarks/results/gpu_eval.{json,md}` (or `--name`), with the device, the versions and the command.
Nothing is downloaded: models, adapters, tokenizer and data are built in a scratch folder.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

from lib.common import RESULTS, ROOT, command, header, machine, versions, write_report

# Qwen2-0.5B's shape (its 151936-token embedding, tied), and a small one for CPUs (the tokenizer's vocabulary)
QWEN2_05B = dict(
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    vocab_size=151936,
)
QWEN2_SMALL = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--parts", default="quickstart,lora,full", help="which of (a), (b), (c) to run")
    parser.add_argument("--experts", type=int, default=10)
    parser.add_argument("--particles", type=int, default=20)
    parser.add_argument("--prompts", type=int, default=None, help="default: 200 on a GPU, 40 on CPU")
    parser.add_argument("--new-tokens", type=int, default=None, help="default: 64 on a GPU, 16 on CPU")
    parser.add_argument("--repeats", type=int, default=3, help="passes per measurement; the fastest counts")
    parser.add_argument(
        "--chunk-elements",
        default="",
        help="full pool, experts on the GPU: also time these accumulator chunk sizes (e.g. 1,4,8 in Mi elements; "
        "the default is kernels.GPU_CHUNK_ELEMENTS)",
    )
    parser.add_argument("--fused", action="store_true", help="full pool: also time a torch.compile'd fused kernel")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "mergekit-swarm-gpu-eval")
    parser.add_argument("--name", default="gpu_eval")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of <name>.{json,md} (default: benchmarks/results)")
    args = parser.parse_args()
    gpu = args.device.startswith("cuda")
    args.prompts = args.prompts or (200 if gpu else 40)
    args.new_tokens = args.new_tokens or (64 if gpu else 16)
    parts = set(args.parts.split(","))

    import torch

    torch.manual_seed(0)
    report = {"command": command(), "machine": machine(), "versions": versions(), "device": args.device, "parts": {}}
    started = time.perf_counter()

    def done(part: str, result: dict) -> None:
        # written after every part: a run cut short by the GPU machine's time limit keeps what it measured
        report["parts"][part] = result
        write_report(args.name, report, markdown(report), args.out)
        print(f"[{time.perf_counter() - started:.0f} s] {part} done", flush=True)

    if parts & {"lora", "full"}:
        shape = QWEN2_05B if gpu else QWEN2_SMALL
        base, tokenizer, data = build_base(args.workdir, shape, args.prompts, args.device)
        report["model"] = {**shape, "parameters": parameter_count(base)}
        if "lora" in parts:
            done("lora", lora_pool(args, base, tokenizer, data))
        if "full" in parts:
            done("full", full_pool(args, base, tokenizer))
    if "quickstart" in parts:
        done("quickstart", quickstart(args))


# ---------------------------------------------------------------- (a) the quickstart
def quickstart(args) -> dict:
    """Seconds per iteration (10 particles) one at a time, in PEFT mixed batches, stacked."""
    from mergekit_swarm import pso
    from mergekit_swarm.config import load_recipe
    from mergekit_swarm.core.run_options import RunOptions
    from mergekit_swarm.search.evaluator import LocalEvaluator
    from mergekit_swarm.search.setup import prepare
    from mergekit_swarm.testing import quickstart as built

    recipe = load_recipe(built.build(ROOT / "examples" / "quickstart", quiet=True)).resolve()
    options = RunOptions(device=args.device, quiet=True)
    setup = prepare(recipe, options, recipe.swarm.granularity)
    start = recipe.swarm.model_copy(update={"initial": "experts"})  # positions only: no utilities needed
    particles = list(pso.initialize(start, len(setup.pool), len(setup.layout)).positions)
    return compare_ways(lambda slots: LocalEvaluator.open(setup, options, slots), particles, args.repeats)


def compare_ways(open_engine, particles, repeats: int) -> dict:
    """The same particles one at a time, all in PEFT's mixed batches, all stacked: each way's fastest
    of `repeats` passes, the ways taking turns in every pass (a shared machine drifts), and the median
    over the passes of each way's speed-up on one at a time in the same pass."""
    import statistics

    import torch

    single, batched = open_engine(1), open_engine(len(particles))
    ways = {"one at a time": (single, False), "PEFT mixed batches": (batched, False), "stacked": (batched, True)}
    passes: dict[str, list[float]] = {way: [] for way in ways}
    utilities, peak = {}, {}
    for engine, _ in ways.values():
        start = time.perf_counter()
        list(engine.evaluate(particles[:2]))  # warm-up (first touch, tokenization caches)
        print(f"  warm-up ({engine.resident.slots} slots): {time.perf_counter() - start:.2f} s", flush=True)
    for _ in range(repeats):
        for way, (engine, stacked) in ways.items():
            if engine.resident.stack is not None:
                engine.resident.stack.enabled = stacked
            if torch.cuda.is_available():
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            results = list(engine.evaluate(particles))
            passes[way].append(time.perf_counter() - start)
            print(f"  {way}: {passes[way][-1]:.2f} s for {len(particles)} particles", flush=True)
            assert not any(r.failed for r in results), results
            utilities[way] = [r.utility for r in results]
            peak[way] = round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None
    rows = {}
    for way, (engine, _) in ways.items():
        best = min(passes[way])
        paired = [alone / seconds for alone, seconds in zip(passes["one at a time"], passes[way])]
        rows[way] = {
            "seconds_per_iteration": round(best, 4),
            "evaluations_per_second": round(len(particles) / best, 3),
            "speedup": round(statistics.median(paired), 2),
            "speedup_range": [round(min(paired), 2), round(max(paired), 2)],
            "identical_utilities": utilities[way] == utilities["one at a time"],
            # on a GPU in bf16 a batch of another size takes other GEMM kernels: greedy tokens may flip
            "max_utility_difference": max(abs(a - b) for a, b in zip(utilities[way], utilities["one at a time"])),
            "mean_utility": round(statistics.fmean(utilities[way]), 4),
            "peak_gpu_memory_gib": peak[way],
            "fallbacks": engine.fallbacks,
        }
    return {"particles": len(particles), "ways": rows}


# ---------------------------------------------------------------- (b) a Qwen2 and LoRA experts
def build_base(workdir: Path, shape: dict, prompts: int, device: str = "cpu"):
    """A random-init Qwen2 of `shape` with a BPE tokenizer and `prompts` dev examples (cached)."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from mergekit_swarm.testing.chat import SKILLS, build_bpe_tokenizer, make_examples
    from mergekit_swarm.testing.toy import write_jsonl

    folder = workdir / "base-{hidden_size}x{num_hidden_layers}".format(**shape)
    data = workdir / f"dev-{prompts}.jsonl"
    write_jsonl(data, make_examples(SKILLS, prompts, seed=1))
    if not (folder / "config.json").exists():
        tokenizer = build_bpe_tokenizer([f"{r['prompt']} {r['answer']}" for r in make_examples(SKILLS, 2000, seed=5)])
        settings = {"vocab_size": len(tokenizer), **shape, "tie_word_embeddings": True, "max_position_embeddings": 1024}
        config = Qwen2Config(**settings)
        config.eos_token_id, config.pad_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id
        with torch.device(device):  # random init on the GPU: seconds, not a minute on its CPUs
            model = Qwen2ForCausalLM(config).to(torch.bfloat16)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return folder, AutoTokenizer.from_pretrained(folder), data


def parameter_count(folder: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return sum(math.prod(f.get_slice(name).get_shape()) for name in list(f.keys()))


def lora_pool(args, base: Path, tokenizer, data: Path) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from mergekit_swarm import pso
    from mergekit_swarm.experts import open_pool
    from mergekit_swarm.experts.groups import group_layout
    from mergekit_swarm.pso import SwarmSettings
    from mergekit_swarm.search.evaluator import LocalEvaluator
    from mergekit_swarm.utilities import validate_utility
    from mergekit_swarm.weights.resident import ResidentModel

    experts = [args.workdir / f"lora-{base.name}-{k}" for k in range(args.experts)]
    if not all((folder / "adapter_config.json").exists() for folder in experts):
        model = get_peft_model(
            AutoModelForCausalLM.from_pretrained(base),
            LoraConfig(r=16, lora_alpha=32, target_modules=TARGETS, init_lora_weights=False),
        )
        lora = [param for name, param in model.named_parameters() if "lora_" in name]
        for k, folder in enumerate(experts):  # one base, new random LoRA weights per expert
            generator = torch.Generator().manual_seed(100 + k)
            with torch.no_grad():
                for param in lora:
                    param.copy_(torch.randn(param.shape, generator=generator) / math.sqrt(param.shape[1]))
            model.save_pretrained(folder)
    pool = open_pool(experts)
    layout = group_layout(pool, "model")
    settings = SwarmSettings(particles=args.particles, seed=0, initial="experts")  # positions only: no utilities
    particles = list(pso.initialize(settings, len(pool), len(layout)).positions)
    utility = validate_utility(
        {"type": "exact_match", "dev": str(data), "batch_size": args.prompts, "max_new_tokens": args.new_tokens}
    ).build("dev")
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32

    def open_engine(slots: int) -> LocalEvaluator:
        resident = ResidentModel.open(
            pool,
            layout,
            model_source=base,
            tokenizer=tokenizer,
            model_dtype=dtype,
            merge_dtype=dtype,
            device=args.device,
            slots=slots,
        )
        return LocalEvaluator(resident, utility)

    return {
        "experts": len(experts),
        "prompts": args.prompts,
        "new_tokens": args.new_tokens,
        **compare_ways(open_engine, particles, args.repeats),
    }


# ---------------------------------------------------------------- (c) a full-model pool
def full_pool(args, base: Path, tokenizer) -> dict:
    """Milliseconds per materialised particle, experts held on the device vs streamed from the page cache."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from mergekit_swarm.experts import open_pool
    from mergekit_swarm.experts.groups import group_layout
    from mergekit_swarm.weights import kernels, writer
    from mergekit_swarm.weights.resident import ResidentModel

    default_chunk = kernels.GPU_CHUNK_ELEMENTS
    write_flat, span = writer.write_flat, writer.span

    experts = [args.workdir / f"full-{base.name}-{k}" for k in range(args.experts)]
    if not all((folder / "model.safetensors").exists() for folder in experts):
        model = AutoModelForCausalLM.from_pretrained(base).to(args.device)  # noise drawn on the device: fast
        original = {name: param.detach().clone() for name, param in model.named_parameters()}
        for k, folder in enumerate(experts):  # the base plus its own noise per expert
            generator = torch.Generator(args.device).manual_seed(200 + k)
            with torch.no_grad():
                for name, param in model.named_parameters():
                    noise = torch.randn(param.shape, generator=generator, device=args.device)
                    param.copy_(original[name] + (0.01 * noise).to(param.dtype))
            model.save_pretrained(folder)
        del model, original
    rows = {}
    gpu = args.device.startswith("cuda")
    # experts held on the device, packed (runs of tensors), or with every tensor on its own as before packing
    ways = [("device", None, "runs"), ("device, per tensor", None, "per tensor"), ("page cache", None, "runs")]
    ways += [(f"device, chunk {n} Mi", int(n) << 20, "runs") for n in args.chunk_elements.split(",") if n and gpu]
    if args.fused:  # not the product's way (yet): its bits and speed, measured beside the others
        ways.append(("device, fused (torch.compile)", None, "fused"))
    reference_state: dict | None = None
    for where, chunk, mode in ways:
        if chunk:  # read when the resident model's accumulator is made
            kernels.GPU_CHUNK_ELEMENTS = chunk
        pool = open_pool(experts)
        layout = group_layout(pool, "model")
        resident = ResidentModel.open(
            pool,
            layout,
            model_source=experts[0],
            tokenizer=tokenizer,
            model_dtype=None,
            device=args.device,
            hold_experts=where.startswith("device"),
        )
        kernels.GPU_CHUNK_ELEMENTS = default_chunk
        rng = np.random.default_rng(0)  # the same particles in every way
        particles = [rng.dirichlet(np.ones(len(experts)))[None] for _ in range(args.repeats + 1)]
        calls = []

        write = fused_write_flat(write_flat) if mode == "fused" else write_flat

        def counted(*a, calls=calls, write=write, **k):
            calls.append(1)
            return write(*a, **k)

        writer.write_flat = counted
        if mode == "per tensor":  # no two tensors seen as lying end to end: one run per tensor
            writer.span = lambda tensors: None
        try:
            resident.load(particles[0])  # warm-up: first read of every expert
            times = []
            for coefficients in particles[1:]:
                calls.clear()
                start = time.perf_counter()
                resident.load(coefficients)
                if gpu:
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
        finally:
            writer.write_flat, writer.span = write_flat, span
        state = {name: tensor.detach().cpu() for name, tensor in resident.tensors().items()}
        reference_state = reference_state or state
        read = sum(spec.torch_dtype.itemsize * math.prod(spec.shape) for spec in pool.specs) * len(experts)
        best = min(times)
        rows[where] = {
            "ms_per_particle": round(1000 * best, 1),
            "read_gb_per_s": round(read / best / 1e9, 2),
            "runs": len(calls),
            "tensors": len(pool.specs),
            "identical_weights": all(same_bits(state[name], reference_state[name]) for name in state),
        }
        del resident, state
    reference = copy_bandwidth(args.device)
    for row in rows.values():
        row["share_of_copy_bandwidth"] = round(row["read_gb_per_s"] / reference, 2)
    return {"experts": len(experts), "copy_bandwidth_gb_per_s": reference, "ways": rows}


def same_bits(a, b) -> bool:
    import torch

    return a.dtype == b.dtype and torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


def fused_write_flat(fallback):
    """A candidate for kernels.write_flat on a GPU: every expert read once, the float32 sum kept in
    registers (one kernel per chunk, generated by torch.compile), the addcmul_ chain's arithmetic in
    the same order. Only for one target in the input dtype; otherwise `fallback`."""
    import torch

    @torch.compile(dynamic=True)
    def combined(weights, *sources):
        acc = torch.zeros_like(sources[0], dtype=torch.float32)
        for k, source in enumerate(sources):
            acc = torch.addcmul(acc, source, weights[k])
        return acc.to(sources[0].dtype)

    def write(sources, weights, targets, final_dtype, *, dtype=None, accumulator=None, columns=None):
        if len(targets) != 1 or dtype is not None or final_dtype != sources[0].dtype or final_dtype == torch.float64:
            return fallback(sources, weights, targets, final_dtype, dtype=dtype, accumulator=accumulator, columns=columns)
        w = torch.tensor(weights[0], dtype=torch.float32, device=targets[0].device)
        size, step = sources[0].numel(), 1 << 26
        for start in range(0, size, step):
            stop = min(start + step, size)
            targets[0][start:stop].copy_(combined(w, *(source[start:stop] for source in sources)))

    return write


def copy_bandwidth(device: str) -> float:
    """GB/s of a large tensor copy on `device` (read + write), the best of 5."""
    import torch

    source = torch.empty(1 << 28, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    best = float("inf")
    for _ in range(5):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        target.copy_(source)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return round(2 * source.numel() / best / 1e9, 1)


def markdown(report: dict) -> str:
    lines = header("All particles in one batch; full-model particles on the device", report)
    lines.append(f"- device: {report['device']}")
    if "model" in report:
        m = report["model"]
        size = f"hidden {m['hidden_size']}, {m['num_hidden_layers']} layers, {m['parameters'] / 1e6:.0f}M parameters"
        lines.append(f"- model: random-init Qwen2, {size}")
    parts = report["parts"]
    titles = {
        "quickstart": "(a) The quickstart: 10 LoRA particles, 200 prompts, exact match",
        "lora": "(b) LoRA experts of the Qwen2",
    }
    for key, title in titles.items():
        if key not in parts:
            continue
        part = parts[key]
        what = f"{part['particles']} particles per iteration"
        if key == "lora":
            what += f", {part['experts']} experts, {part['prompts']} prompts x {part['new_tokens']} new tokens"
        lines += ["", f"## {title}", "", what + ".", ""]
        lines += [
            "| way | s / iteration (fastest) | evaluations / s | vs one at a time (median, range) | identical utilities "
            "| peak GPU memory (GiB) |"
        ]
        lines += ["|---|---:|---:|---:|---|---:|"]
        for way, row in part["ways"].items():
            memory = "-" if row["peak_gpu_memory_gib"] is None else f"{row['peak_gpu_memory_gib']:.2f}"
            low, high = row["speedup_range"]
            speedup = f"{row['speedup']:.2f}x ({low:.2f}-{high:.2f})"
            cells = [way, f"{row['seconds_per_iteration']:.3f}", f"{row['evaluations_per_second']:.2f}", speedup]
            lines.append("| " + " | ".join([*cells, str(row["identical_utilities"]), memory]) + " |")
    if "full" in parts:
        part = parts["full"]
        lines += ["", f"## (c) Full-model pool of {part['experts']} experts: writing a particle", ""]
        lines += [f"Copy bandwidth of the device: {part['copy_bandwidth_gb_per_s']} GB/s.", ""]
        lines += [
            "| experts held | ms / particle | experts read, GB/s | share of copy bandwidth | runs / tensors "
            "| weights identical |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for where, row in part["ways"].items():
            share = f"{100 * row['share_of_copy_bandwidth']:.0f}%"
            runs = f"{row.get('runs', '-')} / {row.get('tensors', '-')}"
            cells = [where, f"{row['ms_per_particle']:.1f}", f"{row['read_gb_per_s']:.2f}", share, runs]
            lines.append("| " + " | ".join([*cells, str(row.get("identical_weights", "-"))]) + " |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
