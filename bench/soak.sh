#!/usr/bin/env bash
# Soak test: mixed load through the release server while its upstreams churn (etcd
# discovery, drained restarts, crashes, configuration reloads) and faults are injected.
# Fails on any unexpected client-visible error or RSS growth beyond 10 % after warm-up.
# See "Soak" in bench/README.md.
#   bench/soak.sh            10 minutes
#   bench/soak.sh 120        2 minutes (any number of seconds, at least 10)
#   bench/soak.sh --short    45-second smoke check
# Extra arguments after the duration go to bench-soak (--seed N, --scale X, --warmup S).
# The work directory (config, logs, metrics, summary) is printed and kept; SOAK_DIR sets it.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=600
if (($#)); then
    case "$1" in
        --short) seconds=45; shift ;;
        [0-9]*) seconds=$1; shift ;;
    esac
fi

if ! command -v etcd >/dev/null 2>&1; then
    apt-get update -qq
    apt-get install -y -qq etcd-server >/dev/null
fi

cargo build --release -q -p axum-reverse-proxy-server -p bench-tools --bin axum-reverse-proxy --bin bench-soak
release="${CARGO_TARGET_DIR:-target}/release"

workdir="${SOAK_DIR:-$(mktemp -d /tmp/soak.XXXXXX)}"
mkdir -p "$workdir"
echo "soak: ${seconds} s, work directory $workdir"

# bench-soak leads its own process group (etcd, the upstreams and the proxy are in it):
# on exit or Ctrl-C the whole group goes, whatever state the runner is in.
runner=""
cleanup() {
    if [[ -n "$runner" ]] && kill -0 "$runner" 2>/dev/null; then
        kill -TERM -- "-$runner" 2>/dev/null || true
        sleep 1
        kill -KILL -- "-$runner" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

setsid "$release/bench-soak" run \
    --proxy-bin "$release/axum-reverse-proxy" \
    --workdir "$workdir" \
    --seconds "$seconds" "$@" &
runner=$!
# Bounded: the runner stops its load at the deadline and gives up waiting 20 s later.
status=0
wait "$runner" || status=$?
runner=""
exit "$status"
