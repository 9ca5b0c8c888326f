"""Rolling reload and memory sampling costs (SPEC 14, 15), for bench.sh.

    python3 scripts/bench_reload.py UPGRADER_BIN [--quick]

For -w 64 built-in workers: the time of `upgrader -s reload` (HUP to
"reload complete") and the peak number of the master's children,
sampled every 5 ms, with --reload-batch 0, 8 and 64; then the master's
CPU time over a window (60 s, 10 s with --quick) with
--max-worker-memory set (measuring 64 workers every 5 s, 1 s with
--quick) against the same master without it. Prints a Markdown table.
Every wait is bounded; every master started is stopped (by its pid).
Standard library only.
"""
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

WORKERS = 64


def log(msg):
    print(f"bench_reload: {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return len(f.read().split())
    except OSError:
        return 0


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return int(rest[11]) + int(rest[12])


def start(binary, tmp, extra):
    pidfile = os.path.join(tmp, f"u{time.monotonic_ns()}.pid")
    args = [binary, "--bind", f"127.0.0.1:{free_port()}", "-w", str(WORKERS),
            "-p", pidfile, "--log-level", "warn", *extra]
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    p = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    deadline = time.monotonic() + 60
    while not os.path.exists(pidfile):
        if p.poll() is not None or time.monotonic() > deadline:
            stop(p)
            raise RuntimeError(f"{args} did not become ready")
        time.sleep(0.01)
    return p, pidfile


def stop(p):
    if p.poll() is None:
        os.kill(p.pid, signal.SIGQUIT)
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def rolling(binary, tmp, batch):
    p, pidfile = start(binary, tmp, ["--reload-batch", str(batch)])
    try:
        peak, done = [0], threading.Event()

        def sample():
            for _ in range(24000):  # at most 120 s
                if done.is_set():
                    break
                peak[0] = max(peak[0], children(p.pid))
                time.sleep(0.005)

        t = threading.Thread(target=sample)
        t.start()
        t0 = time.monotonic()
        r = subprocess.run([binary, "-s", "reload", "--pid", pidfile, "--wait", "120"],
                           capture_output=True, text=True, timeout=130)
        took = time.monotonic() - t0
        done.set()
        t.join()
        if r.returncode != 0:
            raise RuntimeError(f"reload failed: {r.stdout}{r.stderr}")
        return took, peak[0]
    finally:
        stop(p)


def sampling_cpu(binary, tmp, window, interval):
    out = {}
    for label, extra in (("off", []),
                         ("on", ["--max-worker-memory", "1G",
                                 "--memory-check-interval", str(interval)])):
        p, _ = start(binary, tmp, extra)
        try:
            time.sleep(1.0)  # let the start settle before the window
            before = cpu_ticks(p.pid)
            time.sleep(window)  # the measurement window
            out[label] = (cpu_ticks(p.pid) - before) * 10  # ms (USER_HZ 100)
        finally:
            stop(p)
    return out


def main():
    binary = sys.argv[1]
    quick = "--quick" in sys.argv[2:]
    window, interval = (10, 1) if quick else (60, 5)
    with tempfile.TemporaryDirectory() as tmp:
        print(f"| `-w {WORKERS}` HUP | `-s reload` time | peak workers (5 ms samples) |")
        print("| --- | --- | --- |")
        for batch in (0, 8, 64):
            log(f"reload, --reload-batch {batch}")
            try:
                took, peak = rolling(binary, tmp, batch)
                print(f"| `--reload-batch {batch}` | {took:.2f} s | {peak} |")
            except Exception as e:  # reported, the run goes on
                print(f"| `--reload-batch {batch}` | n/a: {e} | n/a |")
        log(f"memory sampling, {window} s window")
        cpu = sampling_cpu(binary, tmp, window, interval)
        print()
        print(f"Master CPU time over {window} s with {WORKERS} workers: "
              f"{cpu['on']} ms with `--max-worker-memory` measured every "
              f"{interval} s, {cpu['off']} ms without (clock ticks of 10 ms).")


if __name__ == "__main__":
    main()
