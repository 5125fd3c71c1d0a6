"""Build the real-model testbed (`mergekit_swarm.testing.real_testbed`): SmolLM2-135M-Instruct, LoRA and full
experts fine-tuned on natural-language skills, cached under benchmarks/testbed/cache/real-seed-N/.

    python benchmarks/testbed/build_real.py [--seed 0] [--pools lora,full]
"""

import argparse
from pathlib import Path

from mergekit_swarm.testing import real_testbed

CACHE = Path(__file__).resolve().parent / "cache"

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pools", default="lora,full")
    args = parser.parse_args()
    pools = tuple(p.strip() for p in args.pools.split(",") if p.strip())
    print(f"ready: {real_testbed.build(args.seed, root=CACHE / f'real-seed-{args.seed}', pools=pools)}")
