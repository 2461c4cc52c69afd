#!/usr/bin/env bash
# Run every fuzz target for a short while (CI's smoke run) and print the executions of each.
#   fuzz/smoke.sh [SECONDS]     (default 30 per target; needs `cargo install cargo-fuzz`)
# A longer run of one target: `cd fuzz && cargo fuzz run -s none policy_url -- -max_total_time=3600`.
# A crash stops the run: its input is in fuzz/artifacts/<target>/, replayed with
# `cargo fuzz run -s none <target> <file>` and shown with `cargo fuzz fmt -s none <target> <file>`.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-30}"
# Without a sanitizer (-s none): the targets are safe Rust, and coverage guidance is what matters.
cargo fuzz build -s none
total=0
for target in $(cargo fuzz list); do
    log="$(mktemp)"
    if ! cargo fuzz run -s none "$target" -- -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
        tail -40 "$log"
        echo "fuzz: $target FAILED; the input is in fuzz/artifacts/$target/" >&2
        exit 1
    fi
    runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
    echo "fuzz: $target: ${runs:-?} executions in ${seconds}s, no failure"
    total=$((total + ${runs:-0}))
    rm -f "$log"
done
echo "fuzz: all targets: $total executions"
