//! The master's end of the control socket behind `upgrader -s` (the
//! protocol, both ends, is `control::wire`): served from the master's
//! own poll loop, open to root and the master's own user only
//! (SO_PEERCRED).
//!
//! A client sends one request line; the master answers when the act is
//! complete or has failed, so scripts get an honest exit status.
//! Waiting clients are parked until the event that settles them hands
//! them its outcome (`answer_waiting`): a reload's, an upgrade's, or the
//! master's exit (their connection simply closes).

use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::socket::{getsockopt, sockopt};
use nix::unistd::Pid;

use super::Master;
use crate::control::status::{
    ListenerStatus, Status, UpgradeStatus, WorkerStatus,
};
use crate::control::wire::{self, Reply, Request};
use crate::pool::State;

pub(super) fn bind(pid: Pid) -> Result<UnixListener> {
    let name = wire::socket_name(pid);
    let addr = wire::address(pid).context("control socket name")?;
    let l = UnixListener::bind_addr(&addr)
        .with_context(|| format!("control socket @{name}"))?;
    l.set_nonblocking(true).context("control socket")?;
    Ok(l)
}

/// How long the control socket is not listened to when the master is
/// out of descriptors and has no spare one.
pub(super) const PAUSE: Duration = Duration::from_secs(1);

fn is_fd_exhaustion(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(nix::libc::EMFILE | nix::libc::ENFILE)
    )
}

/// How many control clients the master holds at once: half its
/// descriptor limit at start, between 16 and 1024. Each client holds a
/// descriptor (a silent one for up to `REQUEST_TIMEOUT`), and the other
/// half must stay free for the master's own work: an exec worker's spawn
/// and an upgrade need pipes. Without a bound, idle `-s` connections
/// under `ulimit -n 64` made every spawn of a reload fail with EMFILE
/// until they timed out. Past the bound the control socket is not
/// polled: connections wait in its backlog until a client leaves.
/// (Below about 40 descriptors, 16 clients can still exhaust them; the
/// spare descriptor handles that.)
pub(super) fn max_clients() -> usize {
    use nix::sys::resource::{Resource, getrlimit};
    client_bound(getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(s, _)| s))
}

/// `max_clients` for a soft descriptor limit.
fn client_bound(soft_limit: u64) -> usize {
    usize::try_from(soft_limit / 2)
        .unwrap_or(usize::MAX)
        .clamp(16, 1024)
}

/// A descriptor kept in reserve, so that a connection can still be taken
/// (and closed) when the process is out of descriptors.
pub(super) fn spare_fd() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}

/// The soft limit on open descriptors, for messages.
pub(super) fn fd_limit() -> String {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| soft.to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn and_more(n: u64) -> String {
    match n {
        0 => String::new(),
        n => format!(" (and {n} more in the last second)"),
    }
}

/// An outcome delivered to waiting clients.
pub(super) enum Answer {
    /// The reload to this generation is complete.
    Reloaded(u64),
    /// The new master is ready (the client then waits for this master's
    /// exit).
    NewMaster(nix::unistd::Pid),
    Failed(String),
}

/// What a parked client waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wait {
    /// A request line.
    Request,
    /// The reload to this generation to settle.
    Reload(u64),
    /// The upgrade to settle.
    Upgrade,
    /// The master's exit (the connection closes).
    Exit,
}

pub(super) struct Client {
    stream: UnixStream,
    buf: Vec<u8>,
    pub(super) wait: Wait,
    /// Answered: dropped once `out` is written.
    done: bool,
    /// Written to the client but not yet taken by the kernel: the master
    /// never blocks on a client that does not read.
    out: Vec<u8>,
    /// A client must send its request by then, or it is dropped (a
    /// silent connection must not hold a descriptor for ever); and must
    /// read its answer by then.
    pub(super) request_by: Instant,
    flush_by: Option<Instant>,
    /// The connection failed: drop it.
    broken: bool,
}

/// How long a control client has to send its one-line request, and to
/// read an answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

impl Client {
    pub(super) fn fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }

    /// Whether the master waits to write more to it.
    pub(super) fn wants_write(&self) -> bool {
        !self.out.is_empty()
    }

    /// The next instant this client needs attention, if any.
    pub(super) fn deadline(&self) -> Option<Instant> {
        match (self.wait, self.flush_by) {
            (_, Some(t)) if self.wants_write() => Some(t),
            (Wait::Request, _) => Some(self.request_by),
            _ => None,
        }
    }

    /// Queues `text` and writes what the socket takes now.
    fn send(&mut self, text: &str) {
        self.out.extend_from_slice(text.as_bytes());
        if self.flush_by.is_none() {
            self.flush_by = Some(Instant::now() + REQUEST_TIMEOUT);
        }
        self.flush();
    }

    fn flush(&mut self) {
        while !self.out.is_empty() {
            match (&self.stream).write(&self.out) {
                Ok(0) => self.broken = true,
                Ok(n) => {
                    self.out.drain(..n);
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => self.broken = true,
            }
            break;
        }
        if self.out.is_empty() {
            self.flush_by = None;
        }
    }

    /// The final reply; the connection closes once it is written.
    fn reply(&mut self, r: &Reply) {
        self.send(&r.line());
        self.done = true;
    }

    /// Finished with, or given up on.
    fn gone(&self, now: Instant) -> bool {
        self.broken
            || (self.done && self.out.is_empty())
            || self.flush_by.is_some_and(|t| t <= now)
    }
}

/// Refused connections, logged at most once a second with a count (any
/// local user can connect, and must not be able to flood the log).
#[derive(Default)]
pub(super) struct Refusals {
    logged: Option<Instant>,
    since: u64,
}

impl Refusals {
    /// Whether to log this refusal now, and how many went unlogged.
    fn note(&mut self, now: Instant) -> Option<u64> {
        if self
            .logged
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            self.since += 1;
            return None;
        }
        self.logged = Some(now);
        Some(std::mem::take(&mut self.since))
    }
}

impl Master {
    /// New connections on the control socket.
    pub(super) fn control_accept(&mut self) {
        let Some(l) = &self.control else { return };
        // Bounded per round, like every other source.
        for _ in 0..64 {
            if self.clients.len() >= self.max_clients {
                log::debug!(
                    "control: {} clients at once; more wait",
                    self.max_clients
                );
                return;
            }
            let stream = match l.accept() {
                Ok((stream, _)) => stream,
                Err(e) if is_fd_exhaustion(&e) => {
                    // The connection stays queued and the socket readable:
                    // without a descriptor to take it with, the loop would
                    // spin. Spend the spare one on it (and close it at once).
                    self.spare.take();
                    let _ = l.accept();
                    self.spare = spare_fd();
                    let now = Instant::now();
                    if let Some(more) = self.fd_refusals.note(now) {
                        log::error!(
                            "control: out of file descriptors (limit {}): \
                             dropped a client{}",
                            fd_limit(),
                            and_more(more)
                        );
                    }
                    if self.spare.is_none() {
                        // No spare either: stop listening a moment.
                        self.control_paused = Some(now + PAUSE);
                    }
                    return;
                }
                Err(_) => return,
            };
            let uid = getsockopt(&stream, sockopt::PeerCredentials)
                .map(|c| c.uid())
                .unwrap_or(u32::MAX);
            if uid != 0 && uid != nix::unistd::geteuid().as_raw() {
                if let Some(more) = self.refusals.note(Instant::now()) {
                    log::warn!(
                        "control: refused a client of uid {uid}{}",
                        and_more(more)
                    );
                }
                continue;
            }
            let _ = stream.set_nonblocking(true);
            self.clients.push(Client {
                stream,
                buf: Vec::new(),
                wait: Wait::Request,
                done: false,
                out: Vec::new(),
                request_by: Instant::now() + REQUEST_TIMEOUT,
                flush_by: None,
                broken: false,
            });
        }
    }

    /// A client sent something (or hung up).
    pub(super) fn control_read(&mut self, i: usize) {
        let mut chunk = [0u8; 256];
        let c = &mut self.clients[i];
        c.flush();
        match c.stream.read(&mut chunk) {
            Ok(0) => {
                c.done = true;
                return;
            }
            Ok(n) if c.wait == Wait::Request => {
                c.buf.extend_from_slice(&chunk[..n])
            }
            Ok(_) => return,
            Err(_) => return,
        }
        if c.buf.len() > 128 {
            c.reply(&Reply::Error("request too long".into()));
            return;
        }
        let Some(nl) = c.buf.iter().position(|b| *b == b'\n') else {
            return;
        };
        let verb = String::from_utf8_lossy(&c.buf[..nl]).trim().to_string();
        log::info!("control: {verb}");
        self.control_request(i, &verb);
    }

    fn control_request(&mut self, i: usize, line: &str) {
        let Some(request) = Request::parse(line) else {
            let msg = format!("unknown request {line:?}");
            self.clients[i].reply(&Reply::Error(msg));
            return;
        };
        match request {
            Request::Status => {
                let text = self.status_report().text();
                self.clients[i].reply(&Reply::Ok(text));
            }
            Request::StatusJson => {
                let json = serde_json::to_string(&self.status_report())
                    .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
                self.clients[i].reply(&Reply::Ok(json));
            }
            Request::Reopen => {
                self.handle_reopen();
                let done = Reply::Ok("reopened log files".into());
                self.clients[i].reply(&done);
            }
            Request::Stop | Request::Quit => {
                self.clients[i].wait = Wait::Exit;
                self.handle_stop(request == Request::Stop);
            }
            Request::Reload => match self.request_reload() {
                Ok(target) => self.clients[i].wait = Wait::Reload(target),
                Err(e) => self.clients[i].reply(&Reply::Error(e)),
            },
            Request::Upgrade => match self.request_upgrade() {
                Ok(()) => self.clients[i].wait = Wait::Upgrade,
                Err(e) => self.clients[i].reply(&Reply::Error(e)),
            },
        }
    }

    /// Delivers an outcome to every client waiting for `wait`.
    pub(super) fn answer_waiting(&mut self, wait: Wait, answer: Answer) {
        for c in self.clients.iter_mut().filter(|c| c.wait == wait) {
            match &answer {
                Answer::Reloaded(t) => c.reply(&Reply::Ok(format!(
                    "reload complete: generation {t} serving"
                ))),
                Answer::Failed(e) => c.reply(&Reply::Error(e.clone())),
                // The connection stays open: it closes when this master
                // exits after its retirement.
                Answer::NewMaster(child) => {
                    c.send(&Reply::NewMaster(*child).line());
                    c.wait = Wait::Exit;
                }
            }
        }
    }

    /// Drops clients that are done, gone or too slow; answers those that
    /// sent no request in time. Called every round.
    pub(super) fn control_tidy(&mut self) {
        let now = Instant::now();
        for c in &mut self.clients {
            if c.wait == Wait::Request && !c.done && c.request_by <= now {
                c.reply(&Reply::Error("no request in time".into()));
            }
        }
        self.clients.retain(|c| !c.gone(now));
        if self.control_paused.is_some_and(|t| t <= now) {
            self.control_paused = None;
        }
    }

    /// What `-s status` shows (text and JSON are two renderings of it).
    fn status_report(&self) -> Status {
        let now = Instant::now();
        let workers = self
            .workers
            .iter()
            .map(|w| {
                let (state, ready) = match w.state {
                    State::Booting { .. } => ("booting", None),
                    State::Ready { since, .. } => (
                        "ready",
                        Some(now.duration_since(since).as_secs_f64()),
                    ),
                    State::Stopping { .. } => ("stopping", None),
                };
                WorkerStatus {
                    pid: w.pid.as_raw(),
                    app_pid: w.exec.as_ref().and_then(|_| {
                        // The app is the keeper's only child.
                        crate::spawn::children(w.pid)
                            .first()
                            .map(|p| p.as_raw())
                    }),
                    age: w.age,
                    generation: w.generation,
                    state: state.into(),
                    ready_secs: ready,
                    requests: w.requests,
                    heartbeat_secs_ago: w
                        .last_beat
                        .map(|b| now.duration_since(b).as_secs_f64()),
                    status: w.status.clone(),
                    memory_bytes: w.memory,
                }
            })
            .collect();
        Status {
            pid: self.me.as_raw(),
            role: self.role.label().into(),
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_secs: self.started.elapsed().as_secs(),
            config: self
                .cfg
                .config_file
                .as_ref()
                .map(|p| p.display().to_string()),
            listeners: self
                .listeners
                .iter()
                .map(|l| ListenerStatus {
                    name: l.name.clone(),
                    address: l.local.to_string(),
                })
                .collect(),
            generation: self.generation,
            desired: self.desired,
            ready: self.ready_count(),
            graceful_timeout_secs: self.cfg.graceful_timeout.as_secs_f64(),
            boot_timeout_secs: self.cfg.boot_timeout.as_secs_f64(),
            probation_secs: self.cfg.probation.as_secs_f64(),
            workers,
            upgrade: self.upgrade.describe().map(|(child, state)| {
                UpgradeStatus {
                    new_master: child.as_raw(),
                    state: state.into(),
                }
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::client_bound;

    #[test]
    fn control_clients_get_half_the_descriptors_within_bounds() {
        assert_eq!(client_bound(64), 32);
        assert_eq!(client_bound(1024), 512);
        // Tiny limits: the spare descriptor handles the rest.
        assert_eq!(client_bound(20), 16);
        assert_eq!(client_bound(0), 16);
        // RLIM_INFINITY.
        assert_eq!(client_bound(u64::MAX), 1024);
    }
}
