"""Print `name==version` for the packages the GPU machine should run at this machine's versions.

The GPU machine (../shared/device/README.md) has older transformers / PEFT / huggingface_hub than
the ones this project is tested with; the stacked-adapter path hooks into PEFT, so the benchmark
brings the tested versions (and what they need, except torch and what the machine has anyway):

    bash ../shared/device/fetch-wheels.sh $(python benchmarks/device/wheels.py)

`--ray` adds what Ray needs besides itself (Ray's own wheel is larger than a call can carry:
`benchmarks/device/ray_pack.sh` packs a stripped copy).
"""

from __future__ import annotations

import importlib.metadata as metadata
import re

from packaging.requirements import Requirement

PINNED = ["transformers", "peft", "accelerate", "huggingface-hub", "tokenizers", "safetensors"]
# on the GPU machine already (torch in its CUDA build), or fetched by fetch-wheels.sh itself
PRESENT = {"torch", "numpy", "psutil", "pyyaml", "tqdm", "packaging", "typing-extensions"}
PRESENT |= {"pydantic", "pydantic-core", "annotated-types", "typing-inspection"}
SKIPPED = {"hf-xet"}  # only for Hub downloads (4 MB of the 64 MiB a call can carry); nothing is downloaded there
TARGET = {"extra": "", "python_version": "3.12", "python_full_version": "3.12.0", "sys_platform": "linux"}


def closure(names: list[str]) -> dict[str, str]:
    """The installed versions of `names` and of everything they require on the GPU machine's Python."""
    found: dict[str, str] = {}
    todo = list(names)
    while todo:
        name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if name in found or name in PRESENT or name in SKIPPED:
            continue
        distribution = metadata.distribution(name)
        found[name] = distribution.version
        for line in distribution.requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate(TARGET):
                todo.append(requirement.name)
    return found


if __name__ == "__main__":
    import sys

    wanted = closure(PINNED + (["ray"] if "--ray" in sys.argv[1:] else []))
    wanted.pop("ray", None)  # packed by ray_pack.sh
    print(" ".join(f"{name}=={version}" for name, version in sorted(wanted.items())))
