#!/usr/bin/env bash
# The GPU checks of this project, as one prepared call on the lent GPU machine (see
# ../shared/device/README.md): first `bash ../shared/device/fetch-wheels.sh` here, then
#
#   run(carry=[".whl"], timeout_s=540, command="bash benchmarks/device_run.sh")
#
# It installs mergekit from the carried wheels, runs the CUDA tests (`pytest -m gpu`) and the
# GPU benchmark (benchmarks/gpu_eval.py --device cuda), and leaves everything under $OUT:
# gpu_eval.{json,md} (copy them to benchmarks/results/) and the logs.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv > "$OUT/nvidia-smi.csv" 2>&1
timeout 180 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_stacked.py 2>&1 | tail -30 > "$OUT/pytest_gpu.txt"
echo "pytest -m gpu: exit ${PIPESTATUS[0]}" >> "$OUT/pytest_gpu.txt"
cd benchmarks && timeout 330 python3 gpu_eval.py --device cuda --repeats 2 --out "$OUT" 2>&1 | tail -60 > "$OUT/gpu_eval_log.txt"
echo "gpu_eval: exit ${PIPESTATUS[0]}" >> "$OUT/gpu_eval_log.txt"
cat "$OUT/pytest_gpu.txt" "$OUT/gpu_eval_log.txt"
