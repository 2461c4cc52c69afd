"""The reference Python client (ib1-openenergy-support's FAPISession) fetching N items
sequentially over one keep-alive connection, as a baseline for `fapi-bench batch` and
`fapi-bench compare`.

Usage: python fapisession_items.py FEDERATION_JSON N [PATH_TEMPLATE]
PATH_TEMPLATE is the data provider's path of item {i} (default: /items/{i}, a small JSON item).
Prints one JSON line: {"items": N, "seconds": S, "cpu_seconds": C, "bytes": B}: the wall time and
the interpreter's CPU time (time.process_time()) of the timed loop.
Needs: pip install 'ib1-openenergy-support==0.2.17' 'urllib3<2'  (FAPISession uses urllib3 1.x's
Retry(method_whitelist=...)). The federation's CA is passed with REQUESTS_CA_BUNDLE.
"""
import json
import logging
import os
import sys
import time

logging.disable(logging.WARNING)


def main():
    info = json.load(open(sys.argv[1]))
    n = int(sys.argv[2])
    template = sys.argv[3] if len(sys.argv) > 3 else "/items/{i}"
    os.environ["REQUESTS_CA_BUNDLE"] = info["ca_bundle"]
    import requests
    from ib1.openenergy.support import FAPISession, OpenIDConfiguration, build

    # The reference client ignores mtls_endpoint_aliases and requires authorization_endpoint, so
    # it cannot use a strict RFC 8705 discovery document as is: hand it the document with the
    # aliases promoted to the top level (what the real directory's clients end up configuring).
    doc = requests.get(
        info["issuer_url"] + "/.well-known/openid-configuration",
        cert=(info["certificate"], info["private_key"]),
    ).json()
    doc.update(doc.pop("mtls_endpoint_aliases", {}))
    doc.setdefault("authorization_endpoint", info["issuer_url"] + "/authorize")
    known = OpenIDConfiguration.__init__.__code__.co_varnames
    config = build(cls=OpenIDConfiguration, d={k: v for k, v in doc.items() if k in known})

    session = FAPISession(
        client_id=info["client_id"],
        issuer_url=info["issuer_url"],
        requested_scopes=info["requested_scopes"],
        private_key=info["private_key"],
        certificate=info["certificate"],
        openid_configuration=config,
    )
    origin = info["data_url"].rsplit("/", 1)[0]
    # First call acquires the token; not timed.
    r = session.session.get(origin + template.format(i=0))
    r.raise_for_status()
    t0 = time.perf_counter()
    c0 = time.process_time()
    total = 0
    for i in range(n):
        r = session.session.get(origin + template.format(i=i))
        r.raise_for_status()
        total += len(r.content)
    seconds = time.perf_counter() - t0
    cpu_seconds = time.process_time() - c0
    print(json.dumps({"items": n, "seconds": seconds, "cpu_seconds": cpu_seconds, "bytes": total}))


if __name__ == "__main__":
    main()
