//! The worker's side of sd_notify: non-blocking datagrams to the master and
//! the heartbeat schedule.

use super::*;

/// Sends sd_notify datagrams to the master's private socket, without
/// ever blocking on a heartbeat: the socket is connected (so poll can
/// tell when the master's queue has room) and non-blocking. When the
/// master does not read (stopped, in a debugger) its queue
/// (net.unix.max_dgram_qlen, 10 by default) fills and a blocking send
/// would stop every worker from serving; a dropped beat costs nothing.
pub(super) struct Notifier {
    sock: Option<UnixDatagram>,
    path: PathBuf,
    /// Beats are being dropped (logged once per burst).
    dropping: Cell<bool>,
}

impl Notifier {
    pub(super) fn new(path: &Path) -> Notifier {
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
    pub(super) fn send(&self, text: &str) {
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
    pub(super) fn send_ready(&self) {
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
pub(super) struct Heartbeat {
    every: Option<Duration>,
    next: Instant,
}

impl Heartbeat {
    pub(super) fn new(timeout: Option<Duration>) -> Heartbeat {
        let every = timeout.map(|t| (t / 4).max(Duration::from_millis(10)));
        Heartbeat {
            every,
            next: Instant::now() + every.unwrap_or_default(),
        }
    }

    /// When the next beat is due (none: never).
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.every.map(|_| self.next)
    }

    pub(super) fn maybe_send(
        &mut self,
        n: &Notifier,
        now: Instant,
        served: u64,
    ) {
        if let Some(every) = self.every
            && now >= self.next
        {
            n.send(&format!("WATCHDOG=1\nX_REQUESTS={served}"));
            self.next = now + every;
        }
    }
}
