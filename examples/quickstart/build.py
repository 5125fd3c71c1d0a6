"""Build the quickstart's tiny models and data (offline, ~1-2 minutes on 2 CPU cores, cached).

A char-level Llama base, four LoRA experts (reverse, sort, shift, count) and an objective no
expert is good at (an even mix of reverse and sort prompts); see `mergekit_swarm.testing.quickstart`.

    python examples/quickstart/build.py
    mergekit-swarm examples/quickstart/swarm.yml quickstart-out/
"""

import argparse
from pathlib import Path

from mergekit_swarm.testing.quickstart import build

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if a build is cached")
    args = parser.parse_args()
    print(f"ready: {build(HERE, force=args.force)}")
