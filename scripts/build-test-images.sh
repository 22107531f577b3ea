#!/usr/bin/env bash
# Build the three backend Dockerfiles on the local base image, offline (--network=none).
#
#   llenergymeasure/pytorch:test-cpu      complete: CPU torch + transformers + harness
#   llenergymeasure/vllm:test-harness     up to and including the harness layer (no vLLM:
#   llenergymeasure/trtllm:test-harness   ENGINE_CHECK=0; the engines need their CUDA bases)
#
# Needs: a reachable engine (scripts/docker-up.sh), llem-testbase:bookworm
# (scripts/build-base.sh) and a full wheelhouse (scripts/build-wheelhouse.sh).
# Usage: scripts/build-test-images.sh [pytorch] [vllm] [trtllm]    (default: all three)
# LLEM_TEST_TAG_SUFFIX=-x appends -x to each tag (a private copy beside the shared tags).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
base="${LLEM_BASE_IMAGE:-llem-testbase:bookworm}"
torch_version="${LLEM_TEST_TORCH:-2.13.0}"
log_dir="$here/build/logs"
mkdir -p "$log_dir"

shopt -s nullglob
wheels=(build/wheelhouse/llenergymeasure_harness-*.whl)
contracts=(build/wheelhouse/llenergymeasure_contract-*.whl)
shopt -u nullglob
wheel="${wheels[0]:-}"
if [ -z "$wheel" ] || [ -z "${contracts[0]:-}" ]; then
    echo "build-test-images: no contract/harness wheel in build/wheelhouse; run scripts/build-wheelhouse.sh" >&2
    exit 1
fi
version="$(basename "$wheel" | cut -d- -f2)"
contract_version="$(PYTHONPATH="$here/contract" "${PYTHON:-python3}" -c 'import llenergymeasure_contract as c; print(c.CONTRACT_VERSION)')"
revision="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"

common=(--network=none --force-rm
    --build-arg "BASE_IMAGE=$base"
    --build-arg "PIP_EXTRA_ARGS=--no-index --find-links=/tmp/wheels"
    --build-arg "LLEM_VERSION=$version"
    --build-arg "CONTRACT_VERSION=$contract_version"
    --build-arg "VCS_REF=$revision")

build() {  # build NAME TAG [extra docker build args...]
    local name="$1" tag="$2"
    shift 2
    local start=$SECONDS old_id new_id
    old_id="$(docker image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)"
    if ! DOCKER_BUILDKIT=0 docker build "${common[@]}" "$@" -f "images/$name/Dockerfile" -t "$tag" . \
        >"$log_dir/build-$name.log" 2>&1; then
        echo "build-test-images: $tag FAILED; last lines of $log_dir/build-$name.log:" >&2
        tail -n 40 "$log_dir/build-$name.log" >&2
        return 1
    fi
    # Drop the image this build replaced (skipped while a container still uses it).
    new_id="$(docker image inspect --format '{{.Id}}' "$tag")"
    if [ -n "$old_id" ] && [ "$old_id" != "$new_id" ]; then
        docker rmi "$old_id" >/dev/null 2>&1 || true
    fi
    echo "build-test-images: $tag in $((SECONDS - start))s ($(docker image inspect "$tag" --format '{{.Size}}' | awk '{printf "%.0f MB", $1/1e6}'))"
}

suffix="${LLEM_TEST_TAG_SUFFIX:-}"
targets=("$@")
[ "${#targets[@]}" -gt 0 ] || targets=(pytorch vllm trtllm)
for t in "${targets[@]}"; do
    case "$t" in
        pytorch) build pytorch "llenergymeasure/pytorch:test-cpu$suffix" \
                     --build-arg "ENGINE_PIP_SPEC=torch==$torch_version" \
                     --build-arg "ENGINE_VERSION=$torch_version" ;;
        # No engine inside: the label says so rather than claiming the pinned version.
        vllm)    build vllm "llenergymeasure/vllm:test-harness$suffix" \
                     --build-arg ENGINE_CHECK=0 --build-arg ENGINE_VERSION=none ;;
        trtllm)  build trtllm "llenergymeasure/trtllm:test-harness$suffix" \
                     --build-arg ENGINE_CHECK=0 --build-arg ENGINE_VERSION=none ;;
        *) echo "build-test-images: unknown image $t" >&2; exit 2 ;;
    esac
done
