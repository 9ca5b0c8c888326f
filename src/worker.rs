//! The built-in sync worker: a forked copy of the master that accepts
//! on every listener and answers one HTTP request per connection,
//! gunicorn "sync worker" style.
//!
//! It waits only in poll (listeners, its signalfd, the heartbeat
//! deadline) and accepts until EAGAIN, because the listening sockets'
//! open file description is shared by every process: another worker may
//! have taken the connection poll announced, and an exec'd app may have
//! set O_NONBLOCK on it, or not. TERM is read from a signalfd between
//! requests, so the request in hand always finishes; QUIT and INT exit
//! at once.

use std::cell::Cell;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFlags, PollTimeout};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::signal::Signal;
use nix::sys::signalfd::SignalFd;
use nix::sys::socket::{self, MsgFlags};
use nix::unistd::{Pid, getpid};

use crate::http::{self, Info, ReadOutcome};
use crate::sys;

/// The signals a built-in worker reads from its signalfd; blocked from
/// the moment it is forked.
pub const SIGNALS_READ: [Signal; 2] = [Signal::SIGTERM, Signal::SIGUSR1];

pub struct Params {
    pub master: Pid,
    pub age: u64,
    pub generation: u64,
    pub listeners: Vec<RawFd>,
    pub notify: PathBuf,
    pub timeout: Option<Duration>,
    /// 0 = never restart.
    pub max_requests: u64,
    pub client_timeout: Duration,
    /// `UPGRADER_TEST_HOOKS=1`: the `/_test/` paths (see `hook`); only
    /// debug builds and builds with the `test-hooks` feature have them.
    pub hooks: bool,
}

/// `--max-requests` plus a per-worker share of the jitter.
pub fn with_jitter(max: u64, jitter: u64, age: u64) -> u64 {
    if max == 0 || jitter == 0 {
        return max;
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    let mix = nanos ^ age.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    max + mix % (jitter + 1)
}

/// The worker's whole life. Never returns.
pub fn run(p: Params) -> ! {
    let me = getpid();
    crate::logging::set_role(crate::pool::role(me, p.generation, p.age));
    let mut keep = p.listeners.clone();
    keep.extend(crate::logging::file_fd());
    // SAFETY: the freshly forked worker, before it serves: the master's
    // descriptors it closes are never used in this process.
    #[allow(unsafe_code)]
    unsafe {
        sys::close_fds_except(&mut keep)
    };
    // A panic must end this process here: unwinding would return into
    // the master's loop, in the child, and make a second master. (The
    // release profile aborts on panic anyway; this covers debug builds.)
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        serve(&p, me)
    }));
    match r {
        Ok(Ok(())) => sys::exit_now(0),
        Ok(Err(e)) => {
            log::error!("{e:#}");
            sys::exit_now(1)
        }
        Err(_) => sys::exit_now(70), // EX_SOFTWARE; the panic hook printed why
    }
}

fn serve(p: &Params, me: Pid) -> anyhow::Result<()> {
    use anyhow::Context;
    sys::exit_zero_on(&[Signal::SIGQUIT, Signal::SIGINT])
        .context("signal handlers")?;
    let signals = crate::signals::block_into_fd(&SIGNALS_READ)?;
    let listeners: Vec<BorrowedFd<'_>> =
        p.listeners.iter().map(|&fd| borrow(fd)).collect();
    for l in &listeners {
        let flags = fcntl(*l, FcntlArg::F_GETFL).context("F_GETFL")?;
        let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
        fcntl(*l, FcntlArg::F_SETFL(flags)).context("F_SETFL")?;
    }
    // The signalfd is an ordinary member of the set (see `watch`).
    let ep = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).context("epoll")?;
    for (i, l) in listeners.iter().enumerate() {
        watch(&ep, *l, i)?;
    }
    ep.add(&signals, EpollEvent::new(EpollFlags::EPOLLIN, SIGNALS))
        .context("epoll_ctl signalfd")?;
    let notify = Notifier::new(&p.notify);
    notify.send_ready();
    log::debug!("accepting");
    let mut beat = Heartbeat::new(p.timeout);
    let mut served: u64 = 0;
    let mut buf = Box::new([0u8; http::MAX_HEAD]);
    let mut events = [EpollEvent::empty(); 16];
    let mut spare = Spare::open();
    let mut paused = Paused::new(listeners.len());
    loop {
        let now = Instant::now();
        for i in paused.due(now) {
            if let Some(l) = listeners.get(i) {
                watch(&ep, *l, i)?;
            }
        }
        let wait = earliest(beat.next_due(), paused.next_due());
        let n = match ep.wait(&mut events, poll_timeout(wait, now)) {
            Ok(n) => n,
            Err(Errno::EINTR) => 0,
            Err(e) => return Err(e).context("epoll_wait"),
        };
        for ev in &events[..n] {
            if ev.data() == SIGNALS {
                if handle_signals(&signals, &notify) {
                    return Ok(());
                }
                continue;
            }
            let i = ev.data() as usize;
            let Some(l) = listeners.get(i) else {
                continue;
            };
            // Accept until EAGAIN (someone else took it, or the queue is
            // empty), beating as we go.
            loop {
                let conn = match accept(*l, &mut spare)? {
                    Accepted::Conn(c) => c,
                    Accepted::Refused => continue,
                    Accepted::Empty => break,
                    Accepted::Pause => {
                        // Level-triggered epoll would report this
                        // listener again at once: a busy loop. Leave it
                        // out for a moment instead.
                        let _ = ep.delete(*l);
                        if paused.pause(i, Instant::now()) {
                            log::debug!(
                                "listener {i}: not accepting: retrying every \
                                 {} ms",
                                PAUSE.as_millis()
                            );
                        }
                        break;
                    }
                };
                if paused.accepted(i) {
                    log::debug!("listener {i}: accepting again");
                }
                served += 1;
                let info = Info {
                    master_pid: p.master.as_raw() as u32,
                    worker_pid: me.as_raw() as u32,
                    worker_age: p.age,
                    generation: p.generation,
                    requests: served,
                    version: env!("CARGO_PKG_VERSION"),
                };
                handle(conn, &info, p, &mut buf);
                beat.maybe_send(&notify, Instant::now(), served);
                if p.max_requests > 0 && served >= p.max_requests {
                    log::info!("served {served} requests: restarting");
                    notify.send("STOPPING=1");
                    return Ok(());
                }
                // Under a saturating load the queue never runs dry, so
                // TERM must be looked at between connections, not only
                // when epoll reports the signalfd (one cheap read).
                if handle_signals(&signals, &notify) {
                    return Ok(());
                }
            }
        }
        beat.maybe_send(&notify, Instant::now(), served);
    }
}

/// Adds listener `i` to the epoll set. EPOLLEXCLUSIVE: a connection
/// wakes one idle worker, not all of them (the thundering herd a plain
/// poll on a shared listener has; nginx does the same).
fn watch(ep: &Epoll, l: BorrowedFd<'_>, i: usize) -> anyhow::Result<()> {
    use anyhow::Context;
    let ev = EpollEvent::new(
        EpollFlags::EPOLLIN | EpollFlags::EPOLLEXCLUSIVE,
        i as u64,
    );
    ep.add(l, ev).context("epoll_ctl listener")
}

/// How long a listener stays out of the epoll set after it stopped
/// listening or the worker ran out of descriptors.
const PAUSE: Duration = Duration::from_millis(100);

/// Listeners left out of the epoll set for a moment, and which are in
/// an episode of trouble (so it is logged once, not every pause).
struct Paused {
    until: Vec<Option<Instant>>,
    troubled: Vec<bool>,
}

impl Paused {
    fn new(n: usize) -> Paused {
        Paused {
            until: vec![None; n],
            troubled: vec![false; n],
        }
    }

    /// Pauses listener `i`; true if this starts an episode.
    fn pause(&mut self, i: usize, now: Instant) -> bool {
        if let Some(u) = self.until.get_mut(i) {
            *u = Some(now + PAUSE);
        }
        self.troubled
            .get_mut(i)
            .is_some_and(|t| !std::mem::replace(t, true))
    }

    /// Listener `i` accepted a connection; true if that ends an episode.
    fn accepted(&mut self, i: usize) -> bool {
        self.troubled
            .get_mut(i)
            .is_some_and(|t| std::mem::replace(t, false))
    }

    /// The listeners whose pause is over (taken out of the set).
    fn due(&mut self, now: Instant) -> Vec<usize> {
        let mut out = Vec::new();
        for (i, u) in self.until.iter_mut().enumerate() {
            if u.is_some_and(|t| t <= now) {
                *u = None;
                out.push(i);
            }
        }
        out
    }

    fn next_due(&self) -> Option<Instant> {
        self.until.iter().flatten().min().copied()
    }
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// epoll's timeout until `deadline` (none: forever), rounded up: a
/// sub-millisecond remainder must not become a zero timeout and a busy
/// loop.
fn poll_timeout(deadline: Option<Instant>, now: Instant) -> PollTimeout {
    match deadline {
        None => PollTimeout::NONE,
        Some(d) => {
            let left = d.saturating_duration_since(now);
            let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128);
            PollTimeout::try_from(ms as i32).unwrap_or(PollTimeout::MAX)
        }
    }
}

/// The epoll token of the signalfd (listeners are 0..N).
const SIGNALS: u64 = u64::MAX;

/// TERM: stop (true); USR1: reopen the log file.
fn handle_signals(signals: &SignalFd, notify: &Notifier) -> bool {
    let mut stop = false;
    for sig in crate::signals::drain(signals) {
        match sig {
            Signal::SIGTERM => stop = true,
            Signal::SIGUSR1 => {
                if let Err(e) = crate::logging::reopen() {
                    log::error!("{e:#}");
                }
            }
            _ => {}
        }
    }
    if stop {
        log::debug!("TERM: stopping");
        notify.send("STOPPING=1");
    }
    stop
}

fn borrow(fd: RawFd) -> BorrowedFd<'static> {
    // SAFETY: the listener descriptors are inherited from the master and
    // stay open until this process exits; nothing in the worker closes
    // them.
    #[allow(unsafe_code)]
    let fd = unsafe { sys::borrow_forever(fd) };
    fd
}

/// What one accept found.
#[derive(Debug)]
enum Accepted {
    Conn(OwnedFd),
    /// Out of descriptors: one queued connection was answered 503 and
    /// closed through the spare descriptor; try the next.
    Refused,
    /// Nothing queued (or another worker took it).
    Empty,
    /// Not accepting on this listener for a moment: it is not listening
    /// (EINVAL: an exec'd app called shutdown() on the shared socket;
    /// the master restores it), or no descriptor is to be had at all.
    Pause,
}

fn accept(l: BorrowedFd<'_>, spare: &mut Spare) -> anyhow::Result<Accepted> {
    loop {
        match sys::accept(l) {
            Ok(fd) => {
                spare.recovered();
                return Ok(Accepted::Conn(fd));
            }
            Err(Errno::EAGAIN) => return Ok(Accepted::Empty),
            Err(Errno::EINTR) => continue,
            // The connection was reset while queued, or memory is short
            // for a moment: not this worker's death.
            Err(
                Errno::ECONNABORTED
                | Errno::EPROTO
                | Errno::ENOBUFS
                | Errno::ENOMEM,
            ) => return Ok(Accepted::Empty),
            Err(e @ (Errno::EMFILE | Errno::ENFILE)) => {
                return Ok(spare.refuse_one(l, e));
            }
            Err(Errno::EINVAL) => return Ok(Accepted::Pause),
            Err(e) => {
                return Err(anyhow::anyhow!("accept: {}", e.desc()));
            }
        }
    }
}

/// A descriptor kept open (on /dev/null) to be given up when accept
/// fails with EMFILE/ENFILE: closing it makes room to accept the
/// queued connection and close it at once, so the client gets an
/// answer instead of waiting in the queue forever, and level-triggered
/// epoll does not wake the worker again for the same connection
/// (libev's and libuv's trick).
struct Spare {
    fd: Option<std::fs::File>,
    /// Exhaustion was logged and has not ended since.
    warned: bool,
}

impl Spare {
    fn open() -> Spare {
        Spare {
            fd: std::fs::File::open("/dev/null").ok(),
            warned: false,
        }
    }

    fn refuse_one(&mut self, l: BorrowedFd<'_>, e: Errno) -> Accepted {
        if !self.warned {
            self.warned = true;
            let limit = nix::sys::resource::getrlimit(
                nix::sys::resource::Resource::RLIMIT_NOFILE,
            )
            .map_or_else(
                |_| "unknown".to_string(),
                |(soft, _)| soft.to_string(),
            );
            log::warn!(
                "accept: {} (descriptor limit {limit}): answering 503 to new \
                 connections until descriptors are free",
                e.desc().to_lowercase()
            );
        }
        if self.fd.take().is_none() {
            return Accepted::Pause;
        }
        let r = match sys::accept(l) {
            Ok(conn) => {
                refuse(conn);
                Accepted::Refused
            }
            Err(Errno::EAGAIN) => Accepted::Empty,
            Err(_) => Accepted::Pause,
        };
        self.fd = std::fs::File::open("/dev/null").ok();
        if self.fd.is_none() {
            return Accepted::Pause;
        }
        r
    }

    /// An accept worked: the episode, if any, is over.
    fn recovered(&mut self) {
        if self.fd.is_none() {
            self.fd = std::fs::File::open("/dev/null").ok();
        }
        if self.warned && self.fd.is_some() {
            self.warned = false;
            log::info!("accept: descriptors available again");
        }
    }
}

/// Answers 503 without waiting for the request, and closes. Nothing
/// here blocks: whatever does not fit at once is dropped.
fn refuse(conn: OwnedFd) {
    use std::os::fd::AsRawFd;
    let fd = conn.as_raw_fd();
    let mut sink = [0u8; 1024];
    // Unread input makes close send RST, which may destroy the answer.
    while let Ok(n) = socket::recv(fd, &mut sink, MsgFlags::MSG_DONTWAIT) {
        if n == 0 {
            break;
        }
    }
    let body = "503 Service Unavailable\n";
    let msg = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; \
         charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = socket::send(
        fd,
        msg.as_bytes(),
        MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
    );
    let _ = socket::shutdown(fd, socket::Shutdown::Write);
}

/// Serves one connection; errors are the client's problem, logged at
/// debug.
fn handle(
    conn: OwnedFd,
    info: &Info,
    p: &Params,
    buf: &mut [u8; http::MAX_HEAD],
) {
    let mut conn = Conn::new(conn, p.client_timeout);
    let r = match http::read_request(&mut conn, buf) {
        Ok(ReadOutcome::Request(req)) => {
            if let Some(r) = test_hook(&mut conn, &req, info, p) {
                r
            } else {
                let body = http::info_body(info);
                http::write_response(
                    &mut conn,
                    200,
                    "application/json",
                    body.as_bytes(),
                    req.head_only,
                )
            }
        }
        Ok(ReadOutcome::Rejected(r)) => {
            http::write_rejection(&mut conn, r).map(|()| conn.linger())
        }
        Ok(ReadOutcome::Closed) => Ok(()),
        Err(e) => Err(e),
    };
    if let Err(e) = r {
        log::debug!("connection: {e}");
    }
}

/// The test seams, when this build has them and they are switched on.
#[cfg(any(debug_assertions, feature = "test-hooks"))]
fn test_hook(
    conn: &mut Conn,
    req: &http::Request,
    info: &Info,
    p: &Params,
) -> Option<io::Result<()>> {
    (p.hooks && req.path.starts_with("/_test/")).then(|| hook(conn, req, info))
}

/// A release build without the `test-hooks` feature has no test seams:
/// `/_test/` paths are ordinary paths whatever the environment says.
#[cfg(not(any(debug_assertions, feature = "test-hooks")))]
fn test_hook(
    _: &mut Conn,
    _: &http::Request,
    _: &Info,
    p: &Params,
) -> Option<io::Result<()>> {
    if p.hooks {
        log::debug!(
            "UPGRADER_TEST_HOOKS ignored: this build has no test hooks"
        );
    }
    None
}

/// Test seams, compiled only into debug builds and builds with the
/// `test-hooks` feature, and reachable only with `UPGRADER_TEST_HOOKS=1`
/// in the master's environment (the integration tests set it):
/// * `/_test/slow?ms=N`: sends the head, waits N ms, sends the body (a
///   request verifiably in flight);
/// * `/_test/hang`: stops serving and beating; `/_test/hang?ignore`
///   also blocks every signal, so only SIGKILL ends it;
/// * `/_test/exit?code=N`: exits with status N (a crash).
#[cfg(any(debug_assertions, feature = "test-hooks"))]
fn hook(conn: &mut Conn, req: &http::Request, info: &Info) -> io::Result<()> {
    let (path, query) = req.path.split_once('?').unwrap_or((&req.path, ""));
    let num = |key: &str| -> u64 {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    match path {
        "/_test/slow" => {
            let body = http::info_body(info);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            conn.write_all(head.as_bytes())?;
            std::thread::sleep(Duration::from_millis(num("ms")));
            conn.write_all(body.as_bytes())
        }
        "/_test/hang" => {
            if query.contains("ignore") {
                let _ = nix::sys::signal::SigSet::all().thread_block();
            }
            log::warn!("test hook: hanging");
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        "/_test/exit" => {
            log::warn!("test hook: exiting {}", num("code"));
            sys::exit_now(num("code") as i32)
        }
        _ => http::write_response(
            conn,
            200,
            "text/plain",
            b"no such hook\n",
            false,
        ),
    }
}

/// An accepted connection, non-blocking: read and send go straight to
/// the kernel, and only when one would block does the worker wait in
/// poll, up to the connection's deadline. The request is nearly always
/// there already and the response fits the socket buffer, so the common
/// case costs no timeout syscalls at all. Sends use MSG_NOSIGNAL so a
/// vanished client is an EPIPE, not a SIGPIPE.
struct Conn {
    fd: OwnedFd,
    deadline: Instant,
}

impl Conn {
    fn new(fd: OwnedFd, timeout: Duration) -> Conn {
        Conn {
            fd,
            deadline: Instant::now() + timeout,
        }
    }

    /// Waits until the socket is ready for `what`, or the deadline.
    fn wait(&self, what: PollFlags) -> io::Result<()> {
        match sys::wait_for(self.fd.as_fd(), what, self.deadline) {
            Ok(true) => Ok(()),
            Ok(false) => Err(io::ErrorKind::TimedOut.into()),
            Err(e) => Err(e.into()),
        }
    }

    /// After a rejection the client may still be sending: closing with
    /// unread input makes the kernel send RST, and the client may lose
    /// our answer. So half-close, then drain briefly (bounded in bytes
    /// and time), as gunicorn's close_graceful and nginx's lingering
    /// close do.
    fn linger(&mut self) {
        use std::os::fd::AsRawFd;
        let _ = socket::shutdown(self.fd.as_raw_fd(), socket::Shutdown::Write);
        self.deadline = Instant::now() + Duration::from_millis(200);
        let mut sink = [0u8; 4096];
        for _ in 0..64 {
            match self.read(&mut sink) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match nix::unistd::read(&self.fd, buf) {
                Err(Errno::EAGAIN) => self.wait(PollFlags::POLLIN)?,
                Err(Errno::EINTR) => {}
                r => return r.map_err(io::Error::from),
            }
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        loop {
            match socket::send(
                self.fd.as_raw_fd(),
                buf,
                MsgFlags::MSG_NOSIGNAL,
            ) {
                Err(Errno::EAGAIN) => self.wait(PollFlags::POLLOUT)?,
                Err(Errno::EINTR) => {}
                r => return r.map_err(io::Error::from),
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Sends sd_notify datagrams to the master's private socket, without
/// ever blocking on a heartbeat: the socket is connected (so poll can
/// tell when the master's queue has room) and non-blocking. When the
/// master does not read (stopped, in a debugger) its queue
/// (net.unix.max_dgram_qlen, 10 by default) fills and a blocking send
/// would stop every worker from serving; a dropped beat costs nothing.
struct Notifier {
    sock: Option<UnixDatagram>,
    path: PathBuf,
    /// Beats are being dropped (logged once per burst).
    dropping: Cell<bool>,
}

impl Notifier {
    fn new(path: &Path) -> Notifier {
        let sock = UnixDatagram::unbound().ok().filter(|s| {
            s.connect(path).is_ok() && s.set_nonblocking(true).is_ok()
        });
        Notifier {
            sock,
            path: path.to_path_buf(),
            dropping: Cell::new(false),
        }
    }

    /// Sends `text` if the master's queue has room; drops it otherwise.
    fn send(&self, text: &str) {
        let Some(s) = &self.sock else { return };
        match s.send(text.as_bytes()) {
            Ok(_) => self.dropping.set(false),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if !self.dropping.replace(true) {
                    log::debug!(
                        "notify {}: the master's queue is full: dropping \
                         heartbeats",
                        self.path.display()
                    );
                }
            }
            Err(e) => log::debug!("notify {}: {e}", self.path.display()),
        }
    }

    /// `READY=1` must arrive (no heartbeat stands in for it), so this
    /// one waits for room in the master's queue. Before it the worker
    /// serves nobody, so waiting costs no client anything.
    fn send_ready(&self) {
        let Some(s) = &self.sock else { return };
        loop {
            match s.send(b"READY=1") {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let a_while = Instant::now() + Duration::from_secs(1);
                    let _ =
                        sys::wait_for(s.as_fd(), PollFlags::POLLOUT, a_while);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("notify {}: {e}", self.path.display());
                    return;
                }
                Ok(_) => return,
            }
        }
    }
}

/// `WATCHDOG=1` at most every timeout/4: often enough that one late
/// datagram is no death, rarely enough to cost nothing per request.
struct Heartbeat {
    every: Option<Duration>,
    next: Instant,
}

impl Heartbeat {
    fn new(timeout: Option<Duration>) -> Heartbeat {
        let every = timeout.map(|t| (t / 4).max(Duration::from_millis(10)));
        Heartbeat {
            every,
            next: Instant::now() + every.unwrap_or_default(),
        }
    }

    /// When the next beat is due (none: never).
    fn next_due(&self) -> Option<Instant> {
        self.every.map(|_| self.next)
    }

    fn maybe_send(&mut self, n: &Notifier, now: Instant, served: u64) {
        if let Some(every) = self.every
            && now >= self.next
        {
            n.send(&format!("WATCHDOG=1\nX_REQUESTS={served}"));
            self.next = now + every;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_in_range() {
        assert_eq!(with_jitter(0, 50, 1), 0);
        assert_eq!(with_jitter(100, 0, 1), 100);
        for age in 0..50 {
            let n = with_jitter(100, 10, age);
            assert!((100..=110).contains(&n), "{n}");
        }
    }

    #[test]
    fn heartbeat_off_means_no_wakeups() {
        let h = Heartbeat::new(None);
        assert_eq!(
            poll_timeout(h.next_due(), Instant::now()),
            PollTimeout::NONE
        );
        let h = Heartbeat::new(Some(Duration::from_secs(4)));
        assert_ne!(
            poll_timeout(h.next_due(), Instant::now()),
            PollTimeout::NONE
        );
    }

    #[test]
    fn a_listener_that_stopped_listening_pauses_not_fails() {
        use std::os::fd::AsFd;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let mut spare = Spare::open();
        assert!(matches!(accept(l.as_fd(), &mut spare), Ok(Accepted::Empty)));
        // What an exec'd app does to the shared socket.
        socket::shutdown(
            std::os::fd::AsRawFd::as_raw_fd(&l),
            socket::Shutdown::Both,
        )
        .unwrap();
        let r = accept(l.as_fd(), &mut spare);
        assert!(matches!(r, Ok(Accepted::Pause)), "{r:?}");
    }

    #[test]
    fn a_paused_listener_comes_back_after_the_pause() {
        let t0 = Instant::now();
        let mut p = Paused::new(2);
        assert_eq!(p.next_due(), None);
        assert!(p.pause(1, t0), "starts an episode");
        assert_eq!(p.next_due(), Some(t0 + PAUSE));
        assert!(p.due(t0).is_empty());
        assert_eq!(p.due(t0 + PAUSE), vec![1]);
        assert_eq!(p.next_due(), None);
        assert!(p.due(t0 + PAUSE * 2).is_empty());
        assert!(!p.pause(1, t0), "the same episode");
        assert!(p.accepted(1), "ends it");
        assert!(!p.accepted(1));
        assert!(!p.accepted(0));
    }

    #[test]
    fn poll_timeout_rounds_up() {
        let now = Instant::now();
        let t = poll_timeout(Some(now + Duration::from_micros(10)), now);
        assert_eq!(t, PollTimeout::try_from(1).unwrap());
        assert_eq!(poll_timeout(Some(now), now), PollTimeout::ZERO);
        assert_eq!(earliest(Some(now), Some(now + PAUSE)), Some(now));
        assert_eq!(earliest(None, Some(now)), Some(now));
    }
}
