//! Signals as data: the master blocks the signals it acts on and reads
//! them from a signalfd in its one poll, so no code ever runs in signal
//! context (no handler can log, allocate or deadlock; see gunicorn
//! #3441 for what a logging handler costs).
//!
//! Children must not inherit the mask: workers reset it right after the
//! fork (`sys::ExecImage::exec`, `worker`), because a blocked mask
//! survives execve and std no longer resets it (rust-lang/rust#101077).

use anyhow::{Context, Result};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// What a signal asks of the master (gunicorn's meanings; SPEC 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Reload,
    Upgrade,
    GracefulStop,
    FastStop,
    MoreWorkers,
    FewerWorkers,
    DrainWorkers,
    ReopenLogs,
    ChildExited,
}

/// Every signal the master handles.
pub const HANDLED: [Signal; 11] = [
    Signal::SIGHUP,
    Signal::SIGUSR2,
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
    Signal::SIGWINCH,
    Signal::SIGUSR1,
    Signal::SIGCHLD,
    Signal::SIGPIPE,
];

impl Event {
    /// The event a signal stands for; `None` for the ones the master only
    /// blocks (SIGPIPE: a write to a closed pipe is an error, not a
    /// death).
    pub fn from_signal(sig: Signal) -> Option<Event> {
        Some(match sig {
            Signal::SIGHUP => Event::Reload,
            Signal::SIGUSR2 => Event::Upgrade,
            Signal::SIGTERM => Event::GracefulStop,
            Signal::SIGINT | Signal::SIGQUIT => Event::FastStop,
            Signal::SIGTTIN => Event::MoreWorkers,
            Signal::SIGTTOU => Event::FewerWorkers,
            Signal::SIGWINCH => Event::DrainWorkers,
            Signal::SIGUSR1 => Event::ReopenLogs,
            Signal::SIGCHLD => Event::ChildExited,
            _ => return None,
        })
    }
}

pub fn mask(signals: &[Signal]) -> SigSet {
    let mut set = SigSet::empty();
    for &s in signals {
        set.add(s);
    }
    set
}

/// Blocks `signals` (added to the mask).
pub fn block(signals: &[Signal]) -> Result<()> {
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask(signals)), None)
        .context("sigprocmask")
}

/// Blocks `signals` and opens a non-blocking, close-on-exec signalfd
/// that reports them (and any that arrived since they were blocked).
pub fn block_into_fd(signals: &[Signal]) -> Result<SignalFd> {
    block(signals)?;
    let set = mask(signals);
    SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .context("signalfd")
}

/// Reads every pending signal (they coalesce: one SIGCHLD may stand for
/// many exits, so the reaper loops until nothing is left).
pub fn drain(fd: &SignalFd) -> Vec<Signal> {
    let mut out = Vec::new();
    while let Ok(Some(info)) = fd.read_signal() {
        if let Ok(sig) = Signal::try_from(info.ssi_signo as i32) {
            out.push(sig);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_handled_signal_but_pipe_is_an_event() {
        for s in HANDLED {
            assert_eq!(
                Event::from_signal(s).is_some(),
                s != Signal::SIGPIPE,
                "{s}"
            );
        }
        assert_eq!(Event::from_signal(Signal::SIGQUIT), Some(Event::FastStop));
        assert_eq!(Event::from_signal(Signal::SIGUSR2), Some(Event::Upgrade));
    }
}
