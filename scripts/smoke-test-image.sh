#!/usr/bin/env bash
# Smoke-test a built backend image before it is pushed (images.yml) or used in tests.
#
#   1. `python3 -m llenergymeasure_harness --help` runs inside the image
#   2. `--version` prints the version the image's label claims
#   3. `--check-config` accepts a minimal config for the image's backend (exit 0, JSON out)
#   4. `--check-config` rejects an invalid one with exit 2
#
# No GPU, no network (--network=none): the config dry-run validates, it does not load a model.
# Usage: scripts/smoke-test-image.sh IMAGE
set -euo pipefail

image="${1:?usage: smoke-test-image.sh IMAGE}"
label() { docker image inspect --format "{{index .Config.Labels \"$1\"}}" "$image"; }
run() { docker run --rm --network=none "$@"; }
fail() { echo "smoke-test: $image: $*" >&2; exit 1; }

backend="$(label io.llenergymeasure.backend)"
version="$(label org.opencontainers.image.version)"
[ -n "$backend" ] || fail "label io.llenergymeasure.backend is missing"
[ -n "$version" ] || fail "label org.opencontainers.image.version is missing"
contract="$(label io.llenergymeasure.contract.version)"
[ -n "$contract" ] || fail "label io.llenergymeasure.contract.version is missing"

run "$image" python3 -m llenergymeasure_harness --help >/dev/null || fail "--help failed"

got="$(run "$image" python3 -m llenergymeasure_harness --version)" || fail "--version failed"
case "$got" in *"$version"*) ;; *) fail "--version printed '$got', label says $version" ;; esac
case "$got" in *"(contract $contract)"*) ;; *) fail "--version printed '$got', label says contract $contract" ;; esac
# The image holds the contract and the harness, never the host: no llem CLI, no Docker SDK.
# (typer and rich may still come with an engine: transformers depends on typer.)
run "$image" python3 -c "import importlib.util as u, sys; bad = [m for m in ('llenergymeasure', 'docker') if u.find_spec(m)]; sys.exit('host packages in the image: ' + ', '.join(bad) if bad else 0)" \
    || fail "the image holds host packages"

config="{\"model\": \"tiny-llama\", \"load_format\": \"dummy\", \"backend\": \"$backend\"}"
resolved="$(run -e "LLEM_CONFIG_JSON=$config" "$image" python3 -m llenergymeasure_harness --check-config)" \
    || fail "--check-config rejected a valid $backend config"
case "$resolved" in *"\"backend\""*"$backend"*) ;; *) fail "--check-config printed no resolved $backend config" ;; esac

set +e
run -e 'LLEM_CONFIG_JSON={"model": "tiny-llama", "no_such_field": 1}' "$image" \
    python3 -m llenergymeasure_harness --check-config >/dev/null 2>&1
rc=$?
set -e
[ "$rc" -eq 2 ] || fail "--check-config on an invalid config exited $rc, expected 2"

echo "smoke-test: $image ($backend, llenergymeasure $version) OK"
