#!/usr/bin/env bash
# The GPU checks of this project, as one prepared call on the lent GPU machine (see
# ../shared/device/README.md): first, here,
#
#   rm -rf .whl && bash ../shared/device/fetch-wheels.sh $(python benchmarks/device/wheels.py --ray) \
#     && bash benchmarks/device/ray_pack.sh
#
# (mergekit and, pinned to this machine's versions, transformers / PEFT / huggingface_hub and what
# they need: the GPU machine's own are older; and Ray, stripped to fit: 55 MB in all), then
#
#   run(carry=[".whl"], timeout_s=580, command="bash benchmarks/device/run.sh")
#
# (both from the project root; its own limits: 370 s for the benchmark, 150 s for the tests, ~30 s to
# install and unpack)
#
# Measured on the H200: the LoRA part takes ~4 min with one pass per way (one particle at a time is
# 70 s per pass), the full pool ~20 s, the CUDA tests ~25 s, the machine's start ~30 s; the device
# budget of a session is 15 min. GPU_EVAL_ARGS="--parts full,quickstart --name gpu_eval_full" runs a subset into its own report,
# GPU_EVAL_SECONDS / PYTEST_SECONDS change the time limits. Next device run (issue 16's open item):
# GPU_EVAL_ARGS="--parts full,quickstart --chunk-elements 4,64 --fused --name gpu_eval_full" times the full pool
# packed (runs of tensors) and per tensor side by side, with the accumulator chunk at 4 and 64 Mi elements too
# (16 Mi, the default, keeps a float32 chunk out of L2), and a torch.compile'd fused kernel, checking every
# way's bits against the first.
#
# It runs the GPU benchmark first (benchmarks/gpu_eval.py --device cuda; its report is rewritten
# after every part, so a cut-short run keeps what it measured), then the CUDA tests (`pytest -m gpu`;
# the Ray ones where Ray was packed: a worker holding the GPU gives the in-process search),
# and leaves everything under $OUT: gpu_eval.{json,md} (copy them to benchmarks/results/) and the logs.
set -uo pipefail
[ -f pyproject.toml ] || { echo "run from the project root" >&2; exit 2; }
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
for packed in .whl/ray-*.tar.xz; do  # Python's tarfile: no xz program needed; keeps the binaries' execute bits
  [ -f "$packed" ] && python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="tar")' "$packed" /tmp/site
done
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv > "$OUT/nvidia-smi.csv" 2>&1
python3 -c "import torch, transformers, peft, mergekit; print(torch.__version__, torch.cuda.get_device_name(), transformers.__version__, peft.__version__)" 2>&1 | tee "$OUT/versions.txt"
(cd benchmarks && timeout "${GPU_EVAL_SECONDS:-370}" python3 gpu_eval.py --device cuda --repeats 1 ${GPU_EVAL_ARGS:-} --out "$OUT" 2>&1 | grep -v "Loading weights" | tail -80 > "$OUT/gpu_eval_log.txt"; echo "gpu_eval: exit ${PIPESTATUS[0]}" >> "$OUT/gpu_eval_log.txt")
timeout "${PYTEST_SECONDS:-150}" python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_stacked.py tests/test_batched.py tests/test_ray_gpu.py 2>&1 | tail -40 > "$OUT/pytest_gpu.txt"
echo "pytest -m gpu: exit ${PIPESTATUS[0]}" >> "$OUT/pytest_gpu.txt"
cat "$OUT/gpu_eval_log.txt" "$OUT/pytest_gpu.txt"
