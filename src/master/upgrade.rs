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

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use super::control::{Answer, Wait};
use super::states::{ExitStep, ReadyStep, StopStep, Upgrade};
use super::{Exit, Master, Phase, Role, verdicts::describe};
use crate::handoff;
use crate::pidfile;
use crate::sys::{self, Fork};

/// How much longer than `--boot-timeout` the old master waits for a new
/// master's ready byte before it gives up on it.
const UPGRADE_MARGIN: Duration = Duration::from_secs(5);

/// How long a retiring master waits for systemd to answer its barrier
/// before it exits anyway.
pub(super) const BARRIER_LIMIT: Duration = Duration::from_secs(5);

impl Master {
    pub(super) fn handle_upgrade(&mut self) {
        let _ = self.start_upgrade();
    }

    /// `upgrader -s upgrade`: an upgrade that also retires this master
    /// once the new one is ready (the TERM of the manual procedure).
    pub(super) fn request_upgrade(&mut self) -> Result<(), String> {
        self.start_upgrade()?;
        self.upgrade.retire_when_ready();
        Ok(())
    }

    fn start_upgrade(&mut self) -> Result<(), String> {
        let unpromoted = match self.role {
            Role::Successor { old, .. } => Some(old),
            Role::Master => None,
        };
        let refused = self.upgrade.refuse(
            unpromoted,
            self.phase.is_running(),
            &self.reload,
        );
        if let Some(msg) = refused {
            log::warn!("{msg}");
            return Err(msg);
        }
        self.reexec().map_err(|e| {
            let msg = format!("upgrade failed: {e:#}");
            log::error!("{msg}");
            msg
        })
    }

    /// Forks and execs the new master.
    fn reexec(&mut self) -> Result<()> {
        let inv = &self.invocation;
        let handed: Vec<handoff::Handed> = self
            .listeners
            .iter()
            .map(|l| handoff::Handed::of(l))
            .collect();
        let env = handoff::child_env(
            &self.base_env,
            &handoff::Child::Successor {
                listeners: &handed,
                me: self.me,
                watchdog: self.watchdog.is_some(),
            },
        );
        let envp = crate::spawn::envp(&env.vars)?;
        let argv = inv
            .argv
            .iter()
            .map(|a| crate::spawn::cstring(a))
            .collect::<Result<Vec<_>>>()?;
        let mut image = sys::ExecImage::new(
            crate::spawn::cstring(inv.exe.as_os_str())?,
            argv,
            envp,
            &env.pid_vars,
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
        // SAFETY: the master is single-threaded; the child goes straight
        // to the exec image (built, allocation-free, never returns) with
        // the listeners and pipes open.
        #[allow(unsafe_code)]
        let child = match unsafe { sys::fork() }.context("fork")? {
            Fork::Child => unsafe { image.exec(&fds, err_w.as_raw_fd()) },
            Fork::Parent(pid) => pid,
        };
        drop(ready_w);
        drop(err_w);
        for fd in [&ready_r, &err_r] {
            fcntl(fd, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).context("pipe")?;
        }
        log::info!("USR2: new master {child} spawned");
        // The new master's own workers have --boot-timeout from their
        // spawn, after its start-up: the margin lets their failure (and
        // its cause, on the ready pipe) come first.
        let deadline = Instant::now() + self.upgrade_limit();
        self.upgrade = Upgrade::booting(child, ready_r, err_r, deadline);
        self.sd_notify(&format!(
            "STATUS=upgrading: new master {child} booting"
        ));
        Ok(())
    }

    /// How long a new master has to report ready: its workers' boot
    /// timeout and probation (this master's settings), and a margin so
    /// that its own verdict, with the cause, comes first.
    fn upgrade_limit(&self) -> std::time::Duration {
        self.cfg.boot_timeout + self.cfg.probation + UPGRADE_MARGIN
    }

    /// The ready pipe: a byte (ready), `!reason` or EOF (it failed).
    pub(super) fn on_successor_readable(&mut self) {
        let Some(fd) = self.upgrade.ready_fd() else {
            return;
        };
        let mut buf = [0u8; 1024];
        let read = match nix::unistd::read(fd, &mut buf) {
            Ok(n) => Some(&buf[..n]),
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => None,
            Err(_) => Some(&buf[..0]),
        };
        let now = Instant::now();
        let step = self.upgrade.on_ready_pipe(read, now, self.cfg.auto_retire);
        if let ReadyStep::Ready {
            child,
            retire,
            took,
        } = step
        {
            log::info!(
                "upgrade: new master {child} ready in {} ms",
                took.as_millis()
            );
            self.sd_notify(&format!(
                "STATUS=upgrade: new master {child} ready"
            ));
            self.answer_waiting(Wait::Upgrade, Answer::NewMaster(child));
            if retire {
                self.retire(true);
            }
        }
    }

    /// The deadline of a booting new master passed.
    pub(super) fn upgrade_timers(&mut self, now: Instant) {
        let why = format!(
            "not ready within {}",
            humantime::format_duration(self.upgrade_limit())
        );
        if let Some(child) = self.upgrade.on_deadline(now, why) {
            let _ = kill(child, Signal::SIGKILL);
        }
    }

    /// A stop while a new master exists: held while it boots, a
    /// retirement once it is ready. Returns whether it was handled.
    pub(super) fn stop_is_retirement(&mut self, graceful: bool) -> bool {
        match self.upgrade.on_stop(graceful) {
            StopStep::Stop => false,
            StopStep::Hold { first } => {
                if first && let Some(child) = self.upgrade.booting_child() {
                    log::info!(
                        "TERM held until new master {child} is ready or fails"
                    );
                }
                true
            }
            StopStep::Retire => {
                self.retire(graceful);
                true
            }
            StopStep::Ignore => true,
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
        self.upgrade.take_over();
        self.phase = Phase::Serving;
        self.remove_successor_pidfile(pid);
        self.last_generation += 1;
        self.generation = self.last_generation;
        self.young_until = None;
        self.desired = self.cfg.workers;
        self.respawn_at = None;
        self.write_pidfile();
    }

    /// Hands over to the ready new master and drains.
    fn retire(&mut self, graceful: bool) {
        let Some(child) = self.upgrade.retire() else {
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
        let what = describe(status);
        let stopping = !self.phase.is_running();
        match self.upgrade.on_exit(pid, stopping) {
            ExitStep::NotOurs => return false,
            ExitStep::Failed {
                failure,
                errors,
                stop,
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
                let msg =
                    format!("upgrade failed: new master {pid} {what}: {why}");
                log::error!("{msg}; this master carries on");
                self.answer_waiting(Wait::Upgrade, Answer::Failed(msg));
                self.sd_notify(&format!(
                    "STATUS=upgrade failed: new master {pid} {what}"
                ));
                self.remove_successor_pidfile(pid);
                if stop {
                    self.handle_stop(true);
                }
            }
            ExitStep::DiedBeforeRetirement => {
                let msg = format!("new master {pid} {what} before retirement");
                log::error!("{msg}; this master carries on");
                self.answer_waiting(Wait::Upgrade, Answer::Failed(msg));
                self.remove_successor_pidfile(pid);
            }
            // Under systemd the main pid was handed over already, and
            // the dead one ends the unit.
            ExitStep::DiedWhileRetiring if !self.systemd.enabled() => {
                self.take_over_again(pid, &what);
            }
            ExitStep::DiedWhileRetiring | ExitStep::Gone => {
                log::info!("new master {pid} {what}");
            }
        }
        true
    }

    /// Removes `<pidfile>.2` if the (dead) new master `pid` wrote it.
    fn remove_successor_pidfile(&self, pid: Pid) {
        if let Some(p) = &self.cfg.pidfile {
            pidfile::remove_if_ours(&pidfile::successor(p), pid);
        }
    }
}
