# On the GPU machine, from the checkout root, in the call that stages the last chunk:
# install the staged vLLM set (and zeus) into /tmp/site, plus the few wheels the orchestrator
# needs that neither the machine nor the vLLM set has (carried as .devwhl/: docker), and
# record the versions in $OUT.
set -o pipefail
bash /tmp/stage/_scripts/install.sh vllm zeus 2>&1 | tail -2 || exit 1
if compgen -G ".devwhl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .devwhl/*.whl || exit 1
fi
source benchmarks/h200/env.sh
nvidia-smi --query-gpu=name,driver_version,power.limit,memory.total,persistence_mode --format=csv > "$OUT/nvidia-smi.txt"
python3 -c "import vllm, torch, transformers, triton, pydantic, aiohttp; print('vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__, 'triton', triton.__version__, 'pydantic', pydantic.__version__, 'aiohttp', aiohttp.__version__)" 2>/dev/null | tee "$OUT/versions.txt"
