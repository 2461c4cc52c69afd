"""csv-summary URL...: the Python twin of guest/examples/csv-summary.

Fetches the provider's postcode consumption CSV through fapi-host and prints the number of postcodes,
total meters, total kWh, the mean of the per-postcode means and the top 5 postcodes by total
consumption, in the same format as the Rust example. The body is parsed line by line as it streams in
(standard library ``csv``), so its size does not matter.

Build: ``../build.sh`` (see guest/README.md); run: ``fapi-host run csv-summary-py.wasm -- URL``.
"""

import csv
import heapq
import sys

from componentize_py_types import Err
from wit_world import exports

import fapi_guest

TOP = 5


def summarise(lines):
    """The summary text of the CSV ``lines`` (an iterator of text lines, header first)."""
    rows = csv.reader(lines)
    header = [name.strip() for name in next(rows, None) or []]
    try:
        col = {name: header.index(name) for name in
               ("postcode", "num_meters", "total_consumption_kwh", "mean_consumption_kwh")}
    except ValueError as e:
        raise ValueError(f"the CSV header lacks a column ({e}): {header!r}") from None
    postcodes = meters = skipped = 0
    total_kwh = sum_of_means = 0.0
    top = []  # min-heap of (total_kwh, -order, postcode, meters): the TOP largest, first seen wins ties
    for fields in rows:
        if not fields or not "".join(fields).strip():
            continue
        try:
            postcode = fields[col["postcode"]].strip()
            m = int(fields[col["num_meters"]])
            total = float(fields[col["total_consumption_kwh"]])
            mean = float(fields[col["mean_consumption_kwh"]])
        except (IndexError, ValueError):
            skipped += 1
            continue
        postcodes += 1
        meters += m
        total_kwh += total
        sum_of_means += mean
        item = (total, -postcodes, postcode, m)
        if len(top) < TOP:
            heapq.heappush(top, item)
        elif item > top[0]:
            heapq.heapreplace(top, item)
    mean_of_means = sum_of_means / postcodes if postcodes else 0.0
    out = [
        f"postcodes:          {postcodes}",
        f"meters:             {meters}",
        f"total kWh:          {total_kwh:.1f}",
        f"mean of means kWh:  {mean_of_means:.1f}",
    ]
    if skipped:
        out.append(f"malformed rows:     {skipped} (skipped)")
    out += ["", f"top {TOP} postcodes by total consumption:",
            f"{'rank':>4}  {'postcode':<10} {'meters':>8} {'total kWh':>16}"]
    for rank, (total, _, postcode, m) in enumerate(sorted(top, reverse=True), 1):
        out.append(f"{rank:>4}  {postcode:<10} {m:>8} {total:>16.1f}")
    return "\n".join(out) + "\n"


def main(args):
    """Summarise each URL in turn; one that fails is reported and the others still summarised."""
    if len(args) < 2:
        print("usage: csv-summary URL...", file=sys.stderr)
        return False
    ok = True
    for url in args[1:]:
        try:
            response = fapi_guest.get(url).raise_for_status()
            summary = summarise(response.iter_lines())
        except (fapi_guest.FapiError, ValueError, UnicodeDecodeError) as e:
            print(f"csv-summary: {url}: {e}", file=sys.stderr)
            ok = False
            continue
        sys.stdout.write(f"interaction id:     {response.interaction_id}\n{summary}")
    return ok


class Run(exports.Run):
    """The ``wasi:cli/run`` export: the plugin's ``main``."""

    def run(self):
        ok = main(fapi_guest.argv())
        sys.stdout.flush()
        sys.stderr.flush()
        if not ok:
            raise Err(None)  # exit status 1
