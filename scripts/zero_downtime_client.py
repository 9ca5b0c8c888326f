"""The load client of scripts/zero-downtime-check.sh (standard library only).

    python3 zero_downtime_client.py HOST PORT STOP_FILE OUT

A few threads, a new connection per request (upgrader_http), paced;
runs until STOP_FILE exists (or a time or count bound is hit). Every
failed connect, reset, timeout, non-200, wrong Content-Length or
unreadable body counts as a failure. Writes "key value" lines to OUT:
ok, failed, last_master, last_generation (of the latest response),
ended (stop, time_bound or count_bound) and up to five "reason N TEXT"
lines.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import upgrader_http  # noqa: E402 - found through the line above

host, port, stop_file, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
MAX_SECS, MAX_REQUESTS, THREADS, PACE = 50.0, 25000, 4, 0.002

last = [0.0, None]  # the latest response: (time it arrived, its JSON)
deadline = time.monotonic() + MAX_SECS


def request():
    return upgrader_http.get_json(host, port, timeout=5)


def stop(load):
    if os.path.exists(stop_file):
        return "stop"
    if load.ok + load.failed >= MAX_REQUESTS:
        return "count bound"
    if time.monotonic() >= deadline:
        return "time bound"
    return None


def record(j):
    now = time.monotonic()
    if now >= last[0]:
        last[0], last[1] = now, j


load = upgrader_http.Load(THREADS, request, stop, on_ok=record, pace=PACE).run()
j = last[1] or {}
with open(out, "w") as f:
    f.write("ok %d\n" % load.ok)
    f.write("failed %d\n" % load.failed)
    f.write("last_master %s\n" % j.get("master_pid", "none"))
    f.write("last_generation %s\n" % j.get("generation", "none"))
    f.write("ended %s\n" % (load.ended or "stop").replace(" ", "_"))
    for k, n in sorted(load.reasons.items(), key=lambda kv: -kv[1])[:5]:
        f.write("reason %d %s\n" % (n, k.replace("\n", " ")))
