"""HTTP client for systemd-check.sh (stdlib only), run on the host against
the container's socket on 127.0.0.1.

get PORT PATH TIMEOUT                 print the JSON body of a 200, exit 1 otherwise
slow PORT PATH HEADFILE OUT TIMEOUT   as get, but touch HEADFILE once the head arrived;
                                      write "rc=0|1" and the body (or error) to OUT
load PORT STOPFILE MAXSECS N OUT      N clients loop until STOPFILE exists (<= MAXSECS);
                                      write "ok=.. failed=.. masters=pid:count,.. errors=.." to OUT

A body that does not match its Content-Length (a master killed mid-response)
is an error, like a refused connection or a status other than 200.
"""
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import upgrader_http  # noqa: E402 - found through the line above

HOST = "127.0.0.1"


def request(port, path, timeout, headfile=None):
    def touch():
        open(headfile, "w").close()
    return upgrader_http.get_json(HOST, port, path, timeout, on_head=touch if headfile else None)


def main():
    cmd, port = sys.argv[1], int(sys.argv[2])
    if cmd == "get":
        try:
            print(json.dumps(request(port, sys.argv[3], float(sys.argv[4])), separators=(",", ":")))
        except Exception as e:
            print("error: %r" % e, file=sys.stderr)
            sys.exit(1)
        return
    if cmd == "slow":
        try:
            out = "rc=0\n" + json.dumps(request(port, sys.argv[3], float(sys.argv[6]), sys.argv[4]),
                                        separators=(",", ":"))
        except Exception as e:
            out = "rc=1\nerror: %r" % e
        with open(sys.argv[5], "w") as f:
            f.write(out + "\n")
        return
    stopfile, deadline, n = sys.argv[3], time.time() + float(sys.argv[4]), int(sys.argv[5])
    masters = {}

    def stop(_load):
        return os.path.exists(stopfile) or time.time() >= deadline

    def count(master):
        masters[master] = masters.get(master, 0) + 1

    load = upgrader_http.Load(n, lambda: request(port, "/", 5)["master_pid"], stop, on_ok=count).run()
    with open(sys.argv[6], "w") as f:
        f.write("ok=%d failed=%d masters=%s errors=%s\n" % (
            load.ok, load.failed, ",".join("%s:%d" % kv for kv in sorted(masters.items())),
            "|".join(load.first_errors) or "none"))


main()
