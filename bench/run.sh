#!/usr/bin/env bash
# Load benchmark, side by side with nginx and haproxy. See bench/README.md for the latest table.
#   bench/run.sh            full run (about 20 minutes plus the builds), writes the table into bench/README.md
#   bench/run.sh --quick    smoke run (a few seconds per target), prints the table only
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for tool in nginx:nginx-light haproxy:haproxy wrk:wrk h2load:nghttp2-client taskset:util-linux; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool#*:}")
done
if [[ " $* " != *" --quick "* ]] && ! command -v valgrind >/dev/null 2>&1; then need+=(valgrind); fi
if ((${#need[@]})); then
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
fi
# nginx's Debian package starts a daemon on port 80: the benchmark runs its own.
if command -v service >/dev/null 2>&1; then service nginx stop >/dev/null 2>&1 || true; fi

# 10,000 idle client connections plus upstream sockets, and haproxy reserves 2 per maxconn.
ulimit -n 200000 2>/dev/null || ulimit -n 65536 2>/dev/null || true

if [[ " $* " != *" --quick "* ]]; then
    # For the allocation count: valgrind's dhat sees the system allocator, not mimalloc.
    cargo build --release -q -p axum-reverse-proxy-server --no-default-features
    cp target/release/axum-reverse-proxy target/release/axum-reverse-proxy-sysalloc
fi
cargo build --release -q -p axum-reverse-proxy-server -p bench-tools
exec python3 bench/run.py "$@"
