#!/usr/bin/env python3
"""Example upgrader worker that cannot boot without its configuration.

Like many real apps, it needs DATABASE_URL and exits 1 at boot when that is
missing (a plain exit 1, not gunicorn's 3): the master has to recognise an
exit before READY=1 as a boot failure on its own.

    upgrader --workers 2 --bind 127.0.0.1:8000 --exec examples/failing_app.py
    DATABASE_URL=sqlite:// upgrader --workers 2 --bind 127.0.0.1:8000 \
        --exec examples/failing_app.py

With DATABASE_URL set it is a trivial server on fd 3 that answers "ok".
Standard library only.
"""

import os
import select
import signal
import socket
import sys
import threading
import time

PROG = "failing_app"
RESPONSE = (b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n"
            b"Content-Length: 3\r\nConnection: close\r\n\r\nok\n")


def notify(msg):
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            s.sendto(msg.encode(), path)
        except OSError as e:
            print(f"{PROG}: notify failed: {e}", file=sys.stderr)


def main():
    if not os.environ.get("DATABASE_URL"):
        print(f"{PROG}: error: DATABASE_URL is not set", file=sys.stderr, flush=True)
        return 1
    listen_pid = os.environ.get("LISTEN_PID")
    if listen_pid and listen_pid != str(os.getpid()):
        print(f"{PROG}: error: LISTEN_PID={listen_pid} is not my pid", file=sys.stderr)
        return 3
    if int(os.environ.get("LISTEN_FDS", "0") or "0") < 1:
        print(f"{PROG}: error: no listening socket on fd 3", file=sys.stderr)
        return 3
    listener = socket.socket(fileno=3)  # never change its blocking mode: shared

    state = {"busy": False, "stopping": False}

    def on_term(signum, frame):
        # Graceful: finish the request in hand, otherwise leave right away
        # (this also gets us out of a blocking accept() that lost the race).
        if state["busy"]:
            state["stopping"] = True
        else:
            sys.exit(0)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGQUIT, lambda *_: os._exit(0))
    signal.signal(signal.SIGINT, lambda *_: os._exit(0))

    usec = os.environ.get("WATCHDOG_USEC")
    wd_pid = os.environ.get("WATCHDOG_PID")
    if usec and usec.isdigit() and int(usec) > 0 and wd_pid in (None, "", str(os.getpid())):
        def heartbeat(interval=int(usec) / 4 / 1e6):
            while True:
                notify("WATCHDOG=1\n")
                time.sleep(interval)

        old = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        threading.Thread(target=heartbeat, daemon=True).start()
        signal.pthread_sigmask(signal.SIG_SETMASK, old)

    notify("READY=1\n")
    print(f"{PROG}: pid {os.getpid()} serving fd 3", file=sys.stderr, flush=True)
    while not state["stopping"]:
        readable, _, _ = select.select([listener], [], [], 1.0)
        if not readable:
            continue
        try:
            conn, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            continue  # another worker took it
        state["busy"] = True
        with conn:
            try:
                conn.settimeout(5.0)
                head = b""
                while b"\r\n\r\n" not in head and b"\n\n" not in head and len(head) < 8192:
                    chunk = conn.recv(8192)
                    if not chunk:
                        break
                    head += chunk
                conn.sendall(RESPONSE)
            except OSError:
                pass
        state["busy"] = False
    return 0


if __name__ == "__main__":
    sys.exit(main())
