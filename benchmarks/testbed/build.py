"""Build the quality testbed (`mergekit_swarm.testing.testbed`), cached under benchmarks/testbed/cache/.

    python benchmarks/testbed/build.py --seed 0
    python benchmarks/testbed/build.py --seed 1 --skills reverse,sort,shift,add,count,lookup,spell,balanced \\
        --objectives sort=sort,mix=reverse+add
"""

from pathlib import Path

from mergekit_swarm.testing.testbed import main

CACHE = Path(__file__).resolve().parent / "cache"

if __name__ == "__main__":
    main(CACHE)
