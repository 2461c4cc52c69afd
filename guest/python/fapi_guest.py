"""fapi_guest for Python: protected HTTP requests through fapi-host, for plugins built with componentize-py.

A thin layer over the bindings that componentize-py generates from ``wit/fapi.wit`` (world
``openenergy:fapi/plugin``): the host holds the mTLS key and the tokens, applies its egress policy and
sends the request; the plugin only ever sees the response.

    import fapi_guest

    response = fapi_guest.get(url).raise_for_status()
    print(response.status, response.interaction_id)
    rows = response.json()            # or .text(), .content(), .iter_lines(), .read(n)

Every ``fetch-error`` of the WIT is raised as a subclass of ``FapiError`` (``Denied``, ``InvalidRequest``,
``Timeout``, ``TooLarge``, ``Unreachable``, ``TokenUnavailable``, ``LimitExceeded``, ``BodyInterrupted``);
``raise_for_status()`` raises ``HTTPStatusError``. Pure standard library besides the generated bindings.
"""

import json as _json

from componentize_py_types import Err
from wit_world.imports import environment as _environment
from wit_world.imports import fapi_fetch as _wit

__all__ = [
    "BodyInterrupted",
    "Denied",
    "FapiError",
    "HTTPStatusError",
    "InvalidRequest",
    "LimitExceeded",
    "Response",
    "Timeout",
    "TokenUnavailable",
    "TooLarge",
    "Unreachable",
    "argv",
    "get",
    "post",
    "request",
]

#: Bytes asked of the host per read by ``iter_chunks`` / ``iter_lines`` (the host allows up to 1 MiB).
READ_CHUNK = 64 * 1024


class FapiError(Exception):
    """A request through the host failed (a ``fetch-error`` of the WIT, or an HTTP status)."""


class Denied(FapiError):
    """The host's egress policy refused the request; the message names the setting that would allow it."""


class InvalidRequest(FapiError):
    """Malformed request: bad URL, method or header (credential headers are refused: the host sets them)."""


class Timeout(FapiError):
    """No response head (or next body chunk) arrived in time."""


class TooLarge(FapiError):
    """A body is larger than the host's limit (``limit``, in bytes)."""

    def __init__(self, limit):
        super().__init__(f"body larger than the host's limit of {limit} bytes")
        self.limit = limit


class Unreachable(FapiError):
    """The server could not be reached, or TLS with it failed."""


class TokenUnavailable(FapiError):
    """The host has no token to send: the authorization server refused or failed (``code``, ``description``)."""

    def __init__(self, code, description):
        text = f"no token: {code}" + (f": {description}" if description else "")
        super().__init__(text)
        self.code = code
        self.description = description


class LimitExceeded(FapiError):
    """A per-plugin limit of the host was reached (requests in flight, requests per run)."""


class BodyInterrupted(FapiError):
    """The response body broke off (connection reset, truncated body)."""


class HTTPStatusError(FapiError):
    """Raised by ``Response.raise_for_status()`` for a status that is not 2xx."""

    def __init__(self, response):
        super().__init__(f"HTTP status {response.status} (interaction id {response.interaction_id})")
        self.response = response


def _error(err):
    """The Python exception for a WIT ``fetch-error`` value."""
    value = getattr(err, "value", None)
    if isinstance(err, _wit.FetchError_Denied):
        return Denied(value)
    if isinstance(err, _wit.FetchError_InvalidRequest):
        return InvalidRequest(value)
    if isinstance(err, _wit.FetchError_Timeout):
        return Timeout("timed out")
    if isinstance(err, _wit.FetchError_TooLarge):
        return TooLarge(value)
    if isinstance(err, _wit.FetchError_Unreachable):
        return Unreachable(value)
    if isinstance(err, _wit.FetchError_TokenUnavailable):
        return TokenUnavailable(value.code, value.description)
    if isinstance(err, _wit.FetchError_LimitExceeded):
        return LimitExceeded(value)
    if isinstance(err, _wit.FetchError_BodyInterrupted):
        return BodyInterrupted(value)
    return FapiError(repr(err))


class Response:
    """A response from the host. The body is read once: whole (``content``, ``text``, ``json``) or streamed
    (``read``, ``iter_chunks``, ``iter_lines``). ``close()`` (or ``with``) releases the connection early."""

    def __init__(self, raw):
        self.status = raw.status
        #: ``[(name, value_bytes), ...]`` as the server sent them.
        self.headers = [(h.name, h.value) for h in raw.headers]
        #: The ``x-fapi-interaction-id`` the host sent with the request.
        self.interaction_id = raw.interaction_id
        self._body = raw.body

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def close(self):
        """Release the body (and the connection) now."""
        if self._body is not None:
            self._body.__exit__(None, None, None)
            self._body = None

    @property
    def ok(self):
        return 200 <= self.status < 300

    def header(self, name):
        """The first value of header ``name`` (case-insensitive) as text, or ``None``."""
        name = name.lower()
        for n, v in self.headers:
            if n.lower() == name:
                return v.decode("latin-1")
        return None

    def raise_for_status(self):
        """Raise ``HTTPStatusError`` unless the status is 2xx; return the response for chaining.
        The body of a response that raises is released first: it would otherwise hold one of the
        host's places for requests in flight until it is collected."""
        if not self.ok:
            self.close()
            raise HTTPStatusError(self)
        return self

    def read(self, max_bytes=READ_CHUNK):
        """Up to ``max_bytes`` of the body (at most 1 MiB); ``b""`` at the end."""
        if self._body is None:
            return b""
        try:
            return self._body.read(max_bytes)
        except Err as e:
            raise _error(e.value) from None

    def iter_chunks(self, size=READ_CHUNK):
        """The body in chunks of at most ``size`` bytes, streamed: bounded memory for any size."""
        while True:
            chunk = self.read(size)
            if not chunk:
                self.close()
                return
            yield chunk

    def iter_lines(self, encoding="utf-8"):
        """The body's lines as text without their line ending, streamed."""
        rest = b""
        for chunk in self.iter_chunks():
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()
            for line in lines:
                yield line.rstrip(b"\r").decode(encoding)
        if rest:
            yield rest.rstrip(b"\r").decode(encoding)

    def content(self):
        """The whole (remaining) body as bytes, up to the host's limit."""
        if self._body is None:
            return b""
        try:
            data = self._body.read_all()
        except Err as e:
            raise _error(e.value) from None
        self.close()
        return data

    def text(self, encoding="utf-8"):
        """The whole body decoded as text."""
        return self.content().decode(encoding)

    def json(self):
        """The whole body parsed as JSON."""
        return _json.loads(self.content())


def request(method, url, headers=None, body=None, timeout_ms=None):
    """Send a request through the host. ``headers``: a dict or ``[(name, value)]``; ``body``: bytes or str.
    Raises a ``FapiError`` subclass when the host could not get a response."""
    pairs = headers.items() if isinstance(headers, dict) else (headers or [])
    wit_headers = [
        _wit.Header(name=n, value=v.encode("latin-1") if isinstance(v, str) else bytes(v))
        for n, v in pairs
    ]
    if isinstance(body, str):
        body = body.encode("utf-8")
    req = _wit.Request(method=method, url=url, headers=wit_headers, body=body, timeout_ms=timeout_ms)
    try:
        return Response(_wit.fetch(req))
    except Err as e:
        raise _error(e.value) from None


def get(url, headers=None, timeout_ms=None):
    """``GET url`` through the host."""
    return request("GET", url, headers=headers, timeout_ms=timeout_ms)


def post(url, body, headers=None, timeout_ms=None):
    """``POST url`` with ``body`` through the host."""
    return request("POST", url, headers=headers, body=body, timeout_ms=timeout_ms)


def argv():
    """The plugin's arguments as ``fapi-host run`` passes them (``argv[0]`` is the component's name).

    Use this rather than ``sys.argv``: the interpreter is initialised when the component is built."""
    return list(_environment.get_arguments())
