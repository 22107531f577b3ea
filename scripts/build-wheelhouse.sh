#!/usr/bin/env bash
# Fill build/wheelhouse/ for hermetic (--network=none) image builds.
#
#   * the llenergymeasure wheel (orchestrator + harness: the same wheel in every image)
#   * with LLEM_WHEELHOUSE_DEPS=1 (default): every runtime dependency of
#     llenergymeasure[pytorch,nvml] as cp311 manylinux wheels (the local test base is
#     Debian bookworm, Python 3.11), plus torch==$LLEM_TEST_TORCH (the CPU wheel that
#     pip's configured find-links provide on this machine)
#
# Production builds (images.yml) only need the project wheel: LLEM_WHEELHOUSE_DEPS=0.
# Dependency wheels are kept between runs; pip skips files it already has.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${LLEM_WHEELHOUSE:-$here/build/wheelhouse}"
torch_spec="torch==${LLEM_TEST_TORCH:-2.13.0}"
py="${PYTHON:-python3}"

mkdir -p "$out"
start=$SECONDS
rm -f "$out"/llenergymeasure-*.whl
# pip wheel builds from the source tree; setuptools' leftovers land in build/ (gitignored).
"$py" -m pip wheel --quiet --no-deps --wheel-dir "$out" "$here"
wheels=("$out"/llenergymeasure-*.whl)
wheel="${wheels[0]}"
echo "build-wheelhouse: $(basename "$wheel") in $((SECONDS - start))s"

if [ "${LLEM_WHEELHOUSE_DEPS:-1}" = "1" ]; then
    start=$SECONDS
    "$py" -m pip download --quiet --dest "$out" \
        --only-binary=:all: --implementation cp --python-version 3.11 --abi cp311 \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform linux_x86_64 --platform any \
        "${wheel}[pytorch,nvml]" "$torch_spec"
    all=("$out"/*.whl)
    echo "build-wheelhouse: ${#all[@]} wheels, $(du -sh "$out" | cut -f1) in $((SECONDS - start))s"
fi
