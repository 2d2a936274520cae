#!/usr/bin/env bash
# Build every fuzz target, run each for SECONDS (default 60) from its committed seeds,
# print a summary, and exit 1 if any target found a crash (its input is saved in
# fuzz/artifacts/TARGET/). Needs the nightly toolchain and cargo-fuzz.
#
#   fuzz/run.sh [SECONDS]
#
# New inputs found go to fuzz/work/TARGET/ (ignored by git), never into the seeds.
set -uo pipefail
cd "$(dirname "$0")"
seconds="${1:-60}"

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz (and the nightly toolchain) are needed: cargo install cargo-fuzz" >&2
    exit 2
fi

# Our code forbids `unsafe`: AddressSanitizer would mostly slow the runs down. Debug
# assertions and overflow checks stay on (cargo-fuzz's default).
flags=(--sanitizer none)
if [ -n "${CARGO_TARGET_DIR:-}" ]; then
    flags+=(--target-dir "$CARGO_TARGET_DIR")
fi

cargo +nightly fuzz build "${flags[@]}" || exit 2

failed=()
summary=()
for target in $(cargo +nightly fuzz list); do
    mkdir -p "work/$target"
    log="work/$target.log"
    echo "== $target: ${seconds}s"
    cargo +nightly fuzz run "${flags[@]}" "$target" "work/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1
    rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    cov=$(grep -o 'cov: [0-9]* ft: [0-9]*' "$log" | tail -n 1)
    if [ "$rc" -ne 0 ]; then
        failed+=("$target")
        tail -n 40 "$log"
        summary+=("$target: FAILED (exit $rc), ${execs:-?} execs, ${cov:-no coverage line}; log: fuzz/$log")
    else
        summary+=("$target: ok, ${execs:-?} execs, ${cov:-no coverage line}")
    fi
done

echo
printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -ne 0 ]; then
    echo "crashes in: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
