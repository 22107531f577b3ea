# On the GPU machine, from the checkout root: one llem study (local runner), results tarred to $OUT.
# Usage: bash call-study.sh STUDY.yaml TAG
set -o pipefail
source benchmarks/h200/env.sh
rm -rf /tmp/llem-results
timeout ${STUDY_TIMEOUT:-560} bash -c "$(declare -f llem); llem run $1 --runner local" > $OUT/$2.log 2>&1
echo "llem rc=$?"
tar czf $OUT/$2.tgz -C /tmp llem-results 2>/dev/null
grep -vE "^\s*$" $OUT/$2.log | grep -vE "INFO|WARNING .*(compilation|cuda graph)" | tail -40
