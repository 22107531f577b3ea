#!/usr/bin/env bash
# Fill build/wheelhouse/ for hermetic (--network=none) image builds.
#
#   * the llenergymeasure-contract and llenergymeasure-harness wheels (the same two in every
#     image; the host distribution, with the CLI, typer, rich and the docker SDK, never goes in)
#   * with LLEM_WHEELHOUSE_DEPS=1 (default): every runtime dependency of
#     llenergymeasure-harness[pytorch,nvml,lm-eval] as cp311 manylinux wheels (the local test base is
#     Debian bookworm, Python 3.11), plus torch==$LLEM_TEST_TORCH (the CPU wheel that
#     pip's configured find-links provide on this machine)
#
# Production builds (images.yml) only need the two project wheels: LLEM_WHEELHOUSE_DEPS=0.
# Dependency wheels are kept between runs; pip skips files it already has.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${LLEM_WHEELHOUSE:-$here/build/wheelhouse}"
torch_spec="torch==${LLEM_TEST_TORCH:-2.13.0}"
py="${PYTHON:-python3}"

mkdir -p "$out"
start=$SECONDS
# Wheels of earlier layouts too: the single llenergymeasure wheel no image installs any more.
rm -f "$out"/llenergymeasure-*.whl "$out"/llenergymeasure_contract-*.whl "$out"/llenergymeasure_harness-*.whl
# pip wheel builds from the source trees; setuptools' leftovers land in build/ (gitignored).
"$py" -m pip wheel --quiet --no-deps --wheel-dir "$out" "$here/contract" "$here/harness"
contract=("$out"/llenergymeasure_contract-*.whl)
harness=("$out"/llenergymeasure_harness-*.whl)
echo "build-wheelhouse: $(basename "${contract[0]}") $(basename "${harness[0]}") in $((SECONDS - start))s"

if [ "${LLEM_WHEELHOUSE_DEPS:-1}" = "1" ]; then
    start=$SECONDS
    # lm_eval's dependencies that PyPI has only as source distributions (pure Python): built
    # into wheels here, then found by the download below (--find-links).
    "$py" -m pip wheel --quiet --no-deps --wheel-dir "$out" \
        rouge-score==0.1.2 sqlitedict==2.1.0 word2number==1.1
    "$py" -m pip download --quiet --dest "$out" --find-links "$out" \
        --only-binary=:all: --implementation cp --python-version 3.11 --abi cp311 \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform linux_x86_64 --platform any \
        "${contract[0]}" "${harness[0]}[pytorch,nvml,lm-eval]" "$torch_spec"
    all=("$out"/*.whl)
    echo "build-wheelhouse: ${#all[@]} wheels, $(du -sh "$out" | cut -f1) in $((SECONDS - start))s"
fi
