#!/usr/bin/env sh
# Build a Python plugin into a WebAssembly component for `fapi-host run`.
#
#   guest/python/build.sh [APP [OUT.wasm]]      default: csv_summary -> csv-summary-py.wasm
#
# APP is a module in guest/python/examples/ (without .py) that defines `class Run(wit_world.exports.Run)` (`from wit_world import exports`).
# Needs componentize-py (pip install -r guest/python/requirements.txt); works offline.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
app=${1:-csv_summary}
out=${2:-csv-summary-py.wasm}
exec componentize-py -d "$here/../../wit" -w plugin componentize \
    -p "$here" -p "$here/examples" "$app" -o "$out"
