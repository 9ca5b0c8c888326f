"""The driver of scripts/bench.sh (Python 3, standard library only).

Run through bench.sh, which installs the tools, builds the binaries and
passes everything in BENCH_* environment variables: BENCH_QUICK,
BENCH_RUN (scratch directory), BENCH_OUTPUT, BENCH_UPGRADER, BENCH_APP,
BENCH_RAW, BENCH_WRK, BENCH_GUNICORN, BENCH_SSA, BENCH_MACHINE,
BENCH_DATE, BENCH_COMMAND, BENCH_REVISION. Prints the table on stdout,
progress on stderr, and rewrites the generated section of BENCH_OUTPUT
if set.
"""
import ctypes
import json
import os
import re
import select
import signal
import socket
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import upgrader_http  # noqa: E402 - found through the line above

E = os.environ
QUICK = E["BENCH_QUICK"] == "1"
RUN = E["BENCH_RUN"]
UPGRADER, APP, RAW = E["BENCH_UPGRADER"], E["BENCH_APP"], E["BENCH_RAW"]
WRK, GUNICORN, SSA = E["BENCH_WRK"], E["BENCH_GUNICORN"], E["BENCH_SSA"]

TRIALS = 5
WORKERS = 2
WRK_SECS = 2 if QUICK else 10
ROUNDS = 1 if QUICK else 4          # interleaved wrk rounds per server
WAIT = 3.0 if QUICK else 10.0       # bound on every "until it happens" wait
IDLE_WINDOW = 0.4 if QUICK else 1.0  # per trial: 5 windows
SETTLE = 0.5 if QUICK else 1.0
POLL = 0.0003                       # pause between probes in poll loops

# Environment handed to servers: nothing of ours that changes behaviour.
BASE_ENV = {k: v for k, v in E.items()
            if not k.startswith(("BENCH_", "LISTEN_", "UPGRADER_", "WATCHDOG_", "GUNICORN_"))
            and k != "NOTIFY_SOCKET"}


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def now():
    return time.monotonic()


def ms_since(t0, t1=None):
    return ((now() if t1 is None else t1) - t0) * 1000.0


# ---- processes ---------------------------------------------------------------
#
# The driver is a child subreaper: a new master whose parent (the old
# master) exits is re-parented here, so every process a test started stays
# our descendant, and "stop everything" never needs a name.

try:
    ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
except (OSError, AttributeError):
    pass

GROUPS = []  # process groups we created (one session per server)


def record_groups():
    with open(os.path.join(RUN, "pgids"), "w") as f:
        f.write("".join(f"{g}\n" for g in GROUPS))


class Server:
    def __init__(self, name, argv, cwd=None, fd3=None):
        self.name = name
        self.log = os.path.join(RUN, f"{name}.log")
        logfd = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        env = dict(BASE_ENV)
        pid = os.fork()
        if pid == 0:  # child: new session, stdio to the log, exec
            try:
                os.setsid()
                for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM):
                    signal.signal(sig, signal.SIG_DFL)
                null = os.open(os.devnull, os.O_RDONLY)
                os.dup2(null, 0)
                os.dup2(logfd, 1)
                os.dup2(logfd, 2)
                if fd3 is not None:  # systemd socket activation, by hand
                    if fd3 == 3:
                        os.set_inheritable(3, True)
                    else:
                        os.dup2(fd3, 3)
                    env.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()),
                               LISTEN_FDNAMES="unknown")
                if cwd:
                    os.chdir(cwd)
                os.execve(argv[0], argv, env)
            except BaseException as e:  # noqa: BLE001 - report and die
                try:
                    os.write(2, f"bench: exec {argv[0]}: {e}\n".encode())
                finally:
                    os._exit(127)
        os.close(logfd)
        self.pid = pid
        GROUPS.append(pid)
        record_groups()

    def last_line(self, pattern=None):
        try:
            with open(self.log, errors="replace") as f:
                lines = [l.strip() for l in f if l.strip()]
        except OSError:
            return ""
        if pattern:
            lines = [l for l in lines if re.search(pattern, l)]
        return lines[-1][-160:] if lines else ""


def proc_stat(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
        return s[s.rindex(")") + 2:].split()
    except (OSError, ValueError):
        return None


def reap(pid):
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def alive(pid):
    try:
        r, _ = os.waitpid(pid, os.WNOHANG)
        if r == pid:
            return False
    except ChildProcessError:
        pass
    st = proc_stat(pid)
    return st is not None and st[0] not in "ZX"


def ppids():
    m = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = proc_stat(d)
            if st:
                m[int(d)] = (int(st[1]), st[0])
    return m


def children(pid, m=None):
    m = m or ppids()
    return [p for p, (pp, _) in m.items() if pp == pid]


def descendants(pid):
    m = ppids()
    out, todo = [], [pid]
    while todo:
        kids = children(todo.pop(), m)
        out += kids
        todo += kids
    return out


def reap_zombies():
    for p, (pp, st) in ppids().items():
        if pp == os.getpid() and st == "Z":
            reap(p)


def signal_pid(pid, sig):
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False


def stop_everything(masters=()):
    """Graceful stop of the given masters and every group we created,
    then SIGKILL whatever descends from us; bounded."""
    for p in masters:
        if p:
            signal_pid(p, signal.SIGTERM)
    for g in GROUPS:
        try:
            os.killpg(g, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = now() + 5
    while now() < deadline:
        reap_zombies()
        if not [p for p in descendants(os.getpid()) if alive(p)]:
            break
        time.sleep(0.02)
    for p in descendants(os.getpid()):
        signal_pid(p, signal.SIGKILL)
    time.sleep(0.05)
    reap_zombies()
    GROUPS.clear()
    record_groups()


def read_pid(path):
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def master_stats(pid):
    """RSS (KiB), threads, context switches of all threads, CPU ticks."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "RssAnon", "RssFile", "Threads"):
                    out[k] = int(v.split()[0])
        ctx = 0
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        ctx += int(line.split()[1])
        out["ctx"] = ctx
        st = proc_stat(pid)
        out["ticks"] = int(st[11]) + int(st[12])
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        out["Pss"] = int(line.split()[1])
        except OSError:
            pass
    except (OSError, ValueError, TypeError, IndexError):
        return None
    return out


def cpu_ns(pids):
    """CPU time of every thread of these processes, in ns."""
    t = 0
    for p in pids:
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/schedstat") as f:
                    t += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return t


def pidfd(pid):
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def exited_fd(fd, pid):
    if fd is not None:
        return bool(select.select([fd], [], [], 0)[0])
    return not alive(pid)


# ---- HTTP ------------------------------------------------------------------

AGENT = "upgrader-bench"


def fetch(port, timeout=2.0):
    """One GET; the raw bytes of a complete response, or None."""
    try:
        return upgrader_http.get("127.0.0.1", port, timeout=timeout, agent=AGENT).raw
    except (OSError, upgrader_http.BadResponse):
        return None


def get(port, timeout=2.0):
    """One GET; the JSON body of a 200 as a dict ({} if not JSON), or None."""
    try:
        r = upgrader_http.get("127.0.0.1", port, timeout=timeout, agent=AGENT)
    except (OSError, upgrader_http.BadResponse):
        return None
    if r.status != 200:
        return None
    try:
        j = json.loads(r.body)
    except ValueError:
        return {}
    return j if isinstance(j, dict) else {}


def poll_until(port, pred, limit, timeout=2.0):
    """Probes until a 200 whose body satisfies pred. (response, failures);
    response None when the limit passed."""
    deadline = now() + limit
    failures = 0
    while now() < deadline:
        r = get(port, min(timeout, max(0.05, deadline - now())))
        if r is None:
            failures += 1
        elif pred(r):
            return r, failures
        time.sleep(POLL)
    return None, failures


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(srv, port, pidfile=None, limit=None):
    """The pidfile (if any) exists and a GET is answered; bounded."""
    deadline = now() + (limit or max(WAIT, 10.0))
    while now() < deadline:
        if not alive(srv.pid):
            return f"{srv.name} exited: {srv.last_line()}"
        if (pidfile is None or read_pid(pidfile)) and get(port, 0.5) is not None:
            return None
        time.sleep(0.01)
    return f"{srv.name} not serving after {deadline - now():.0f} s: {srv.last_line()}"


# ---- servers -------------------------------------------------------------

def gunicorn_app():
    path = os.path.join(RUN, "app.py")
    with open(path, "w") as f:
        f.write('''\
"""Hello WSGI app for the benchmark: the same JSON keys as upgrader's worker."""
import json
import os


def app(environ, start_response):
    body = json.dumps({"master_pid": os.getppid(), "worker_pid": os.getpid(),
                       "worker_age": 1, "generation": 1, "requests": 1,
                       "version": "0.1.0"}, separators=(",", ":")) + "\\n"
    body = body.encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
''')


GUNICORN_NOCTL = "--no-control-socket" in subprocess.run(
    [GUNICORN, "--help"], capture_output=True, text=True, timeout=60).stdout


def start(kind, port, workers, pidfile=None, extra=(), tag=None):
    """Starts one server; returns the Server (its pid is the master's).
    Its output goes to RUN/<tag>.log."""
    bind = f"127.0.0.1:{port}"
    tag = tag or f"{kind}-{port}"
    if kind == "upgrader":
        argv = [UPGRADER, "--bind", bind, "-w", str(workers), *extra]
        if pidfile:
            argv += ["--pid", pidfile]
        return Server(tag, argv, cwd=RUN)
    if kind == "exec":
        argv = [UPGRADER, "--bind", bind, "-w", str(workers), "--ready", "notify"]
        if pidfile:
            argv += ["--pid", pidfile]
        return Server(tag, argv + ["--exec", APP], cwd=RUN)
    if kind == "gunicorn":
        argv = [GUNICORN, "-w", str(workers), "--worker-class", "sync", "-b", bind,
                "--chdir", RUN, *extra]
        if GUNICORN_NOCTL:
            argv.append("--no-control-socket")
        if pidfile:
            argv += ["--pid", pidfile]
        return Server(tag, argv + ["app:app"], cwd=RUN)
    if kind == "raw":
        return Server(tag, [RAW, bind, str(workers)], cwd=RUN)
    if kind == "alone":
        if SSA:
            return Server(tag, [SSA, "-l", bind, "--fdname=unknown", APP], cwd=RUN)
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen(2048)
        try:
            return Server(tag, [APP], cwd=RUN, fd3=s.fileno())
        finally:
            s.close()
    raise ValueError(kind)


# ---- results ------------------------------------------------------------

R = {}       # key -> {"v": [values], "na": reason}
NOTES = []


def put(key, values, na=None):
    R[key] = {"v": [v for v in values if v is not None], "na": na}


def med(key):
    r = R.get(key)
    if not r or not r["v"]:
        return None
    return statistics.median(r["v"])


# ---- throughput ------------------------------------------------------------

UNIT = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def wrk(port, secs):
    argv = [WRK, "-t2", "-c64", f"-d{secs}s", "--latency", f"http://127.0.0.1:{port}/"]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=secs + 30).stdout
    except subprocess.TimeoutExpired:
        return None
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m:
        return None
    res = {"rps": float(m.group(1)), "out": out}
    for q in ("50", "99"):
        m = re.search(rf"^\s*{q}(?:\.000)?%\s+([\d.]+)(us|ms|s|m)\b", out, re.M)
        res[f"p{q}"] = float(m.group(1)) * UNIT[m.group(2)] if m else None
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    res["errors"] = sum(int(x) for x in m.groups()) if m else 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    res["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"(\d+) requests in", out)
    res["requests"] = int(m.group(1)) if m else 0
    return res


TP_KINDS = [  # key, kind, workers, extra args, has a master to watch
    ("builtin", "upgrader", WORKERS, ("--timeout", "0"), True),
    ("gunicorn", "gunicorn", WORKERS, (), True),
    ("raw", "raw", WORKERS, (), False),
    ("exec", "exec", 1, (), True),
    ("alone", "alone", 1, (), False),
]


def throughput_round(key, kind, workers, extra, watch, acc):
    port = free_port()
    pidfile = os.path.join(RUN, f"tp-{key}.pid") if kind in ("upgrader", "exec") else None
    try:
        srv = start(kind, port, workers, pidfile, extra, f"throughput-{key}-{len(acc['runs']) + 1}")
    except OSError as e:
        acc["na"] = f"cannot start: {e}"
        return
    try:
        why = wait_ready(srv, port, pidfile)
        if why:
            acc["na"] = why
            return
        if "sample" not in acc:
            acc["sample"] = fetch(port) or b""
        wrk(port, 1)  # warm-up
        pids = [srv.pid] + descendants(srv.pid)
        s0 = master_stats(srv.pid) if watch else None
        c0 = cpu_ns(pids)
        t0 = now()
        res = wrk(port, WRK_SECS)
        wall = now() - t0
        c1 = cpu_ns(pids)
        s1 = master_stats(srv.pid) if watch else None
        if res is None:
            acc["na"] = "wrk failed"
            return
        if res["requests"]:
            res["cpu_us"] = (c1 - c0) / 1e3 / res["requests"]
        acc["runs"].append(res)
        acc["byround"][acc["round"]] = res
        if s0 and s1:
            tck = os.sysconf("SC_CLK_TCK")
            acc["cpu"].append((s1["ticks"] - s0["ticks"]) / tck / wall * 100.0)
            acc["rss_before"].append(s0["VmRSS"] / 1024.0)
            acc["rss_after"].append(s1["VmRSS"] / 1024.0)
    finally:
        stop_everything([srv.pid])


def throughput():
    accs = {k: {"runs": [], "byround": {}, "cpu": [], "rss_before": [], "rss_after": [],
                "na": None} for k, *_ in TP_KINDS}
    for rnd in range(ROUNDS):
        # Compared servers run back to back, in ABBA order across rounds,
        # so that a drift in the machine's background load hits both.
        order = TP_KINDS if rnd % 2 == 0 else [TP_KINDS[i] for i in (2, 0, 4, 3, 1)]
        for key, kind, workers, extra, watch in order:
            if accs[key]["na"]:
                continue
            log(f"throughput {key} (round {rnd + 1}/{ROUNDS}, {WRK_SECS} s)")
            accs[key]["round"] = rnd
            throughput_round(key, kind, workers, extra, watch, accs[key])
    # Ratios are medians of per-round ratios (paired runs), not ratios of
    # medians: more robust on a machine whose load changes.
    for a, b in (("builtin", "gunicorn"), ("builtin", "raw"), ("exec", "alone")):
        for m in ("rps", "p50", "p99", "cpu_us"):
            ra, rb = accs[a]["byround"], accs[b]["byround"]
            put(f"pair.{m}.{a}/{b}", [ra[i][m] / rb[i][m] for i in ra
                                      if i in rb and ra[i].get(m) and rb[i].get(m)])
    for key, acc in accs.items():
        runs = acc["runs"]
        na = acc["na"] if not runs else None
        put(f"{key}.rps", [r["rps"] for r in runs], na)
        put(f"{key}.p50", [r["p50"] for r in runs], na)
        put(f"{key}.p99", [r["p99"] for r in runs], na)
        put(f"{key}.cpu_us", [r.get("cpu_us") for r in runs], na)
        put(f"{key}.cpu", acc["cpu"], na)
        put(f"{key}.rss_before", acc["rss_before"], na)
        put(f"{key}.rss_after", acc["rss_after"], na)
        bad = sum(r["errors"] + r["non2xx"] for r in runs)
        total = sum(r["requests"] for r in runs)
        if runs:
            NOTES.append(f"wrk {key}: {total:,} requests in {len(runs)} run(s) of {WRK_SECS} s, "
                         f"{bad} socket errors or non-2xx")
        if acc["na"] and runs:
            NOTES.append(f"wrk {key}: a round failed: {acc['na']}")
    a, c = accs["builtin"].get("sample"), accs["raw"].get("sample")
    if a and c:
        # Content-Length depends on the pids' digit counts: compare the shape.
        ha, hc = (re.sub(rb"\d+", b"N", x.partition(b"\r\n\r\n")[0]) for x in (a, c))
        NOTES.append(f"response bytes: upgrader {len(a)}, raw loop {len(c)}; head "
                     + ("identical" if ha == hc else f"DIFFERS: {ha!r} vs {hc!r}"))


# ---- signals: USR2 + TERM ---------------------------------------------------
#
# After USR2 the old workers keep accepting too, and an idle old worker
# may be preferred by the kernel (upgrader's workers wait in epoll with
# EPOLLEXCLUSIVE, which wakes the earliest-registered idle waiter), so a
# probe would show "serving" only once the old master is retired. So,
# before each USR2, every old worker is kept busy with a request whose
# head is not finished yet (a sync worker serves one connection at a
# time), and the probe, queued in the backlog, is answered by the first
# new worker able to serve. The held requests are then completed (and
# must be answered) before TERM.

HELD = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n"


def hold(port, n):
    held = []
    for _ in range(n):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=2)
            s.sendall(HELD)
            held.append(s)
        except OSError:
            pass
    time.sleep(0.05)  # accepted by now: the workers were idle
    return held


def release(held):
    """Completes the held requests; how many were not answered."""
    bad = 0
    for s in held:
        try:
            s.sendall(b"\r\n")
            data = b""
            while True:
                b = s.recv(65536)
                if not b:
                    break
                data += b
            bad += not data.startswith(b"HTTP/1.1 200 ")
        except OSError:
            bad += 1
        finally:
            s.close()
    return bad


def probe_new_master(port, old, pidfile, limit):
    """Probes until a response from a master other than old. Returns
    (response, time it arrived, time <pidfile>.2 first named a new
    master, failures)."""
    deadline = now() + limit
    t_ready = None
    failures = 0
    while now() < deadline:
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=2)
        except OSError:
            failures += 1
            time.sleep(POLL)
            continue
        with s:
            data = b""
            try:
                s.sendall(upgrader_http.request_bytes(agent=AGENT))
                s.setblocking(False)
                while now() < deadline:
                    if t_ready is None and read_pid(pidfile + ".2") not in (None, old):
                        t_ready = now()
                    if select.select([s], [], [], 0.0005)[0]:
                        b = s.recv(65536)
                        if not b:
                            break
                        data += b
            except OSError:
                failures += 1
                continue
        t = now()
        head, _, body = data.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200 "):
            failures += 1
            continue
        try:
            j = json.loads(body)
        except ValueError:
            continue
        if isinstance(j, dict) and j.get("master_pid") not in (None, old):
            return j, t, t_ready, failures
    return None, None, t_ready, failures


def upgrade(kind):
    """USR2 -> new master serving; TERM -> promoted; lag after old exit."""
    key = "u" if kind == "upgrader" else "g"
    port = free_port()
    pidfile = os.path.join(RUN, f"{kind}-upgrade.pid")
    srv = start(kind, port, WORKERS, pidfile, ("--timeout", "0") if kind == "upgrader" else (),
                f"usr2-{kind}")
    usr2, ready, term, lag, drain = [], [], [], [], []
    na_usr2 = na_term = None
    fails = 0
    masters = [srv.pid]
    try:
        why = wait_ready(srv, port, pidfile)
        if why:
            na_usr2 = na_term = why
            return
        for i in range(TRIALS):
            old = read_pid(pidfile)
            if not old:
                na_usr2 = na_term = f"no pidfile before trial {i + 1}"
                break
            held = hold(port, WORKERS)
            t0 = now()
            os.kill(old, signal.SIGUSR2)
            r, t_serv, t_ready, f = probe_new_master(port, old, pidfile, WAIT)
            fails += f + release(held)
            if r is None:
                na_usr2 = (f"no response from a new master within {WAIT:g} s of USR2; "
                           f"log: {srv.last_line(r'(?i)usr2|upgrade|not implemented') or srv.last_line()}")
                na_term = "no new master to promote"
                break
            usr2.append(ms_since(t0, t_serv))
            new = r["master_pid"]
            masters.append(new)
            # The new master says it is ready by writing <pidfile>.2 (upgrader:
            # once its workers are ready; gunicorn: at boot).
            deadline = now() + WAIT
            while now() < deadline and read_pid(pidfile + ".2") != new:
                time.sleep(POLL)
            if t_ready is None and read_pid(pidfile + ".2") == new:
                t_ready = now()
            if t_ready is not None:
                ready.append(ms_since(t0, t_ready))
            fd = pidfd(old)
            t1 = now()
            os.kill(old, signal.SIGTERM)
            t_exit = t_prom = None
            deadline = t1 + WAIT
            while now() < deadline and (t_exit is None or t_prom is None):
                t = now()
                if t_exit is None and exited_fd(fd, old):
                    t_exit = t
                if t_prom is None and read_pid(pidfile) == new:
                    t_prom = t
                time.sleep(POLL)
            if fd is not None:
                os.close(fd)
            reap_zombies()
            if t_exit is not None:
                drain.append(ms_since(t1, t_exit))
            if t_prom is None:
                na_term = (f"{pidfile} did not name the new master {new} within {WAIT:g} s of TERM "
                           f"(old master {'exited' if t_exit else 'still running'}); "
                           f"log: {srv.last_line(r'(?i)promot|retir') or srv.last_line()}")
                break
            term.append(ms_since(t1, t_prom))
            if t_exit is not None:
                lag.append((t_prom - t_exit) * 1000.0)
    finally:
        put(f"usr2.{key}", usr2, na_usr2)
        put(f"ready.{key}", ready, na_usr2)
        put(f"term.{key}", term, na_term)
        put(f"lag.{key}", lag, na_term)
        put(f"drain.{key}", drain, na_term)
        if fails:
            NOTES.append(f"{kind} USR2/TERM trials: {fails} probe(s) failed (refused, reset or non-200)")
        stop_everything(masters + [read_pid(pidfile)])


# ---- signals: HUP ---------------------------------------------------------

def reload(kind):
    key = "u" if kind == "upgrader" else "g"
    port = free_port()
    pidfile = os.path.join(RUN, f"{kind}-reload.pid")
    srv = start(kind, port, WORKERS, pidfile, ("--timeout", "0") if kind == "upgrader" else (),
                f"hup-{kind}")
    hup, gone = [], []
    na = na_gone = None
    fails = 0
    try:
        why = wait_ready(srv, port, pidfile)
        if why:
            na = na_gone = why
            return
        for i in range(TRIALS):
            r0 = get(port)
            old = set(children(srv.pid))
            if r0 is None or not old:
                na = na_gone = f"not serving before trial {i + 1}"
                break
            if kind == "upgrader":
                g0 = r0.get("generation", 0)
                pred = lambda r: (r.get("generation") or 0) > g0  # noqa: E731
            else:
                pred = lambda r: r.get("worker_pid") not in old  # noqa: E731
            t0 = now()
            os.kill(srv.pid, signal.SIGHUP)
            r, f = poll_until(port, pred, WAIT)
            fails += f
            if r is None:
                na = na_gone = (f"no response from a new generation within {WAIT:g} s of HUP; "
                                f"log: {srv.last_line(r'(?i)hup|reload|not implemented') or srv.last_line()}")
                break
            hup.append(ms_since(t0))
            deadline = t0 + WAIT
            while now() < deadline and any(alive(p) for p in old):
                time.sleep(0.001)
            if any(alive(p) for p in old):
                na_gone = f"old generation still running {WAIT:g} s after HUP"
                break
            gone.append(ms_since(t0))
            reap_zombies()
    finally:
        put(f"hup.{key}", hup, na)
        put(f"hupgone.{key}", gone, na_gone)
        if fails:
            NOTES.append(f"{kind} HUP trials: {fails} probe(s) failed (refused, reset or non-200)")
        stop_everything([srv.pid])


# ---- worker SIGKILL -> replacement --------------------------------------------

def kill_once(port):
    r0 = get(port)
    if not r0 or "worker_pid" not in r0:
        return None, "no worker_pid in the response", 0
    w = r0["worker_pid"]
    t0 = now()
    os.kill(w, signal.SIGKILL)
    r, f = poll_until(port, lambda r: r.get("worker_pid") not in (None, w), WAIT)
    if r is None:
        return None, f"no response from a new worker within {WAIT:g} s", f
    return ms_since(t0), None, f


def respawn(kind):
    """Each trial on a fresh master (-w 1): the first death of a worker.
    Then one more kill right after, which crash-loop protection may delay."""
    key = "u" if kind == "upgrader" else "g"
    vals, second = [], []
    na = na2 = None
    fails = 0
    extra = ("--timeout", "0") if kind == "upgrader" else ()
    for i in range(TRIALS):
        port = free_port()
        pidfile = os.path.join(RUN, f"{kind}-respawn.pid")
        srv = start(kind, port, 1, pidfile, extra, f"sigkill-{kind}-{i + 1}")
        try:
            why = wait_ready(srv, port, pidfile)
            if why:
                na = na2 = why
                break
            v, why, f = kill_once(port)
            fails += f
            if v is None:
                na = na2 = f"{why}; log: {srv.last_line()}"
                break
            vals.append(v)
            if i == 0:
                v, why, f = kill_once(port)
                fails += f
                if v is None:
                    na2 = f"{why}; log: {srv.last_line()}"
                else:
                    second.append(v)
        finally:
            stop_everything([srv.pid])
    put(f"kill.{key}", vals, na)
    put(f"kill2.{key}", second, na2)
    if fails:
        NOTES.append(f"{kind} SIGKILL trials: {fails} probe(s) failed (refused, reset or non-200)")


# ---- low load: one client at a time, many workers ----------------------------

LOW_WORKERS = 8
LOW_REQUESTS = 200 if QUICK else 1000  # per batch, 5 batches


def ctx_switches(pids):
    c = 0
    for p in pids:
        s = master_stats(p)
        c += s["ctx"] if s else 0
    return c


def lowload(kind, tag):
    """Sequential requests (one connection at a time) to LOW_WORKERS
    workers: what each request costs when nothing amortizes it."""
    port = free_port()
    srv = start(kind, port, LOW_WORKERS, None, ("--timeout", "0") if kind == "upgrader" else (),
                f"lowload-{kind}")
    wall, cpu, ctx = [], [], []
    na = None
    try:
        why = wait_ready(srv, port)
        if why:
            na = why
            return
        deadline = now() + 5
        while now() < deadline and len(descendants(srv.pid)) < LOW_WORKERS - (kind == "raw"):
            time.sleep(0.01)
        for _ in range(100):
            fetch(port)
        pids = [srv.pid] + descendants(srv.pid)
        for _ in range(TRIALS):
            c0, x0, t0 = cpu_ns(pids), ctx_switches(pids), now()
            bad = sum(fetch(port) is None for _ in range(LOW_REQUESTS))
            t1, c1, x1 = now(), cpu_ns(pids), ctx_switches(pids)
            if bad:
                na = f"{bad} of {LOW_REQUESTS} requests failed"
                break
            wall.append((t1 - t0) * 1e6 / LOW_REQUESTS)
            cpu.append((c1 - c0) / 1e3 / LOW_REQUESTS)
            ctx.append((x1 - x0) / LOW_REQUESTS)
    finally:
        put(f"lowwall.{tag}", wall, na)
        put(f"lowcpu.{tag}", cpu, na)
        put(f"lowctx.{tag}", ctx, na)
        stop_everything([srv.pid])


# ---- idle master --------------------------------------------------------------

def idle(kind, tag, extra):
    port = free_port()
    pidfile = os.path.join(RUN, f"{kind}-idle.pid")
    srv = start(kind, port, WORKERS, pidfile, extra, f"idle-{kind}")
    rss, anon, pss, threads, wake = [], [], [], [], []
    switches = 0
    na = None
    try:
        why = wait_ready(srv, port, pidfile)
        if why:
            na = why
            return
        get(port)
        time.sleep(SETTLE)
        for _ in range(TRIALS):
            s0 = master_stats(srv.pid)
            time.sleep(IDLE_WINDOW)
            s1 = master_stats(srv.pid)
            if not s0 or not s1:
                na = f"master {srv.pid} gone: {srv.last_line()}"
                break
            rss.append(s1["VmRSS"] / 1024.0)
            anon.append(s1.get("RssAnon", 0) / 1024.0)
            if "Pss" in s1:
                pss.append(s1["Pss"] / 1024.0)
            threads.append(s1["Threads"])
            switches += s1["ctx"] - s0["ctx"]
        # Wakeups are sparse (gunicorn: one a second): the rate over the
        # whole observation, not a median of per-window rates.
        if len(rss) == TRIALS:
            wake.append(switches / (TRIALS * IDLE_WINDOW))
    finally:
        put(f"rss.{tag}", rss, na)
        put(f"anon.{tag}", anon, na)
        put(f"pss.{tag}", pss, na)
        put(f"threads.{tag}", threads, na)
        put(f"wake.{tag}", wake, na)
        stop_everything([srv.pid])


# ---- report ------------------------------------------------------------------

def fmt(key, unit):
    r = R.get(key)
    if r is None:
        return "—"
    if not r["v"]:
        return "n/a"
    v = r["v"]
    m = statistics.median(v)
    if unit == "rps":
        s = f"{m:,.0f}"
        if len(v) > 1:
            s += f" ({min(v) / 1000:,.1f}k–{max(v) / 1000:,.1f}k)"
        return s
    if unit == "us":
        return f"{m:.0f}"
    if unit == "us1":
        return f"{m:.1f}"
    if unit == "int":
        return f"{m:.0f}"
    if unit == "pct":
        return f"{m:.1f} %"
    if unit in ("mib", "wake"):
        return f"{m:.2f}"
    if unit == "ms":
        s = f"{m:.1f}"
        if len(v) > 1:
            s += f" ({min(v):.1f}–{max(v):.1f})"
        return s
    return f"{m:.2f}"


def ratio(a, b):
    m = a.rsplit(".", 1)[-1]
    pair = f"pair.{m}.{a.split('.')[0]}/{b.split('.')[0]}"
    if pair in R:
        return fmt_ratio(med(pair))
    x, y = med(a), med(b)
    if x is None or y is None or y == 0:
        return "—"
    return fmt_ratio(x / y)


def fmt_ratio(r):
    if r is None:
        return "—"
    return f"{r:.2f}×" if r >= 2 else f"{r:.3f}×"


def verdict(ok):
    if ok is None:
        return "n/a"
    return "met" if ok else "**missed**"


def check(fn, *keys):
    vals = [med(k) for k in keys]
    if any(v is None for v in vals):
        return None
    return fn(*vals)


def table():
    rows = []

    def row(label, u, g, r, ug, ur, target, ok):
        v = verdict(ok) if target else ""  # no target: informational
        rows.append(f"| {label} | {u} | {g} | {r} | {ug} | {ur} | {target} | {v} |")

    row(f"built-in worker ×{WORKERS}: requests/s", fmt("builtin.rps", "rps"), fmt("gunicorn.rps", "rps"),
        fmt("raw.rps", "rps"), ratio("builtin.rps", "gunicorn.rps"), ratio("builtin.rps", "raw.rps"),
        "≥ 5× gunicorn, ≥ 0.9× raw",
        check(lambda g, r: g >= 5 and r >= 0.9, "pair.rps.builtin/gunicorn", "pair.rps.builtin/raw"))
    for q in ("50", "99"):
        row(f"built-in worker: p{q} latency, ms", fmt(f"builtin.p{q}", "ms"), fmt(f"gunicorn.p{q}", "ms"),
            fmt(f"raw.p{q}", "ms"), ratio(f"builtin.p{q}", f"gunicorn.p{q}"),
            ratio(f"builtin.p{q}", f"raw.p{q}"), "", None)
    row("built-in worker: server CPU µs per request", fmt("builtin.cpu_us", "us1"),
        fmt("gunicorn.cpu_us", "us1"), fmt("raw.cpu_us", "us1"),
        ratio("builtin.cpu_us", "gunicorn.cpu_us"), ratio("builtin.cpu_us", "raw.cpu_us"), "", None)
    row(f"1 client at a time, ×{LOW_WORKERS} workers: µs per request (wall)", fmt("lowwall.u", "us"), "—",
        fmt("lowwall.r", "us"), "—", ratio("lowwall.u", "lowwall.r"), "", None)
    row("… server CPU µs per request (all processes)", fmt("lowcpu.u", "us"), "—",
        fmt("lowcpu.r", "us"), "—", ratio("lowcpu.u", "lowcpu.r"), "", None)
    row("… server context switches per request", fmt("lowctx.u", "wake"), "—",
        fmt("lowctx.r", "wake"), "—", ratio("lowctx.u", "lowctx.r"), "", None)
    row("`--exec` Rust app ×1 vs app alone: requests/s", fmt("exec.rps", "rps"), "—", fmt("alone.rps", "rps"),
        "—", ratio("exec.rps", "alone.rps"), "≥ 0.98× alone",
        check(lambda r: r >= 0.98, "pair.rps.exec/alone"))
    for q in ("50", "99"):
        row(f"`--exec` app: p{q} latency, ms", fmt(f"exec.p{q}", "ms"), "—", fmt(f"alone.p{q}", "ms"),
            "—", ratio(f"exec.p{q}", f"alone.p{q}"), "", None)
    row("`--exec` app: server CPU µs per request", fmt("exec.cpu_us", "us1"), "—",
        fmt("alone.cpu_us", "us1"), "—", ratio("exec.cpu_us", "alone.cpu_us"), "", None)
    row("master CPU under load (built-in / gunicorn; `--exec`)",
        f"{fmt('builtin.cpu', 'pct')}; {fmt('exec.cpu', 'pct')}", fmt("gunicorn.cpu", "pct"), "—", "", "",
        "≈ 0 (not on the data path)", check(lambda a, b: a < 1.0 and b < 1.0, "builtin.cpu", "exec.cpu"))
    row("USR2 → new master serving, ms", fmt("usr2.u", "ms"), fmt("usr2.g", "ms"), "—",
        ratio("usr2.u", "usr2.g"), "", "≤ 50 ms", check(lambda a: a <= 50, "usr2.u"))
    row("… `<pidfile>.2` written (new master ready), ms", fmt("ready.u", "ms"), "—", "—",
        "", "", "", None)
    row("TERM → promoted, ms", fmt("term.u", "ms"), fmt("term.g", "ms"), "—",
        ratio("term.u", "term.g"), "", "", None)
    row("… of which the old master's drain (TERM → exit), ms", fmt("drain.u", "ms"), fmt("drain.g", "ms"),
        "—", "", "", "", None)
    row("… promoted after the old master exited, ms", fmt("lag.u", "ms"), fmt("lag.g", "ms"), "—",
        "", "", "≤ 10 ms", check(lambda a: a <= 10, "lag.u"))
    row("HUP → new generation serving, ms", fmt("hup.u", "ms"), fmt("hup.g", "ms"), "—",
        ratio("hup.u", "hup.g"), "", "≤ 20 ms", check(lambda a: a <= 20, "hup.u"))
    row("HUP → old generation gone, ms", fmt("hupgone.u", "ms"), fmt("hupgone.g", "ms"), "—",
        ratio("hupgone.u", "hupgone.g"), "", "", None)
    row("worker SIGKILL → replacement serving, ms", fmt("kill.u", "ms"), fmt("kill.g", "ms"), "—",
        ratio("kill.u", "kill.g"), "", "≤ 5 ms", check(lambda a: a <= 5, "kill.u"))
    row("… a second SIGKILL right after (crash-loop backoff), ms", fmt("kill2.u", "ms"),
        fmt("kill2.g", "ms"), "—", "", "", "", None)
    row("idle master RSS, MiB", fmt("rss.u0", "mib"), fmt("rss.g", "mib"), "—",
        ratio("rss.u0", "rss.g"), "", "≤ 3 MiB", check(lambda a: a <= 3.0, "rss.u0"))
    row("… of which anonymous (heap, stack, data), MiB", fmt("anon.u0", "mib"), fmt("anon.g", "mib"),
        "—", ratio("anon.u0", "anon.g"), "", "", None)
    row("… proportional share (PSS), MiB", fmt("pss.u0", "mib"), fmt("pss.g", "mib"),
        "—", ratio("pss.u0", "pss.g"), "", "", None)
    row("master RSS before → after a throughput run, MiB",
        f"{fmt('builtin.rss_before', 'mib')} → {fmt('builtin.rss_after', 'mib')}",
        f"{fmt('gunicorn.rss_before', 'mib')} → {fmt('gunicorn.rss_after', 'mib')}", "—", "", "",
        "no growth", check(lambda a, b: b <= a + 0.05, "builtin.rss_before", "builtin.rss_after"))
    row("master threads", fmt("threads.u0", "int"), fmt("threads.g", "int"), "—", "", "", "1",
        check(lambda a: a == 1, "threads.u0"))
    row("idle master wakeups (context switches)/s, `--timeout 0`", fmt("wake.u0", "wake"),
        fmt("wake.g", "wake"), "—",
        "", "", "0", check(lambda a: a == 0, "wake.u0"))

    head = ["| figure | upgrader | gunicorn | raw loop / app alone | ÷ gunicorn | ÷ raw / alone | target | |",
            "| --- | --: | --: | --: | --: | --: | --- | --- |"]
    na = [f"* {k}: n/a: {r['na']}" for k, r in R.items()
          if r["na"] and not r["v"] and not k.startswith("pair.")]
    return head + rows, na


def main():
    gunicorn_app()
    version = subprocess.run([GUNICORN, "--version"], capture_output=True, text=True).stdout.strip()
    wrk_v = subprocess.run([WRK, "-v"], capture_output=True, text=True).stdout.split("\n")[0]
    wrk_v = wrk_v.split(" Copyright")[0].strip()
    alone = (f"`systemd-socket-activate -l ADDR --fdname=unknown APP`" if SSA
             else "the app exec'd on a socket bound by the script (LISTEN_FDS=1, LISTEN_PID)")
    t_start = now()
    load0 = open("/proc/loadavg").read().split()[0]
    try:
        throughput()
        for kind in ("upgrader", "gunicorn"):
            log(f"USR2/TERM {kind}")
            upgrade(kind)
            log(f"HUP {kind}")
            reload(kind)
            log(f"worker SIGKILL {kind}")
            respawn(kind)
        log(f"one client at a time, {LOW_WORKERS} workers")
        lowload("upgrader", "u")
        lowload("raw", "r")
        log("idle masters")
        idle("upgrader", "u0", ("--timeout", "0"))
        idle("gunicorn", "g", ())
    finally:
        stop_everything()
    rows, na = table()
    mode = "quick (`--quick`)" if QUICK else "full"
    lines = [
        f"Run: {E['BENCH_DATE']}, {mode}, {time.strftime('%M:%S', time.gmtime(now() - t_start))} "
        f"(min:s) of measuring.",
        "",
        f"* Machine: {E['BENCH_MACHINE']}; load average {load0} at the start, "
        f"{open('/proc/loadavg').read().split()[0]} at the end (1 min)",
        f"* Command: `{E['BENCH_COMMAND']}` ({E['BENCH_REVISION']})",
        f"* Load: `wrk -t2 -c64 -d{WRK_SECS}s --latency` ({wrk_v}), {ROUNDS} interleaved run(s) per "
        f"server after a 1 s warm-up (ABBA order), median (min–max) shown; ratios are medians of "
        f"per-round ratios; every server and wrk share the machine's cores.",
        f"* Servers: upgrader `-w {WORKERS} --timeout 0` (built-in worker); {version} "
        f"`-w {WORKERS} --worker-class sync{' --no-control-socket' if GUNICORN_NOCTL else ''}` with "
        f"a WSGI app returning the same JSON; `raw-loop ADDR {WORKERS}` (benches/raw-loop); "
        f"upgrader `-w 1 --ready notify --exec upgrader-example-app` vs {alone}.",
        f"* Timings: median (min–max) of {TRIALS} trials, from sending the signal to the first "
        f"response that proves the new master, generation or worker served it (for USR2, with "
        f"every old worker kept busy by an unfinished request); SIGKILL trials on "
        f"a fresh `-w 1` master each. Idle figures: {TRIALS} windows of {IDLE_WINDOW:g} s, "
        f"`-w {WORKERS}`.",
        "",
        *rows,
        "",
    ]
    if na or NOTES:
        lines += [*na, *[f"* {n}" for n in NOTES], ""]
    text = "\n".join(lines)
    print()
    print(text)
    out = E.get("BENCH_OUTPUT")
    if out:
        write_section(out, text)
        log(f"wrote {out}")


BEGIN = "<!-- BEGIN bench.sh output: generated by scripts/bench.sh, do not edit by hand -->"
END = "<!-- END bench.sh output -->"


def write_section(path, text):
    try:
        with open(path) as f:
            doc = f.read()
    except FileNotFoundError:
        doc = "# Benchmarks\n\n" + BEGIN + "\n" + END + "\n"
    section = BEGIN + "\n\n" + text + "\n" + END
    if BEGIN in doc and END in doc:
        pre = doc.split(BEGIN, 1)[0]
        post = doc.split(END, 1)[1]
        doc = pre + section + post
    else:
        doc = doc.rstrip("\n") + "\n\n" + section + "\n"
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(doc)
    os.replace(tmp, path)


if __name__ == "__main__":
    def bye(signum, _frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, bye)
    main()
