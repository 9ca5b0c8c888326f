"""The load client of scripts/zero-downtime-check.sh (standard library only).

    python3 zero_downtime_client.py HOST PORT STOP_FILE OUT

A few threads, a new connection per request, paced; runs until STOP_FILE
exists (or a time or count bound is hit). Every failed connect, reset,
timeout, non-200 or unreadable body counts as a failure. Writes
"key value" lines to OUT: ok, failed, last_master, last_generation
(of the latest response), ended (stop, time_bound or count_bound) and
up to five "reason N TEXT" lines.
"""
import json
import os
import socket
import sys
import threading
import time

host, port, stop_file, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
MAX_SECS, MAX_REQUESTS, THREADS, PACE = 50.0, 25000, 4, 0.002

lock = threading.Lock()
count = {"ok": 0, "failed": 0}
reasons = {}
last = [0.0, None]
ended = ["stop"]
deadline = time.monotonic() + MAX_SECS


def request():
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: check\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    if not status.startswith(b"HTTP/1.1 200 "):
        raise ValueError("status line %r" % status[:60])
    return json.loads(body)


def worker():
    while not os.path.exists(stop_file):
        with lock:
            if count["ok"] + count["failed"] >= MAX_REQUESTS:
                ended[0] = "count bound"
                return
        if time.monotonic() >= deadline:
            ended[0] = "time bound"
            return
        try:
            j = request()
            now = time.monotonic()
            with lock:
                count["ok"] += 1
                if now >= last[0]:
                    last[0], last[1] = now, j
        except Exception as e:  # every failure counts, whatever it is
            key = "%s: %s" % (type(e).__name__, str(e)[:100])
            with lock:
                count["failed"] += 1
                reasons[key] = reasons.get(key, 0) + 1
        time.sleep(PACE)


threads = [threading.Thread(target=worker) for _ in range(THREADS)]
for t in threads:
    t.start()
for t in threads:
    t.join()
j = last[1] or {}
with open(out, "w") as f:
    f.write("ok %d\n" % count["ok"])
    f.write("failed %d\n" % count["failed"])
    f.write("last_master %s\n" % j.get("master_pid", "none"))
    f.write("last_generation %s\n" % j.get("generation", "none"))
    f.write("ended %s\n" % ended[0].replace(" ", "_"))
    for k, n in sorted(reasons.items(), key=lambda kv: -kv[1])[:5]:
        f.write("reason %d %s\n" % (n, k.replace("\n", " ")))
