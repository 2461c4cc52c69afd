"""csv-summary URL...: the Python twin of guest/examples/csv-summary.

Fetches the provider's postcode consumption CSV through fapi-host and prints the number of postcodes,
total meters, total kWh, the mean of the per-postcode means and the top 5 postcodes by total
consumption, in the same format as the Rust example, with the same CSV rules (RFC 4180 quoting, one
record per line, a leading BOM dropped; rows with negative or non-finite numbers skipped as malformed:
see guest/examples/csv-summary/src/summary.rs). The body is parsed line by line as it streams in, so its
size does not matter. Standard library only.

Build: ``../build.sh`` (see guest/README.md); run: ``fapi-host run csv-summary-py.wasm -- URL``.
"""

import heapq
import math
import re
import sys

from componentize_py_types import Err
from wit_world import exports

import fapi_guest

TOP = 5
U64_MAX = 2**64 - 1
BLANK = " \t"
# The number rules of the Rust example's summary.rs (ASCII digits; no sign, so no negative numbers).
METERS = re.compile(r"[0-9]+")
KWH = re.compile(r"([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")


def split_line(line):
    """The fields of one CSV line, or ``None`` if it is malformed: the rules of the Rust example's
    summary.rs (RFC 4180 quoting; a quoted field cannot span lines)."""
    if '"' not in line:  # the common case, with the same result
        return [field.strip(BLANK) for field in line.split(",")]
    fields = []
    i, n = 0, len(line)
    while True:
        j = i
        while j < n and line[j] in BLANK:
            j += 1
        if j < n and line[j] == '"':
            parts = []
            j += 1
            while True:
                end = line.find('"', j)
                if end < 0:
                    return None  # still open at the end of the line
                parts.append(line[j:end])
                j = end + 1
                if j < n and line[j] == '"':
                    parts.append('"')
                    j += 1
                else:
                    break
            field = "".join(parts)
            while j < n and line[j] in BLANK:
                j += 1
        else:
            j = line.find(",", i)
            if j < 0:
                j = n
            field = line[i:j].strip(BLANK)
            if '"' in field:
                return None
        fields.append(field)
        if j == n:
            return fields
        if line[j] != ",":
            return None
        i = j + 1


def kwh(s):
    """A kWh figure (finite), or ``None``."""
    if not KWH.fullmatch(s):
        return None
    x = float(s)
    return x if math.isfinite(x) else None


def meters_of(s):
    """A meter count (at most 2**64 - 1), or ``None``."""
    if not METERS.fullmatch(s):
        return None
    try:
        m = int(s)
    except ValueError:  # more digits than int() converts
        return None
    return m if m <= U64_MAX else None


def summarise(lines):
    """The summary text of the CSV ``lines`` (an iterator of text lines, header first)."""
    lines = iter(lines)
    header_line = next(lines, None)
    if header_line is None:
        raise ValueError("empty body: expected a CSV header")
    header_line = header_line.rstrip("\r")
    if header_line.startswith("\ufeff"):
        header_line = header_line[1:]
    header = split_line(header_line)
    if header is None:
        raise ValueError("the CSV header line is malformed (a stray or unclosed quote)")
    col = {}
    for name in ("postcode", "num_meters", "total_consumption_kwh", "mean_consumption_kwh"):
        if name not in header:
            raise ValueError(f"the CSV header has no `{name}` column (columns: {', '.join(header)})")
        col[name] = header.index(name)
    last = max(col.values())
    postcodes = meters = skipped = 0
    total_kwh = sum_of_means = 0.0
    top = []  # min-heap of (total_kwh, -order, postcode, meters): the TOP largest, first seen wins ties
    for line in lines:
        line = line.rstrip("\r")
        if not line.strip(BLANK):
            continue
        fields = split_line(line)
        if fields is None or len(fields) <= last:
            skipped += 1
            continue
        postcode = fields[col["postcode"]]
        m = meters_of(fields[col["num_meters"]])
        total = kwh(fields[col["total_consumption_kwh"]])
        mean = kwh(fields[col["mean_consumption_kwh"]])
        if m is None or total is None or mean is None:
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
