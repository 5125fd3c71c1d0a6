#!/usr/bin/env bash
# Ray for the GPU machine, which has none: its wheel (79 MB for ray 2.60) is larger than the 64 MiB
# a device call can carry, so this packs a stripped copy into .whl/ray-<version>.tar.xz (~28 MB):
# without the Java jar (ray_dist.jar, 32 MB: Ray's Java workers), the dashboard's source maps and the
# native binaries' debug symbols; what Ray runs from Python is untouched. Run from the project root
# after fetching the other wheels with Ray's requirements:
#
#   rm -rf .whl && bash ../shared/device/fetch-wheels.sh $(python benchmarks/device/wheels.py --ray) \
#     && bash benchmarks/device/ray_pack.sh && du -sh .whl     # must stay under ~60 MB with the tree
#
# run.sh (next to this script) unpacks it next to the wheels and then runs the Ray GPU test (tests/test_ray_gpu.py).
set -euo pipefail
[ -f pyproject.toml ] || { echo "run from the project root" >&2; exit 2; }
version=$(python -c "import importlib.metadata as m; print(m.version('ray'))")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 -d "$work" "ray==$version" 2>&1 | grep -v '^WARNING' || true
mkdir "$work/site"
unzip -q "$work"/ray-*.whl -d "$work/site"  # unzip keeps the binaries' execute bits
rm -rf "$work/site/ray/jars" "$work"/site/ray/dashboard/client/build/static/js/*.map
strip --strip-unneeded "$work/site/ray/_raylet.so" "$work/site/ray/core/src/ray/gcs/gcs_server" \
  "$work/site/ray/core/src/ray/raylet/raylet"
mkdir -p .whl
tar -C "$work/site" -cf - . | xz -T2 -6 > ".whl/ray-$version.tar.xz"
ls -la ".whl/ray-$version.tar.xz"
