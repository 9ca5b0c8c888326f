"""The one HTTP client of the scripts' Python drivers (standard library only).

bench.py, zero_downtime_client.py and systemd_check_http.py all ask the
same question many times: one GET on a new connection, did a 200 with
the expected body come back? Every server they talk to (upgrader's
built-in worker, the raw loop, gunicorn's sync workers) answers with
`Connection: close`, so a request is: connect, send the head, read until
EOF, split. The body must be exactly Content-Length bytes when the
header is there: a short or long body is a failed request, not a
success with a truncated JSON document.

Also the load loop two of them share: a few threads, each sending
requests back to back until told to stop, every exception counted as a
failure whatever it is.

Import it from a driver next to it:

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import upgrader_http
"""
import collections
import json
import re
import socket
import threading
import time

MAX_RESPONSE = 1 << 20  # more than this is not an answer from our servers

Response = collections.namedtuple("Response", "status reason headers body raw")
Response.__doc__ = """status (int), reason (str), headers (dict, names in
lower case), body (bytes, checked against Content-Length), raw (the
bytes as received)."""

_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([0-9]{3})(?: (.*))?")


class BadResponse(ValueError):
    """The bytes received are not a complete HTTP/1.x response."""


def request_bytes(path="/", host="127.0.0.1", agent=None):
    """The head of a GET, `Connection: close`."""
    head = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n"
    if agent:
        head += f"User-Agent: {agent}\r\n"
    return (head + "Connection: close\r\n\r\n").encode()


def parse(data):
    """A Response from the bytes of a whole response; BadResponse if there
    is no complete head or the body does not match Content-Length."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        raise BadResponse(f"no complete response head in {len(data)} bytes: {data[:60]!r}")
    lines = head.split(b"\r\n")
    m = _STATUS_LINE.fullmatch(lines[0])
    if not m:
        raise BadResponse(f"status line {lines[0][:60]!r}")
    headers = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            raise BadResponse(f"header line {line[:60]!r}")
        headers[name.strip().decode("latin-1").lower()] = value.strip().decode("latin-1")
    length = headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise BadResponse(f"Content-Length {length!r}")
        if int(length) != len(body):
            raise BadResponse(f"body of {len(body)} bytes, Content-Length {length}")
    reason = (m.group(2) or b"").decode("latin-1")
    return Response(int(m.group(1)), reason, headers, body, data)


def get(host, port, path="/", timeout=5.0, agent=None, on_head=None):
    """One GET on a new connection; the Response. Raises OSError (refused,
    reset, timeout: `timeout` bounds the connect and each read) or
    BadResponse. on_head(), if given, is called once the whole head has
    arrived, before the body is read."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(request_bytes(path, host, agent))
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            if on_head and b"\r\n\r\n" in data:
                on_head()
                on_head = None
            if len(data) > MAX_RESPONSE:
                raise BadResponse(f"response over {MAX_RESPONSE} bytes")
    return parse(data)


def get_json(host, port, path="/", timeout=5.0, agent=None, on_head=None):
    """The JSON body of a 200 (any JSON value). Raises as get() does,
    BadResponse for another status, ValueError for a body that is not JSON."""
    r = get(host, port, path, timeout, agent, on_head)
    if r.status != 200:
        raise BadResponse(f"status {r.status} {r.reason}".rstrip())
    return json.loads(r.body)


class Load:
    """`threads` clients, each calling request() back to back until
    stop(load) returns a reason (anything true), pausing `pace` seconds
    between requests. A value request() returns counts as ok and goes to
    on_ok(value); any exception counts as failed. stop and on_ok run under
    the lock, so they may read and update the counts and their own state.

    After run(): ok, failed, reasons (a Counter of "Type: message"),
    first_errors (repr of the first three exceptions), ended (the reason
    the first client stopped for)."""

    def __init__(self, threads, request, stop, on_ok=None, pace=0.0):
        self.threads, self.request, self.stop = threads, request, stop
        self.on_ok, self.pace = on_ok, pace
        self.lock = threading.Lock()
        self.ok = self.failed = 0
        self.reasons = collections.Counter()
        self.first_errors = []
        self.ended = None

    def _client(self):
        while True:
            with self.lock:
                why = self.stop(self)
                if why:
                    self.ended = self.ended or why
                    return
            try:
                value = self.request()
            except Exception as e:  # every failure counts, whatever it is
                with self.lock:
                    self.failed += 1
                    self.reasons["%s: %s" % (type(e).__name__, str(e)[:100])] += 1
                    if len(self.first_errors) < 3:
                        self.first_errors.append(repr(e))
            else:
                with self.lock:
                    self.ok += 1
                    if self.on_ok:
                        self.on_ok(value)
            if self.pace:
                time.sleep(self.pace)

    def run(self):
        ts = [threading.Thread(target=self._client) for _ in range(self.threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return self
