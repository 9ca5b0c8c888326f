//! The master's one poll: every source it waits on (signals, the notify
//! socket, the upgrade's ready pipe, the predecessor's pidfd, the
//! control socket and its clients, the systemd barrier, exec workers'
//! output) and the earliest deadline it owns, so it sleeps exactly
//! until something needs it (no tick).

use std::os::fd::{AsFd, BorrowedFd};
use std::time::Instant;

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::unistd::Pid;

use super::{Master, control};
use crate::pool::Worker;

/// What a poll round found readable.
#[derive(Default)]
pub(super) struct Readable {
    pub signals: bool,
    pub notify: bool,
    pub successor_ready: bool,
    pub predecessor_gone: bool,
    pub control: bool,
    pub barrier: bool,
    pub clients: Vec<usize>,
    pub outputs: Vec<Pid>,
    /// Listeners that hung up (stopped listening).
    pub listeners: Vec<usize>,
}

/// Where a poll source leads.
#[derive(Clone, Copy)]
enum Source {
    Signals,
    Notify,
    SuccessorReady,
    PredecessorGone,
    Control,
    Barrier,
    Client(usize),
    Output(Pid),
    Listener(usize),
}

impl Master {
    /// Sleeps in poll until something happens or the earliest deadline.
    pub(super) fn wait(&self, now: Instant) -> Result<Readable> {
        let timeout = match self.next_deadline() {
            None => PollTimeout::NONE,
            Some(d) => {
                // Round up: waking a millisecond early would spin.
                let ms = d
                    .saturating_duration_since(now)
                    .as_micros()
                    .div_ceil(1000);
                PollTimeout::try_from(ms.min(i32::MAX as u128) as i32)
                    .unwrap_or(PollTimeout::MAX)
            }
        };
        let mut srcs: Vec<(BorrowedFd<'_>, Source)> = vec![
            (self.signals.as_fd(), Source::Signals),
            (self.notify.fd(), Source::Notify),
        ];
        if let Some(fd) = self.upgrade.ready_fd() {
            srcs.push((fd, Source::SuccessorReady));
        }
        if let Some(fd) = self.role.pidfd() {
            srcs.push((fd, Source::PredecessorGone));
        }
        if let Some(l) = &self.control
            && self.control_paused.is_none()
            && self.clients.len() < self.max_clients
        {
            srcs.push((l.as_fd(), Source::Control));
        }
        if let Some((fd, _)) = &self.barrier {
            srcs.push((fd.as_fd(), Source::Barrier));
        }
        for (i, c) in self.clients.iter().enumerate() {
            srcs.push((c.fd(), Source::Client(i)));
        }
        for w in &self.workers {
            if let Some(o) = w.exec.as_ref().and_then(|x| x.output.as_ref()) {
                srcs.push((o.as_fd(), Source::Output(w.pid)));
            }
        }
        // A listener is polled for nothing but its hang-up (POLLHUP and
        // POLLERR are always reported): it wakes the master only when a
        // worker shut it down, never for a connection.
        for (i, l) in self.listeners.iter().enumerate() {
            if !self.lost.contains(&l.raw()) {
                srcs.push((l.fd.as_fd(), Source::Listener(i)));
            }
        }
        let mut fds: Vec<PollFd<'_>> = srcs
            .iter()
            .map(|(fd, src)| {
                if let Source::Listener(_) = src {
                    return PollFd::new(*fd, PollFlags::empty());
                }
                let mut events = PollFlags::POLLIN;
                if let Source::Client(i) = src
                    && self.clients[*i].wants_write()
                {
                    events |= PollFlags::POLLOUT;
                }
                PollFd::new(*fd, events)
            })
            .collect();
        match poll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(e).context("poll"),
        }
        let mut r = Readable::default();
        for (f, (_, src)) in fds.iter().zip(&srcs) {
            if !f.any().unwrap_or(false) {
                continue;
            }
            match *src {
                Source::Signals => r.signals = true,
                Source::Notify => r.notify = true,
                Source::SuccessorReady => r.successor_ready = true,
                Source::PredecessorGone => r.predecessor_gone = true,
                Source::Control => r.control = true,
                Source::Barrier => r.barrier = true,
                Source::Client(i) => r.clients.push(i),
                Source::Output(pid) => r.outputs.push(pid),
                Source::Listener(i) => r.listeners.push(i),
            }
        }
        Ok(r)
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let workers = self.workers.iter().filter_map(Worker::deadline);
        let respawn = self.respawn_at.filter(|_| self.wants_spawn());
        let watchdog = self.watchdog.map(|(_, at)| at);
        let upgrade = self.upgrade.deadline();
        let clients =
            self.clients.iter().filter_map(control::Client::deadline);
        workers
            .chain(respawn)
            .chain(watchdog)
            .chain(upgrade)
            .chain(clients)
            .chain(self.control_paused)
            .chain(self.barrier.as_ref().map(|(_, t)| *t))
            .chain(self.reload.deadline())
            .chain(self.phase.deadline())
            .chain(self.memory_deadline())
            .min()
    }
}
