//! USR2: the binary upgrade (SPEC section 7), on both sides.
//!
//! Old master: fork, and exec the executable path recorded at start with
//! the original argv and cwd, the listeners at fds 3.. and a ready pipe
//! after them (`handoff`). The new master is `Spawned` until it writes
//! its ready byte (`Ready`); EOF, its death or `--boot-timeout` first
//! means the upgrade failed and this master carries on. A TERM that
//! arrives while the new master boots is held until the outcome.
//! Retirement (TERM, or at once with `--auto-retire on`) hands over:
//! `MAINPID=<new>` to systemd, then a barrier, then a graceful drain
//! without `STOPPING=1`, then exit 0.
//!
//! The new master's side is in `successor`.

use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use super::{Exit, Master, Phase, Role, workers::describe};
use crate::handoff;
use crate::pidfile;
use crate::sys::{self, Fork};

/// How much longer than `--boot-timeout` the old master waits for a new
/// master's ready byte before it gives up on it.
const UPGRADE_MARGIN: Duration = Duration::from_secs(5);

/// How long a retiring master waits for systemd to answer its barrier
/// before it exits anyway.
pub(super) const BARRIER_LIMIT: Duration = Duration::from_secs(5);

/// The old master's view of an upgrade.
pub enum Upgrade {
    Idle,
    Spawned {
        child: Pid,
        ready: Option<OwnedFd>,
        errors: OwnedFd,
        deadline: Instant,
        /// A TERM arrived meanwhile: retire if it succeeds, stop if not.
        term_held: bool,
        /// `upgrader -s upgrade`: retire if it succeeds (and only then).
        retire_when_ready: bool,
        /// Why it failed, once known (logged when the child is reaped).
        failure: Option<String>,
        started: Instant,
    },
    Ready {
        child: Pid,
    },
}

impl Upgrade {
    pub fn ready_fd(&self) -> Option<BorrowedFd<'_>> {
        match self {
            Upgrade::Spawned { ready: Some(r), .. } => Some(r.as_fd()),
            _ => None,
        }
    }

    pub fn deadline(&self) -> Option<Instant> {
        match self {
            Upgrade::Spawned {
                deadline,
                failure: None,
                ..
            } => Some(*deadline),
            _ => None,
        }
    }

    pub(super) fn child(&self) -> Option<Pid> {
        match self {
            Upgrade::Idle => None,
            Upgrade::Spawned { child, .. } | Upgrade::Ready { child } => {
                Some(*child)
            }
        }
    }
}

impl Master {
    pub(super) fn handle_upgrade(&mut self) {
        let _ = self.start_upgrade();
    }

    /// `upgrader -s upgrade`: an upgrade that also retires this master
    /// once the new one is ready (the TERM of the manual procedure).
    pub(super) fn request_upgrade(&mut self) -> Result<(), String> {
        self.start_upgrade()?;
        if let Upgrade::Spawned {
            retire_when_ready, ..
        } = &mut self.upgrade
        {
            *retire_when_ready = true;
        }
        Ok(())
    }

    fn start_upgrade(&mut self) -> Result<(), String> {
        let refused = if let Role::Successor { old, .. } = self.role {
            Some(format!(
                "USR2 ignored: not promoted yet (old master {old} still runs)"
            ))
        } else if let Some(child) = self.upgrade.child() {
            Some(format!("USR2 ignored: new master {child} exists"))
        } else if !matches!(self.phase, Phase::Running) {
            Some("USR2 ignored: stopping".to_string())
        } else if self.reload.is_some() {
            // An abandoned reload closes listeners a successor would
            // have inherited: one change at a time (invariant 3).
            Some("USR2 ignored: a reload is in flight".to_string())
        } else {
            None
        };
        if let Some(msg) = refused {
            log::warn!("{msg}");
            return Err(msg);
        }
        self.upgrade_outcome = None;
        self.reexec().map_err(|e| {
            let msg = format!("upgrade failed: {e:#}");
            log::error!("{msg}");
            msg
        })
    }

    /// Forks and execs the new master.
    fn reexec(&mut self) -> Result<()> {
        let inv = &self.invocation;
        let names: Vec<&str> =
            self.listeners.iter().map(|l| l.name.as_str()).collect();
        let mut env: Vec<(OsString, OsString)> = self
            .base_env
            .iter()
            .filter(|(k, _)| !handoff::is_handoff_var(k))
            .cloned()
            .collect();
        env.extend(handoff::encode(&names, self.me));
        let envp = crate::spawn::envp(&env)?;
        let argv = inv
            .argv
            .iter()
            .map(|a| crate::spawn::cstring(a))
            .collect::<Result<Vec<_>>>()?;
        let mut image = sys::ExecImage::new(
            crate::spawn::cstring(inv.exe.as_os_str())?,
            argv,
            envp,
            &[],
        )
        .for_successor(crate::spawn::cstring(inv.cwd.as_os_str())?);
        let (ready_r, ready_w) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC).context("pipe")?;
        let (err_r, err_w) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC).context("pipe")?;
        let mut fds: Vec<RawFd> =
            self.listeners.iter().map(|l| l.raw()).collect();
        fds.push(ready_w.as_raw_fd());
        log::info!(
            "USR2: starting new master {} with {} listeners",
            inv.exe.display(),
            self.listeners.len()
        );
        let child = match sys::fork().context("fork")? {
            Fork::Child => image.exec(&fds, err_w.as_raw_fd()),
            Fork::Parent(pid) => pid,
        };
        drop(ready_w);
        drop(err_w);
        for fd in [&ready_r, &err_r] {
            fcntl(fd, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).context("pipe")?;
        }
        log::info!("USR2: new master {child} spawned");
        self.upgrade = Upgrade::Spawned {
            child,
            ready: Some(ready_r),
            errors: err_r,
            // The new master's own workers have --boot-timeout from
            // their spawn, after its start-up: the margin lets their
            // failure (and its cause, on the ready pipe) come first.
            deadline: Instant::now() + self.cfg.boot_timeout + UPGRADE_MARGIN,
            term_held: false,
            retire_when_ready: false,
            failure: None,
            started: Instant::now(),
        };
        self.sd_notify(&format!(
            "STATUS=upgrading: new master {child} booting"
        ));
        Ok(())
    }

    /// The ready pipe: a byte (ready) or EOF (it died first).
    pub(super) fn on_successor_readable(&mut self) {
        let Upgrade::Spawned {
            child,
            ready,
            term_held,
            retire_when_ready,
            failure,
            started,
            deadline,
            ..
        } = &mut self.upgrade
        else {
            return;
        };
        let Some(fd) = ready else { return };
        let mut buf = [0u8; 1024];
        let got = match nix::unistd::read(&*fd, &mut buf) {
            Ok(0) => Some(None),
            Ok(n) => Some(Some(buf[..n].to_vec())),
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => None,
            Err(_) => Some(None),
        };
        match got {
            None => {}
            // "!reason": the new master halted and says why.
            Some(Some(bytes)) if bytes.first() == Some(&b'!') => {
                *ready = None;
                let why = String::from_utf8_lossy(&bytes[1..]).into_owned();
                *failure = Some(why);
            }
            Some(Some(_)) => {
                let (child, held) = (*child, *term_held || *retire_when_ready);
                log::info!(
                    "upgrade: new master {child} ready in {} ms",
                    started.elapsed().as_millis()
                );
                self.upgrade = Upgrade::Ready { child };
                self.sd_notify(&format!(
                    "STATUS=upgrade: new master {child} ready"
                ));
                if held || self.cfg.auto_retire {
                    self.retire(true);
                }
            }
            Some(None) => {
                // EOF without the byte: the upgrade failed (SPEC 7.2).
                // The new master is normally exiting already (it closes
                // the pipe just before it exits); one that still runs a
                // second later is killed, so it cannot block the next
                // USR2.
                *ready = None;
                let soon = Instant::now() + Duration::from_secs(1);
                *deadline = (*deadline).min(soon);
            }
        }
    }

    /// The deadline of a booting new master passed.
    pub(super) fn upgrade_timers(&mut self, now: Instant) {
        if let Upgrade::Spawned {
            child,
            deadline,
            failure,
            ready,
            ..
        } = &mut self.upgrade
            && failure.is_none()
            && *deadline <= now
        {
            *failure = Some(match ready {
                Some(_) => format!(
                    "not ready within {}",
                    humantime::format_duration(
                        self.cfg.boot_timeout + UPGRADE_MARGIN
                    )
                ),
                None => "closed its ready pipe without being ready".into(),
            });
            let _ = kill(*child, Signal::SIGKILL);
        }
    }

    /// A stop while a new master exists: held while it boots, a
    /// retirement once it is ready. Returns whether it was handled.
    pub(super) fn stop_is_retirement(&mut self, graceful: bool) -> bool {
        match &mut self.upgrade {
            Upgrade::Spawned {
                child, term_held, ..
            } if graceful => {
                if !*term_held {
                    log::info!(
                        "TERM held until new master {child} is ready or fails"
                    );
                }
                *term_held = true;
                true
            }
            Upgrade::Ready { .. } => {
                if matches!(self.phase, Phase::Running) {
                    self.retire(graceful);
                    true
                } else {
                    // Retiring already: INT/QUIT may still hurry it.
                    graceful
                }
            }
            _ => false,
        }
    }

    /// The new master died while this one was still draining after its
    /// retirement: nobody would serve once this one exits. It still holds
    /// the listeners, so it takes over again with a fresh generation (the
    /// draining workers finish what they hold). Not under systemd: the
    /// main pid was handed over already, and the dead one ends the unit.
    fn take_over_again(&mut self, pid: Pid, what: &str) {
        log::error!(
            "new master {pid} {what} while this master was retiring: taking \
             over again"
        );
        self.handed_over = false;
        self.phase = Phase::Running;
        if let Some(p) = &self.cfg.pidfile {
            pidfile::remove_if_ours(&pidfile::sibling(p, ".2"), pid);
        }
        self.last_generation += 1;
        self.generation = self.last_generation;
        self.young_until = None;
        self.desired = self.cfg.workers;
        self.respawn_at = None;
        if let Some(p) = &self.cfg.pidfile
            && let Err(e) = pidfile::write(p, self.me)
        {
            log::error!("{e:#}");
        }
    }

    /// Hands over to the ready new master and drains.
    fn retire(&mut self, graceful: bool) {
        let Upgrade::Ready { child } = self.upgrade else {
            return;
        };
        log::info!("retiring: new master {child} takes over");
        if self.systemd.enabled() {
            // Still the main pid, so NotifyAccess=main accepts this;
            // never STOPPING=1 here, which would stop the whole unit.
            self.sd_notify(&format!(
                "MAINPID={child}\nSTATUS=handing over to new master {child}"
            ));
            // The drain starts at once; only the exit waits for the
            // barrier (in the loop's poll, at most BARRIER_LIMIT), so
            // systemd knows the new main pid before this one is gone.
            match self.systemd.barrier() {
                Ok(Some(fd)) => {
                    self.barrier = Some((fd, Instant::now() + BARRIER_LIMIT));
                }
                Ok(None) => {}
                Err(e) => log::warn!("sd_notify barrier: {e:#}"),
            }
        }
        self.handed_over = true;
        self.stop_all(
            graceful,
            Exit {
                code: 0,
                reason: None,
            },
        );
    }

    /// Reaped a child that is not a worker: maybe the new master.
    pub(super) fn successor_reaped(
        &mut self,
        pid: Pid,
        status: WaitStatus,
    ) -> bool {
        if self.upgrade.child() != Some(pid) {
            return false;
        }
        let what = describe(status);
        match std::mem::replace(&mut self.upgrade, Upgrade::Idle) {
            Upgrade::Spawned {
                errors,
                term_held,
                failure,
                ..
            } => {
                let why = sys::exec_failure(errors.as_fd())
                    .map(|(stage, errno)| {
                        crate::spawn::describe_exec_failure(
                            &self.invocation.exe,
                            Some(&self.invocation.cwd),
                            stage,
                            errno,
                        )
                    })
                    .or(failure)
                    .unwrap_or_else(|| "exited before it was ready".into());
                log::error!(
                    "upgrade failed: new master {pid} {what}: {why}; this \
                     master carries on"
                );
                self.upgrade_outcome = Some(Err(format!(
                    "upgrade failed: new master {pid} {what}: {why}"
                )));
                self.sd_notify(&format!(
                    "STATUS=upgrade failed: new master {pid} {what}"
                ));
                if let Some(p) = &self.cfg.pidfile {
                    pidfile::remove_if_ours(&pidfile::sibling(p, ".2"), pid);
                }
                if term_held {
                    self.handle_stop(true);
                }
            }
            Upgrade::Ready { .. } => {
                if self.handed_over
                    && matches!(self.phase, Phase::Stopping { .. })
                    && !self.systemd.enabled()
                {
                    self.take_over_again(pid, &what);
                } else if self.handed_over {
                    log::info!("new master {pid} {what}");
                } else {
                    log::error!(
                        "new master {pid} {what} before retirement; this \
                         master carries on"
                    );
                    self.upgrade_outcome = Some(Err(format!(
                        "new master {pid} {what} before retirement"
                    )));
                    if let Some(p) = &self.cfg.pidfile {
                        pidfile::remove_if_ours(
                            &pidfile::sibling(p, ".2"),
                            pid,
                        );
                    }
                }
            }
            Upgrade::Idle => {}
        }
        true
    }
}
