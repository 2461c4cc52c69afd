#!/usr/bin/env bash
# The wall time of the README's test command on fresh clones of REV..., each with its interop tools
# installed and every FAPI_REQUIRE_* set, all sharing one target directory whose dependencies are
# built (so each clone rebuilds only the workspace's own crates and guests): the build
# (`--no-run`), then the run. Usage: bench/scripts/test-suite-time.sh REV [REV...]
# (CARGO_TARGET_DIR: the shared target directory, default target/suite-time). Run it with nothing
# else busy; a first clone warms the target directory, so give a warm-up REV first when it is cold.
set -u
here="$(cd "$(dirname "$0")/../.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$here/target/suite-time}" CARGO_INCREMENTAL=0 CARGO_TERM_COLOR=never
export FAPI_REQUIRE_INTEROP=1 FAPI_REQUIRE_OPENSSL=1 FAPI_REQUIRE_LANG_PLUGINS=1 FAPI_REQUIRE_PKCS11=1
export FAPI_REQUIRE_SLURM=1 FAPI_REQUIRE_K8S_VALIDATE=1
for rev in "$@"; do
    dir="$(mktemp -d)"
    git clone -q "$here" "$dir/src" && git -C "$dir/src" checkout -q "$(git -C "$here" rev-parse "$rev")"
    npm ci --prefix "$dir/src/tests/oidc" --no-audit --no-fund >/dev/null 2>&1
    npm ci --prefix "$dir/src/guest/js" --no-audit --no-fund >/dev/null 2>&1
    cd "$dir/src" || exit 1
    s=$SECONDS; cargo test --workspace --locked --no-run >"$dir/build.log" 2>&1; b=$((SECONDS - s))
    s=$SECONDS; cargo test --workspace --locked >"$dir/run.log" 2>&1; rc=$?; r=$((SECONDS - s))
    bins=$(grep -c "^     Running " "$dir/run.log")
    passed=$(grep -o "[0-9]* passed" "$dir/run.log" | awk '{s += $1} END {print s}')
    echo "$rev: build ${b} s, run ${r} s (status $rc), $bins test binaries, $passed tests passed"
    cd "$here" && rm -rf "$dir"
done
