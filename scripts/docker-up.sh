#!/usr/bin/env bash
# Make sure a Docker engine answers; start a private dockerd if none does.
#
# Idempotent: if `docker info` already works (any DOCKER_HOST), do nothing.
# Otherwise start /usr/sbin/dockerd with no bridge and no iptables (CI boxes and
# sandboxes cannot create them; every build and test container uses --network=none),
# log to $LLEM_DOCKERD_LOG and wait until the daemon answers. Without DOCKER_HOST it
# serves the default socket with the default roots; with DOCKER_HOST=unix:///some.sock
# it serves that socket with private data/exec roots beside it (a second, throwaway
# engine that does not touch the system one).
#
# Env:
#   LLEM_DOCKERD_LOG      log file        (default /tmp/llem-dockerd.log, or beside the socket)
#   LLEM_DOCKERD_WAIT_S   seconds to wait (default 60)
set -euo pipefail

wait_s="${LLEM_DOCKERD_WAIT_S:-60}"
daemon_args=(--bridge=none --iptables=false --ip-masq=false)
log_file="${LLEM_DOCKERD_LOG:-/tmp/llem-dockerd.log}"
case "${DOCKER_HOST:-}" in
    "") ;;
    unix://*)
        socket="${DOCKER_HOST#unix://}"
        root="$(dirname "$socket")/llem-dockerd"
        log_file="${LLEM_DOCKERD_LOG:-$root/dockerd.log}"
        daemon_args+=(-H "$DOCKER_HOST" --data-root "$root/data" --exec-root "$root/exec"
            --pidfile "$root/dockerd.pid")
        ;;
    *) ;;  # a remote engine: only check that it answers
esac

if docker info >/dev/null 2>&1; then
    echo "docker-up: engine already reachable ($(docker version --format '{{.Server.Version}}' 2>/dev/null || echo '?'))"
    exit 0
fi

if [[ "${DOCKER_HOST:-unix://}" != unix://* ]]; then
    echo "docker-up: DOCKER_HOST=$DOCKER_HOST does not answer and is not a local socket" >&2
    exit 1
fi
if ! command -v dockerd >/dev/null 2>&1; then
    echo "docker-up: no Docker engine reachable and no dockerd binary (apt-get install docker.io)" >&2
    exit 1
fi

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
    sudo_cmd=(sudo -n)
fi

[ -z "${root:-}" ] || mkdir -p "$root"
echo "docker-up: starting dockerd (log: $log_file)"
# setsid: the daemon must outlive this script and the make/CI step that ran it.
"${sudo_cmd[@]}" setsid dockerd "${daemon_args[@]}" >"$log_file" 2>&1 </dev/null &

deadline=$((SECONDS + wait_s))
until docker info >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
        echo "docker-up: dockerd did not answer within ${wait_s}s; last log lines:" >&2
        tail -n 30 "$log_file" >&2 || true
        exit 1
    fi
    sleep 0.5
done
echo "docker-up: engine ready ($(docker version --format '{{.Server.Version}}'))"
