//! Datagrams from workers on the master's private notify socket:
//! `READY=1`, `WATCHDOG=1` (with `X_REQUESTS=` from built-in workers),
//! `STATUS=`, `STOPPING=1`, attributed to a worker by the sender's pid
//! or process group.

use std::time::Instant;

use nix::unistd::Pid;

use super::Master;
use crate::cli::ReadyMode;
use crate::pool::Stop;

impl Master {
    /// Datagrams on the private notify socket.
    pub(super) fn handle_notify(&mut self) {
        let now = Instant::now();
        for msg in self.notify.drain() {
            let Some(i) = self.find_sender(msg.pid) else {
                log::debug!("notify from unknown pid {}: ignored", msg.pid);
                continue;
            };
            for (key, value) in msg.pairs() {
                self.on_notify(i, key, value, now);
            }
        }
    }

    /// The worker a datagram came from: the sender itself, or the
    /// process group it belongs to (an exec app under its keeper, or
    /// any child of the app).
    pub(super) fn find_sender(&self, pid: Pid) -> Option<usize> {
        if let Some(i) = self.workers.iter().position(|w| w.pid == pid) {
            return Some(i);
        }
        let pgid = nix::unistd::getpgid(Some(pid)).ok()?;
        self.workers.iter().position(|w| w.pid == pgid)
    }

    pub(super) fn on_notify(
        &mut self,
        i: usize,
        key: &str,
        value: &str,
        now: Instant,
    ) {
        let timeout = self.cfg.timeout;
        let graceful = self.cfg.graceful_timeout;
        let w = &mut self.workers[i];
        let notify_mode = !w.is_exec() || self.cfg.ready == ReadyMode::Notify;
        match (key, value) {
            ("READY", "1") if notify_mode => {
                let booted = w.become_ready(now, timeout);
                if booted {
                    // A built-in worker counts its requests from here;
                    // the count travels with its heartbeats.
                    if !w.is_exec() {
                        w.requests = Some(0);
                    }
                    self.on_ready(i);
                }
            }
            ("X_REQUESTS", n) => w.requests = n.parse().ok(),
            ("WATCHDOG", "1") => w.beat(now, timeout),
            // A worker's own setup failed (chdir, setuid): the reason
            // joins its output tail, so the boot failure names it.
            ("X_ERROR", e) => {
                log::error!("{}: {e}", w.role());
                w.tail.push(e);
            }
            ("STATUS", s) => w.status = Some(s.to_string()),
            ("STOPPING", "1") if w.is_ready() => {
                log::info!("{} is leaving", w.role());
                w.stop(Stop::Leaving, Some(now + graceful));
            }
            _ => {}
        }
    }
}
