# On the GPU machine, from the checkout root, after the last stage.sh: install, versions, the
# real-engine tests. Writes into $OUT.
set -o pipefail
bash benchmarks/h200/install.sh || exit 1
source benchmarks/h200/env.sh
LLEM_REAL_OBS=$OUT/obs.json timeout ${TEST_TIMEOUT:-450} python3 -m pytest -p no:warnings -p no:cacheprovider -q -rA --durations=0 \
  tests/harness/backends/test_vllm_real.py --junitxml=$OUT/real.xml > $OUT/real.log 2>&1
echo "pytest rc=$?"; grep -E "PASSED|FAILED|ERROR|passed|failed|^E  " $OUT/real.log | tail -60
