#!/usr/bin/env python3
"""Example upgrader worker: a tiny HTTP server on systemd-style passed sockets.

Standard library only (Python 3.11+).  Run it under upgrader:

    upgrader --workers 3 --bind 127.0.0.1:8000 --exec examples/python_app.py

Every GET is answered with one line of JSON describing the worker process and
what it inherited (fds, environment, signal masks), so tests can check the
master's hand-over contract.  See examples/README.md for the knobs (APP_*).
"""

# Snapshot the inherited fds before anything else opens one.  listdir() opens
# a directory fd of its own, which shows up in its listing; it is closed again
# by the time listdir() returns, so keeping only the fds that still answer
# fstat() drops exactly that one.
import os


def _snapshot_open_fds():
    fds = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            os.fstat(fd)
        except OSError:
            continue
        fds.append(fd)
    return sorted(fds)


STARTUP_OPEN_FDS = _snapshot_open_fds()

import errno  # noqa: E402
import json  # noqa: E402
import select  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

try:  # used for an interruptible accept on a *blocking* shared listener
    import ctypes  # noqa: E402
except ImportError:  # pragma: no cover - minimal Python builds
    ctypes = None

try:
    import fcntl  # noqa: E402
except ImportError:  # pragma: no cover - not Unix
    fcntl = None

PROG = "python_app"
HEAD_LIMIT = 8192
CONN_TIMEOUT = 5.0
# Upper bound on how long one accept() may block when the shared listener is
# in blocking mode and another worker won the race for the connection.
BLOCKING_ACCEPT_TIMEOUT = 0.1
ENV_PREFIXES = ("LISTEN_", "NOTIFY_", "WATCHDOG_", "UPGRADER_", "JOURNAL_")


def log(msg):
    print(f"{PROG}: {msg}", file=sys.stderr, flush=True)


def read_status_masks():
    """SigBlk and SigIgn of this process, as the hex strings the kernel shows.

    Note: CPython itself sets SIGPIPE and SIGXFSZ to SIG_IGN while starting,
    so SigIgn always has bits 0x1000 and 0x1000000 set here; any other bit was
    inherited from whoever exec'd us.
    """
    masks = {"SigBlk": None, "SigIgn": None}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in masks:
                    masks[key] = value.strip()
    except OSError:
        pass
    return masks["SigBlk"], masks["SigIgn"]


def env_int(name):
    value = os.environ.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return value


def env_flag(name):
    return os.environ.get(name, "") not in ("", "0")


def render_sockname(sock):
    try:
        name = sock.getsockname()
    except OSError as e:
        return f"<getsockname failed: {e.strerror}>"
    if isinstance(name, tuple):
        host, port = name[0], name[1]
        if sock.family == socket.AF_INET6:
            return f"[{host}]:{port}"
        return f"{host}:{port}"
    if isinstance(name, bytes):  # abstract unix socket
        return "@" + name.lstrip(b"\0").decode("utf-8", "backslashreplace")
    return str(name) if name else "<unnamed>"


class Notifier:
    """sd_notify(3) datagrams to $NOTIFY_SOCKET (no-op when it is unset)."""

    def __init__(self, path):
        self.addr = None
        self.sock = None
        if not path:
            return
        if path.startswith("@"):
            path = "\0" + path[1:]
        self.addr = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.lock = threading.Lock()

    def send(self, *lines):
        if self.sock is None:
            return
        msg = ("\n".join(lines) + "\n").encode()
        try:
            with self.lock:
                self.sock.sendto(msg, self.addr)
        except OSError as e:
            log(f"notify {lines!r} failed: {e}")


class App:
    def __init__(self):
        self.stopping = False
        self.child_pid = None
        self.listeners = []  # (fd, socket)
        self.notifier = None
        self.libc = None

    # ----------------------------------------------------------- boot ----
    def boot(self):
        sigblk, sigign = read_status_masks()
        env_keys = sorted(k for k in os.environ if k.startswith(ENV_PREFIXES))
        listen_pid = os.environ.get("LISTEN_PID")
        listen_fds = os.environ.get("LISTEN_FDS")
        listen_fdnames = os.environ.get("LISTEN_FDNAMES")

        if "APP_EXIT_CODE" in os.environ:
            code = int(os.environ["APP_EXIT_CODE"])
            log(f"exiting {code} at boot as asked")
            sys.exit(code)

        if "APP_CRASH_AFTER" in os.environ:
            # A release that passes readiness and crashes later (a bad
            # background job): serve, then exit CODE after SECS seconds.
            secs, _, code = os.environ["APP_CRASH_AFTER"].partition(":")
            code = int(code or "1")

            def crash():
                log(f"crashing with status {code} as asked")
                os._exit(code)

            timer = threading.Timer(float(secs), crash)
            timer.daemon = True
            timer.start()

        if listen_pid is not None and listen_pid != str(os.getpid()):
            log(f"error: LISTEN_PID={listen_pid} is not my pid {os.getpid()}; "
                "these sockets are not meant for me")
            sys.exit(3)
        try:
            nfds = int(listen_fds or "0")
        except ValueError:
            nfds = 0
        if nfds <= 0:
            log(f"error: no listening sockets passed (LISTEN_FDS={listen_fds!r})")
            sys.exit(3)
        fds = list(range(3, 3 + nfds))

        if env_flag("APP_FORK_CHILD"):
            self.child_pid = self.fork_sleeper(fds)

        for fd in fds:
            try:
                # family/type/proto are auto-detected from the fd.  This does
                # not change the (shared) O_NONBLOCK flag of the listener.
                sock = socket.socket(fileno=fd)
            except OSError as e:
                log(f"error: fd {fd} is not a usable socket: {e}")
                sys.exit(3)
            self.listeners.append((fd, sock))

        if ctypes is not None:
            try:
                self.libc = ctypes.CDLL(None, use_errno=True)
                self.libc.accept4.argtypes = [ctypes.c_int, ctypes.c_void_p,
                                              ctypes.c_void_p, ctypes.c_int]
                self.libc.accept4.restype = ctypes.c_int
            except (OSError, AttributeError):
                self.libc = None

        watchdog_usec = env_int("WATCHDOG_USEC")
        watchdog_pid = os.environ.get("WATCHDOG_PID")
        watchdog_on = isinstance(watchdog_usec, int) and watchdog_usec > 0 and (
            not watchdog_pid or watchdog_pid == str(os.getpid()))

        self.info = {
            "pid": os.getpid(),
            "ppid": os.getppid(),
            "pgid": os.getpgid(0),
            "listen_pid": listen_pid,
            "listen_fds": listen_fds,
            "listen_fdnames": listen_fdnames,
            "generation": env_int("UPGRADER_GENERATION"),
            "age": env_int("UPGRADER_WORKER_AGE"),
            "fd": None,
            "listeners": [[fd, render_sockname(s)] for fd, s in self.listeners],
            "open_fds": STARTUP_OPEN_FDS,
            "sigblk": sigblk,
            "sigign": sigign,
            "env_keys": env_keys,
            "child_pid": self.child_pid,
            "watchdog": "WATCHDOG_USEC" in os.environ,
        }
        log(f"pid {os.getpid()} serving fds {fds} names {listen_fdnames or ''}")

        # Signals: SIGTERM = graceful; SIGINT/SIGQUIT = exit at once.
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        signal.set_wakeup_fd(self.wake_w.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self.on_sigterm)
        signal.signal(signal.SIGINT, self.on_quit)
        signal.signal(signal.SIGQUIT, self.on_quit)
        signal.signal(signal.SIGALRM, lambda *_: None)  # only interrupts accept

        self.notifier = Notifier(os.environ.get("NOTIFY_SOCKET"))
        stop_watchdog = env_flag("APP_STOP_WATCHDOG")
        if stop_watchdog:
            signal.signal(signal.SIGABRT, signal.SIG_IGN)
        if env_flag("APP_NO_READY"):
            log("not sending READY=1 as asked")
        else:
            self.notifier.send("READY=1", f"STATUS=serving fds {fds}")

        if watchdog_on:
            interval = watchdog_usec / 4 / 1e6
            # The heartbeat thread must never be the one a process-directed
            # signal lands on: the main thread's blocking calls have to see
            # EINTR.  It inherits this mask; the main thread then restores it.
            old = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
            try:
                threading.Thread(target=self.heartbeat, args=(interval, stop_watchdog),
                                 name="watchdog", daemon=True).start()
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def fork_sleeper(self, fds):
        """APP_FORK_CHILD: a child in our process group that outlives us.

        It ignores SIGTERM, so only a SIGKILL to the group removes it.
        """
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            try:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                for fd in fds:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
                while True:
                    time.sleep(3600)
            finally:
                os._exit(0)
        log(f"forked child {pid} (ignores SIGTERM, same process group)")
        return pid

    def heartbeat(self, interval, stop_after_one):
        while not self.stopping:
            self.notifier.send("WATCHDOG=1")
            if stop_after_one:
                log("stopped sending WATCHDOG=1 as asked (SIGABRT is ignored)")
                return
            time.sleep(interval)

    # -------------------------------------------------------- signals ----
    def on_sigterm(self, signum, frame):
        self.stopping = True

    def on_quit(self, signum, frame):
        os._exit(0)

    # ----------------------------------------------------------- loop ----
    def serve(self):
        poller = select.poll()
        poller.register(self.wake_r.fileno(), select.POLLIN)
        by_fd = {}
        for fd, sock in self.listeners:
            poller.register(fd, select.POLLIN)
            by_fd[fd] = sock
        while not self.stopping:
            events = poller.poll()
            for fd, _ in events:
                if fd == self.wake_r.fileno():
                    try:
                        while self.wake_r.recv(512):
                            pass
                    except (BlockingIOError, InterruptedError):
                        pass
            for fd, _ in events:
                if self.stopping:
                    break
                if fd in by_fd:
                    conn = self.accept(fd, by_fd[fd])
                    if conn is not None:
                        self.handle(conn, fd)
        self.notifier.send("STOPPING=1")
        for _, sock in self.listeners:
            sock.close()
        log(f"pid {os.getpid()} stopped gracefully")

    def accept(self, fd, sock):
        """Accept one connection, or None if another worker took it.

        The listener is shared: its O_NONBLOCK flag belongs to the open file
        description and is whatever other processes left it at.  With
        O_NONBLOCK, EAGAIN means another worker won.  Without it, a losing
        accept() would block until the *next* connection; so it is bounded
        by a one-shot SIGALRM and done through libc, where an interrupting
        signal makes accept4() return EINTR instead of being retried.
        """
        blocking = True
        if fcntl is not None:
            blocking = not (fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK)
        if self.libc is None:
            try:
                conn, _ = sock.accept()
                return conn
            except (BlockingIOError, InterruptedError):
                return None
        if blocking:
            signal.setitimer(signal.ITIMER_REAL, BLOCKING_ACCEPT_TIMEOUT)
        try:
            new = self.libc.accept4(fd, None, None, socket.SOCK_CLOEXEC)
            err = ctypes.get_errno()
        finally:
            if blocking:
                signal.setitimer(signal.ITIMER_REAL, 0)
        if new < 0:
            if err in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR,
                       errno.ECONNABORTED):
                return None
            log(f"accept on fd {fd} failed: {os.strerror(err)}")
            time.sleep(0.01)
            return None
        return socket.socket(fileno=new)

    def handle(self, conn, fd):
        with conn:
            try:
                conn.settimeout(CONN_TIMEOUT)  # the connection only
                head = b""
                while b"\r\n\r\n" not in head and b"\n\n" not in head:
                    if len(head) >= HEAD_LIMIT:
                        return self.respond(conn, 431, "Request Header Fields Too Large",
                                            b"request head too large\n", "text/plain")
                    chunk = conn.recv(HEAD_LIMIT - len(head))
                    if not chunk:
                        return
                    head += chunk
                request_line = head.split(b"\n", 1)[0].strip().split()
                method = request_line[0] if request_line else b""
                if method not in (b"GET", b"HEAD"):
                    return self.respond(conn, 405, "Method Not Allowed",
                                        b"only GET\n", "text/plain")
                leak = env_int("APP_LEAK_MB")
                if isinstance(leak, int) and leak > 0:
                    # A leaking app: keep LEAK MB of touched pages per request.
                    LEAKED.append(b"x" * (leak << 20))
                info = dict(self.info, fd=fd)
                body = (json.dumps(info, separators=(",", ":")) + "\n").encode()
                self.respond(conn, 200, "OK", body, "application/json",
                             slow_ms=env_int("APP_SLOW_MS"),
                             head_only=method == b"HEAD")
            except OSError:
                pass  # client went away or timed out: nothing to finish

    def respond(self, conn, code, reason, body, ctype, slow_ms=None, head_only=False):
        head = (f"HTTP/1.0 {code} {reason}\r\n"
                f"Content-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n").encode()
        if isinstance(slow_ms, int) and slow_ms > 0:
            conn.sendall(head)
            time.sleep(slow_ms / 1000)  # SIGTERM does not cut this short
            head = b""
        conn.sendall(head if head_only else head + body)
        try:
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass


LEAKED = []  # APP_LEAK_MB


def main():
    app = App()
    app.boot()
    app.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
