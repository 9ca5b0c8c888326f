"""HTTP client for systemd-check.sh (stdlib only).
get PORT PATH TIMEOUT                 print the JSON body of a 200, exit 1 otherwise
slow PORT PATH HEADFILE OUT TIMEOUT   as get, but touch HEADFILE once the head arrived;
                                      write "rc=0|1" and the body (or error) to OUT
load PORT STOPFILE MAXSECS N OUT      N clients loop until STOPFILE exists (<= MAXSECS);
                                      write "ok=.. failed=.. masters=pid:count,.. errors=.." to OUT
"""
import http.client, json, os, sys, threading, time

def request(port, path, timeout, headfile=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        if headfile:
            open(headfile, "w").close()
        body = r.read()
        if r.status != 200:
            raise RuntimeError("status %d" % r.status)
        return json.loads(body)
    finally:
        c.close()

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
    lock, ok, failed, masters, errors = threading.Lock(), [0], [0], {}, []
    def client():
        while not os.path.exists(stopfile) and time.time() < deadline:
            try:
                m = request(port, "/", 5)["master_pid"]
                with lock:
                    ok[0] += 1
                    masters[m] = masters.get(m, 0) + 1
            except Exception as e:
                with lock:
                    failed[0] += 1
                    if len(errors) < 3:
                        errors.append(repr(e))
    ts = [threading.Thread(target=client) for _ in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    with open(sys.argv[6], "w") as f:
        f.write("ok=%d failed=%d masters=%s errors=%s\n" % (ok[0], failed[0],
                ",".join("%s:%d" % kv for kv in sorted(masters.items())), "|".join(errors) or "none"))

main()
