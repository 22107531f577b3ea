# Sourced on the GPU machine from the checkout root after the last stage.sh (see
# docs/gpu-results.md): the staged vLLM wheel set in /tmp/site, then this checkout's three
# distributions from source.
export PYTHONPATH=/tmp/site:$PWD/contract:$PWD/orchestrator:$PWD/harness
export VLLM_USE_FLASHINFER_SAMPLER=0 HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
export PYTHONUNBUFFERED=1
llem() { python3 -c 'from llenergymeasure.cli import entrypoint; entrypoint()' "$@"; }
