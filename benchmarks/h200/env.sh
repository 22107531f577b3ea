# Sourced on the GPU machine from the checkout root (/work/main there) after install.sh.
# .wt10 holds the branch's orchestrator/harness/tests/benchmarks (see docs/gpu-results.md).
export PYTHONPATH=/tmp/site:$PWD/.wt10/orchestrator:$PWD/.wt10/harness
export VLLM_USE_FLASHINFER_SAMPLER=0 HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
export PYTHONUNBUFFERED=1
llem() { python3 -c 'from llenergymeasure.cli import entrypoint; entrypoint()' "$@"; }
