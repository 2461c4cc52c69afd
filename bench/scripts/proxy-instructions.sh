#!/usr/bin/env bash
# User-space instructions per proxied request of `fapi-host proxy` and of the bare hyper + reqwest
# forwarder (`fapi-bench bare-proxy`, the stack's floor), counted by valgrind's callgrind over the
# whole process: `fapi-bench proxy-load` at concurrency 1 with its children under callgrind
# (FAPI_BENCH_CHILD_WRAPPER), twice, with N1 and N2 requests; (Ir(N2) - Ir(N1)) / (N2 - N1) takes
# out start-up, warm-up and exit. Instruction counts do not move with the machine's load.
#
#   bench/scripts/proxy-instructions.sh [N1 N2]      (default: 200 1200)
#
# The callgrind files are kept in $FAPI_BENCH_CALLGRIND_DIR if set (callgrind_annotate them to see
# where the instructions go), else removed.
set -euo pipefail
n1=${1:-200}
n2=${2:-1200}
root=$(cd "$(dirname "$0")/../.." && pwd)
bin="${CARGO_TARGET_DIR:-$root/target}/release/fapi-bench"
[ -x "$bin" ] || { echo "build first: cargo build --release -p fapi-bench -p fapi-host" >&2; exit 2; }
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)" >&2; exit 2; }
out=${FAPI_BENCH_CALLGRIND_DIR:-}
if [ -z "$out" ]; then
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
fi
mkdir -p "$out"
# Ir of the process whose command line matches $2, in run $1's files (summed over threads).
ir() {
  local n=$1 pattern=$2 f
  f=$(grep -l -E "^cmd: .*$pattern" "$out/cg.$n".* | head -1)
  [ -n "$f" ] || { echo "no callgrind file for $pattern in run $n" >&2; exit 1; }
  grep -E '^(summary|totals):' "$f" | head -1 | awk '{print $2}'
}
for n in "$n1" "$n2"; do
  FAPI_BENCH_CHILD_WRAPPER="valgrind --tool=callgrind --callgrind-out-file=$out/cg.$n.%p" \
    "$bin" proxy-load --concurrency 1 --requests "$n" >"$out/run.$n.log" 2>&1
done
printf '| process | instructions per request |\n|---|---|\n'
for which in "fapi-host .*proxy" "fapi-bench bare-proxy"; do
  a=$(ir "$n1" "$which")
  b=$(ir "$n2" "$which")
  printf '| %s | %d |\n' "$which" $(( (b - a) / (n2 - n1) ))
done
