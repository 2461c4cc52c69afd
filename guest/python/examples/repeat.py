"""repeat URL N: GET URL N times through fapi-host, reading each body whole; prints
``{"requests": N, "bytes": B}``. The per-request benchmark of ``fapi-bench lang`` (the Python twin of the
probe's ``repeat``)."""

import json
import sys

from componentize_py_types import Err
from wit_world import exports

import fapi_guest


class Run(exports.Run):
    def run(self):
        args = fapi_guest.argv()
        if len(args) != 3:
            print("usage: repeat URL N", file=sys.stderr)
            raise Err(None)
        url, n = args[1], int(args[2])
        total = 0
        try:
            for _ in range(n):
                total += len(fapi_guest.get(url).content())
        except fapi_guest.FapiError as e:
            print(f"repeat: {url}: {e}", file=sys.stderr)
            raise Err(None) from None
        print(json.dumps({"requests": n, "bytes": total}))
        sys.stdout.flush()
