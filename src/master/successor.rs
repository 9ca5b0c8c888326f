//! The new master's side of USR2: `Role::Successor` until its
//! predecessor is gone. It writes `<pidfile>.2` and its ready byte once
//! serving, and watches the old master with a pidfd, so promotion
//! happens the moment the old master exits: no tick, no polling getppid
//! (and compared with the old master's pid, not with 1: under a
//! subreaper the new parent is not init).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use anyhow::{Context, Result};
use nix::fcntl::{FcntlArg, fcntl};
use nix::unistd::Pid;

use super::Master;
use crate::handoff::{self, Predecessor};
use crate::pidfile;
use crate::sys;

/// Which master this is.
pub enum Role {
    Master,
    /// Started by USR2; `pidfd` becomes readable when the old master
    /// exits; `ready` is the pipe to write the ready byte to.
    Successor {
        old: Pid,
        pidfd: Option<OwnedFd>,
        ready: Option<OwnedFd>,
    },
}

impl Role {
    pub fn from_env(p: Option<&Predecessor>) -> Result<Role> {
        let Some(p) = p else { return Ok(Role::Master) };
        let ready = match p.ready_fd {
            // SAFETY: the ready pipe the old master passed for this
            // process to own; it was checked to be a pipe apart from every
            // listener, and a `Predecessor` is turned into a role once.
            Some(fd) => {
                #[allow(unsafe_code)]
                let owned = unsafe { sys::adopt_inherited(fd) };
                Some(owned.with_context(|| {
                    format!("{}={fd}: not open", handoff::UPGRADER_READY_FD)
                })?)
            }
            None => None,
        };
        if let Some(r) = &ready {
            fcntl(r, FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))
                .context("ready fd")?;
        }
        // ESRCH: the old master is already gone; promotion follows at
        // once (check_predecessor).
        let pidfd = sys::pidfd_open(p.pid).ok();
        Ok(Role::Successor {
            old: p.pid,
            pidfd,
            ready,
        })
    }

    pub fn is_successor(&self) -> bool {
        matches!(self, Role::Successor { .. })
    }

    /// The role's label on log lines and in `-s status`: a new master
    /// is "master.2" until promoted, as gunicorn's.
    pub fn label(&self) -> &'static str {
        label(self.is_successor())
    }

    pub fn pidfd(&self) -> Option<BorrowedFd<'_>> {
        match self {
            Role::Successor {
                pidfd: Some(fd), ..
            } => Some(fd.as_fd()),
            _ => None,
        }
    }
}

/// The label of a master, or of a new master not promoted yet.
pub fn label(successor: bool) -> &'static str {
    if successor { "master.2" } else { "master" }
}

impl Master {
    /// New master: serving. Write `<pidfile>.2` (its appearance means
    /// "safe to retire the old one"), then the ready byte.
    pub(super) fn successor_serving(&mut self) {
        if let Some(p) = &self.cfg.pidfile {
            match pidfile::write(&pidfile::successor(p), self.me) {
                Ok(lock) => self.pidlock_next = Some(lock),
                Err(e) => log::error!("{e:#}"),
            }
        }
        if let Role::Successor { ready, .. } = &mut self.role
            && let Some(fd) = ready.take()
            && let Err(e) = nix::unistd::write(&fd, b"1")
        {
            log::error!("ready byte: {}", e.desc());
        }
    }

    /// New master: promoted once the old master is gone (compared with
    /// its pid, not with 1: under a subreaper the new parent is not
    /// init).
    pub(super) fn check_predecessor(&mut self) {
        let Role::Successor { old, pidfd, .. } = &self.role else {
            return;
        };
        let gone = match pidfd {
            // Readable means exited.
            Some(fd) => {
                let now = std::time::Instant::now();
                let pollin = nix::poll::PollFlags::POLLIN;
                matches!(
                    crate::sys::wait_for(fd.as_fd(), pollin, now),
                    Ok(true)
                ) || nix::unistd::getppid() != *old
            }
            None => nix::unistd::getppid() != *old,
        };
        if !gone {
            return;
        }
        let old = *old;
        self.role = Role::Master;
        crate::logging::set_role(format!(
            "{}[{}]",
            self.role.label(),
            self.me
        ));
        // The lock goes with the renamed file: this master holds the
        // pidfile now.
        if let Some(p) = &self.cfg.pidfile
            && let Some(mut lock) = self.pidlock_next.take()
            && lock.at_path()
        {
            match lock.rename(p) {
                Ok(()) => self.pidlock = Some(lock),
                Err(e) => log::error!("{e:#}"),
            }
        }
        log::info!("promoted: old master {old} is gone");
        if self.phase.served() {
            self.sd_notify(&format!("READY=1\nSTATUS={}", self.status()));
        }
    }
}
