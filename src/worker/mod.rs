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

mod accepting;
use accepting::*;
mod conn;
use conn::*;
mod notifier;
use notifier::*;

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

#[cfg(test)]
mod tests;
