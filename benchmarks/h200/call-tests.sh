# On the GPU machine, from the checkout root, after the last stage.sh: install, versions, the
# real-engine tests. Writes into $OUT.
set -o pipefail
bash /tmp/stage/_scripts/install.sh vllm zeus 2>&1 | tail -2 || exit 1
source .wt10/benchmarks/h200/env.sh
nvidia-smi --query-gpu=name,driver_version,power.limit,memory.total,persistence_mode --format=csv > $OUT/nvidia-smi.txt
python3 -c "import vllm, torch, transformers, triton; print('vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__, 'triton', triton.__version__)" 2>/dev/null | tee $OUT/versions.txt
cd .wt10 && LLEM_REAL_OBS=$OUT/obs.json timeout ${TEST_TIMEOUT:-450} python3 -m pytest -p no:warnings -p no:cacheprovider -q -rA --durations=0 \
  tests/harness/backends/test_vllm_real.py --junitxml=$OUT/real.xml > $OUT/real.log 2>&1
echo "pytest rc=$?"; grep -E "PASSED|FAILED|ERROR|passed|failed|^E  " $OUT/real.log | tail -60
