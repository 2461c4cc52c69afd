#!/usr/bin/env bash
# User-space instructions per request of each per-request client, counted by valgrind's callgrind
# on the client's own thread (`fapi-bench loop`), as a ratio to plain reqwest mTLS.
#
# Each client runs twice, with N1 and N2 requests; (Ir(N2) - Ir(N1)) / (N2 - N1) takes out the
# set-up, warm-up and exit. Instruction counts do not move with the machine's load, unlike times.
#
#   bench/scripts/instructions.sh [N1 N2 [CLIENT...]]     (default: 300 1300 plain plain-headers fapi fetch http)
set -euo pipefail
n1=${1:-300}
n2=${2:-1300}
shift 2 || true
clients=("$@")
[ ${#clients[@]} -gt 0 ] || clients=(plain plain-headers fapi fetch http)
root=$(cd "$(dirname "$0")/../.." && pwd)
bin="$root/target/release/fapi-bench"
[ -x "$bin" ] || { echo "build first: cargo build --release -p fapi-bench" >&2; exit 2; }
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)" >&2; exit 2; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# The client thread's instruction count: the callgrind file of the thread that ran profile::one.
count() {
  local tag=$1 n=$2
  valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$out/$tag.$n.%p" \
    "$bin" loop "$tag" --requests "$n" >/dev/null 2>"$out/$tag.$n.log"
  local f
  f=$(grep -l "profile::one" "$out/$tag.$n".*-* | head -1)
  grep -E '^summary:' "$f" | awk '{print $2}'
}
# Fill the compilation cache outside the counts (twice: wasmtime writes it from a background
# thread, which a short run may not wait for).
"$bin" loop fetch --requests 10 >/dev/null
sleep 1
"$bin" loop http --requests 10 >/dev/null
echo "| client | instructions per request | ratio to plain reqwest |"
echo "|---|---|---|"
base=
for c in "${clients[@]}"; do
  a=$(count "$c" "$n1")
  b=$(count "$c" "$n2")
  if [ "$b" -le "$a" ]; then
    echo "$c: $n2 requests counted fewer instructions ($b) than $n1 ($a): a one-off cost (compilation, a new connection) fell into the shorter run; run again" >&2
    exit 1
  fi
  per=$(( (b - a) / (n2 - n1) ))
  [ -n "$base" ] || base=$per
  printf '| %s | %d | %s |\n' "$c" "$per" "$(awk -v p="$per" -v b="$base" 'BEGIN{printf "%.3f", p/b}')"
done
