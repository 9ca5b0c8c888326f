//! The master's dealings with its workers: relaying their output,
//! reaping and judging their exits, firing their timers (readiness by
//! delay, boot deadlines, heartbeats, kill deadlines) and maintaining
//! the pool's shape.

use std::time::{Duration, Instant};

use anyhow::Result;
use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::{Exit, Master};
use crate::cli::ReadyMode;
use crate::config::WorkerKind;
use crate::pool::{self, Due, State, Stop, Worker};
use crate::spawn;

use super::verdicts::*;

impl Master {
    /// Relays an exec worker's output into the log, line by line, and
    /// keeps the last lines for failure reports.
    pub(super) fn relay(&mut self, pid: Pid, to_eof: bool) {
        let Some(w) = self.workers.iter_mut().find(|w| w.pid == pid) else {
            return;
        };
        let role = w.role();
        let (Some(x), tail) = (&mut w.exec, &mut w.tail) else {
            return;
        };
        let Some(fd) = &x.output else { return };
        let mut buf = [0u8; 8192];
        let mut eof = false;
        // Bounded per round so one chatty worker cannot starve the loop.
        for _ in 0..if to_eof { usize::MAX } else { 8 } {
            match nix::unistd::read(fd, &mut buf) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => x.partial.extend_from_slice(&buf[..n]),
                Err(Errno::EINTR) => continue,
                Err(_) => break, // EAGAIN: all read for now
            }
        }
        while let Some(nl) = x.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = x.partial.drain(..=nl).collect();
            emit(&role, tail, &line[..line.len() - 1]);
        }
        if x.partial.len() > 4096 || (eof && !x.partial.is_empty()) {
            let line = std::mem::take(&mut x.partial);
            emit(&role, tail, &line);
        }
        if eof {
            x.output = None;
        }
    }

    /// Collects every dead child (signals coalesce: one SIGCHLD may
    /// stand for many exits).
    pub(super) fn reap(&mut self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(status) => {
                    if let Some(pid) = status.pid() {
                        self.reaped(pid, status);
                        self.reload_progress();
                    }
                }
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    log::error!("waitpid: {}", e.desc());
                    return;
                }
            }
        }
    }

    pub(super) fn reaped(&mut self, pid: Pid, status: WaitStatus) {
        if self.successor_reaped(pid, status) {
            return;
        }
        if !self.workers.iter().any(|w| w.pid == pid) {
            log::debug!(
                "reaped pid {pid} ({}): not a worker",
                describe(status)
            );
            return;
        };
        // What it sent last (its setup error, say) is in before it is
        // judged.
        self.handle_notify();
        let Some(i) = self.workers.iter().position(|w| w.pid == pid) else {
            return;
        };
        self.relay(pid, true);
        let w = self.workers.remove(i);
        // Whatever the worker left in its process group goes with it: a
        // keeper killed by the OOM killer leaves the app's children
        // there (invariant 4). The group id cannot be reused while any
        // member lives, so this reaches nobody else.
        if killpg(w.pid, Signal::SIGKILL).is_ok() {
            log::warn!(
                "{}: killed what it left behind in its process group",
                w.role()
            );
        }
        let now = Instant::now();
        let what = describe(status);
        if self.probation_crash(&w, status, now) {
            return;
        }
        let exec_error = exec_error(&w, &self.cfg);
        match (w.state, exec_error) {
            (_, Some(reason)) => {
                // The whole reason: "exec ./app: No such file or
                // directory" says it all.
                self.boot_failed(&w, 3, reason.clone(), reason)
            }
            (
                State::Stopping {
                    why: Stop::BootTimeout,
                    ..
                },
                _,
            ) => {
                let reason = format!(
                    "{} was not ready within {:?} ({what})",
                    w.role(),
                    self.cfg.boot_timeout
                );
                let reason = with_tail(reason, &w);
                let line = format!("workers failed to boot: {reason}");
                self.boot_failed(&w, 3, reason, line);
            }
            (State::Booting { .. }, _) => {
                let code = boot_code(status).unwrap_or(3);
                let reason =
                    format!("{} {what} before it was ready", w.role());
                let reason = with_tail(reason, &w);
                let line = format!("workers failed to boot: {reason}");
                self.boot_failed(&w, code, reason, line);
            }
            (
                State::Stopping {
                    why: Stop::Late, ..
                },
                _,
            ) => {
                log::error!("{} {what} after its timeout", w.role());
                self.failed(&w, now);
            }
            (
                State::Stopping {
                    why: Stop::Leaving, ..
                },
                _,
            ) if !self.expected_leave(&w, status, now) => {
                // READY=1, STOPPING=1, exit: nobody asked it to go, so
                // it is a crash for the backoff streak (else an app that
                // does this is respawned twenty times a second).
                log::error!(
                    "{} {what} on its own {} ms after it was ready",
                    w.role(),
                    w.served_for(now).unwrap_or_default().as_millis()
                );
                self.failed(&w, now);
            }
            (State::Stopping { .. }, _) => {
                log::info!("{} {what}", w.role());
            }
            (State::Ready { .. }, _)
                if boot_code(status).is_some() && self.young(&w, now) =>
            {
                // Exit 3/4 says "cannot boot", even after a `--ready
                // delay` readiness: in a generation younger than its
                // boot timeout that is a failed boot of the release.
                let code = boot_code(status).unwrap_or(3);
                let reason = format!(
                    "{} {what} {} ms after it was ready",
                    w.role(),
                    w.served_for(now).unwrap_or_default().as_millis()
                );
                let reason = with_tail(reason, &w);
                let line = format!("workers failed to boot: {reason}");
                self.failed_after_ready(&w, code, line);
            }
            (State::Ready { since, .. }, _) => {
                let quiet = matches!(status, WaitStatus::Exited(_, 0))
                    && now.duration_since(since) >= Duration::from_secs(1);
                if quiet {
                    log::info!("{} {what}", w.role());
                } else {
                    let hint = if matches!(
                        status,
                        WaitStatus::Signaled(_, Signal::SIGKILL, _)
                    ) {
                        " (not by upgrader: out of memory?)"
                    } else {
                        ""
                    };
                    log::error!("{} {what}{hint}", w.role());
                    if let Some(l) = w.tail.last() {
                        log::error!("{} last output: {l}", w.role());
                    }
                    self.failed(&w, now);
                }
            }
        }
    }

    /// SPEC 13: a worker of a generation on probation exited without
    /// being asked to (after its readiness: a boot failure goes the boot
    /// failure's way, which also ends a reload or halts). A reload rolls
    /// back; the first generation has nothing to go back to and halts
    /// (exit 3, or 4 when the worker exited 4). Returns whether it was
    /// taken as such.
    fn probation_crash(
        &mut self,
        w: &Worker,
        status: WaitStatus,
        now: Instant,
    ) -> bool {
        // A rolling reload rolls back on any crash of a new worker, with
        // or without a probation (SPEC 14).
        let watched = !self.cfg.probation.is_zero() || self.rolling();
        if !watched || !self.crashed_on_its_own(w, status, now) {
            return false;
        }
        let probation = humantime::format_duration(self.cfg.probation);
        let what = describe(status);
        if self.reload_failing(w.generation) {
            let when = match self.reload.probation() {
                Some((began, _)) => format!(
                    "after {:.1}s of probation {probation}",
                    now.duration_since(began).as_secs_f64()
                ),
                None => "before its generation was ready".to_string(),
            };
            let line = with_tail(
                format!("reload rolled back: {} {what} {when}", w.role()),
                w,
            );
            self.abandon_reload(&line);
            return true;
        }
        if w.generation != 1 || self.phase.served() || !self.phase.is_running()
        {
            return false;
        }
        let when = match self.phase.deadline() {
            Some(until) => format!(
                "after {:.1}s of probation {probation}",
                self.cfg
                    .probation
                    .saturating_sub(until.saturating_duration_since(now))
                    .as_secs_f64()
            ),
            None => "before its generation was ready".to_string(),
        };
        let line = with_tail(
            format!("probation failed: {} {what} {when}", w.role()),
            w,
        );
        log::error!("{line}");
        self.halt(boot_code(status).unwrap_or(3), line);
        true
    }

    /// Whether a worker that went away was not asked to: a crash, an
    /// exit (even 0), a heartbeat timeout. A boot failure is judged as
    /// one (`boot_failed`), not here.
    fn crashed_on_its_own(
        &self,
        w: &Worker,
        status: WaitStatus,
        now: Instant,
    ) -> bool {
        match w.state {
            State::Ready { .. } => true,
            State::Stopping {
                why: Stop::Late, ..
            } => true,
            State::Stopping {
                why: Stop::Leaving, ..
            } => !self.expected_leave(w, status, now),
            _ => false,
        }
    }

    /// The first generation's probation passed: this master serves for
    /// good (a new master now tells the old one it is ready).
    pub(super) fn first_probation_timer(&mut self, now: Instant) {
        if self.phase.probation_over(now) {
            log::info!(
                "first generation passed its probation of {}",
                humantime::format_duration(self.cfg.probation)
            );
            self.on_serving();
        }
    }

    /// A worker that could not boot: before the first generation was
    /// ready this halts the master (exit 3, or 4 when the app said it
    /// cannot load); later it is a failure in the backoff streak.
    /// `line` is the one-line reason the master exits with.
    pub(super) fn boot_failed(
        &mut self,
        w: &Worker,
        code: u8,
        reason: String,
        line: String,
    ) {
        log::error!("{reason}");
        if self.reload_failing(w.generation) {
            self.abandon_reload(&format!(
                "reload to generation {} failed: {reason}",
                w.generation
            ));
            return;
        }
        if self.phase.served() {
            self.failed(w, Instant::now());
            return;
        }
        self.halt(code, line);
    }

    /// A worker of a young generation exited 3/4 after its readiness:
    /// the release cannot boot after all. A reload is abandoned or
    /// rolled back; the first generation has nothing to go back to and
    /// halts, as a boot failure does.
    fn failed_after_ready(&mut self, w: &Worker, code: u8, line: String) {
        let reason = line
            .strip_prefix("workers failed to boot: ")
            .unwrap_or(&line)
            .to_string();
        log::error!("{reason}");
        if self.reload_failing(w.generation) {
            self.abandon_reload(&format!(
                "reload to generation {} failed: {reason}",
                w.generation
            ));
        } else if self.roll_back(w.generation, &reason) {
        } else if w.generation == 1 {
            self.halt(code, line);
        } else {
            self.failed(w, Instant::now());
        }
    }

    /// Stops with a boot failure's status (3, or 4: "4 wins over 3").
    fn halt(&mut self, code: u8, line: String) {
        let Some(code) = self.phase.halt_code(code) else {
            return;
        };
        log::error!("halting: workers failed to boot");
        self.sd_notify("STATUS=halted: workers failed to boot");
        let exit = Exit {
            code,
            reason: Some(line),
        };
        self.stop_all(false, exit);
    }

    /// Whether a worker that said `STOPPING=1` and then exited left as
    /// expected: a built-in worker at `--max-requests`, or any worker
    /// that served a while and exited 0.
    fn expected_leave(
        &self,
        w: &Worker,
        st: WaitStatus,
        now: Instant,
    ) -> bool {
        let clean = matches!(st, WaitStatus::Exited(_, 0));
        let restart = !w.is_exec() && self.cfg.max_requests > 0;
        let served = w.served_for(now).unwrap_or_default();
        clean && (restart || served >= pool::STABLE)
    }

    /// Whether `w`'s generation is still younger than its boot timeout.
    fn young(&self, w: &Worker, now: Instant) -> bool {
        w.generation == self.generation
            && self.young_until.is_some_and(|t| now < t)
    }

    /// Counts a failed worker and sets the respawn backoff.
    pub(super) fn failed(&mut self, w: &Worker, now: Instant) {
        let stable = w.served_for(now).is_some_and(|d| d >= pool::STABLE);
        self.failures = if stable { 1 } else { self.failures + 1 };
        let limit = self.cfg.crash_loop_limit;
        if limit > 0
            && self.failures >= limit
            && w.generation == self.generation
            && self.phase.is_running()
        {
            let line = format!(
                "crash loop: {} workers of generation {} crashed in a row, \
                 none living {}s (--crash-loop-limit {limit}); last: {}",
                self.failures,
                w.generation,
                pool::STABLE.as_secs(),
                w.role()
            );
            log::error!("{line}");
            self.sd_notify(&format!("STATUS=halted: {line}"));
            self.stop_all(
                false,
                Exit {
                    code: 3,
                    reason: Some(line),
                },
            );
            return;
        }
        let delay = pool::backoff(self.failures);
        if !delay.is_zero() {
            log::warn!(
                "{} worker failures in a row: next spawn in {} ms",
                self.failures,
                delay.as_millis()
            );
            self.respawn_at = Some(now + delay);
        }
    }

    /// Fires every due timer: readiness by delay, boot deadlines,
    /// heartbeats (murder), kill deadlines, the master's own watchdog.
    pub(super) fn timers(&mut self, now: Instant) {
        let timeout = self.cfg.timeout;
        let mut newly_ready = Vec::new();
        for (i, w) in self.workers.iter_mut().enumerate() {
            match pool::due(w, now) {
                None => {}
                Some(Due::Ready) => {
                    w.become_ready(now, timeout);
                    newly_ready.push(i);
                }
                Some(Due::BootTimeout) => {
                    log::error!(
                        "{} not ready after {:?}: SIGKILL",
                        w.role(),
                        self.cfg.boot_timeout
                    );
                    let kill_at = kill(w, now);
                    w.stop(Stop::BootTimeout, kill_at);
                }
                Some(Due::Late) => {
                    let sig = self.cfg.timeout_signal;
                    let late = match w.state {
                        State::Ready {
                            beat_by: Some(b), ..
                        } => now.saturating_duration_since(b),
                        _ => Duration::ZERO,
                    };
                    log::error!(
                        "{} timed out: no heartbeat for {:?} (+{} ms): {sig}",
                        w.role(),
                        timeout.unwrap_or_default(),
                        late.as_millis()
                    );
                    signal_group(w.pid, sig);
                    w.stop(Stop::Late, Some(now + self.cfg.kill_after));
                }
                Some(Due::Kill) => {
                    log::warn!("{} still alive: SIGKILL", w.role());
                    let kill_at = kill(w, now);
                    if let State::Stopping { why, .. } = w.state {
                        w.stop(why, kill_at);
                    }
                }
            }
        }
        for i in newly_ready {
            self.on_ready(i);
        }
        self.upgrade_timers(now);
        self.reload_timers(now);
        self.first_probation_timer(now);
        self.memory_timers(now);
        if let Some((every, at)) = self.watchdog
            && at <= now
        {
            self.sd_notify("WATCHDOG=1");
            self.watchdog = Some((every, now + every));
        }
    }

    /// Carries out the pool plan: spawn what is missing, retire what is
    /// too much or too old.
    pub(super) fn maintain(&mut self, now: Instant) {
        if !self.phase.is_running() {
            return;
        }
        self.close_retired();
        let may_spawn = self.respawn_at.is_none_or(|t| t <= now);
        let plan = if self.rolling() {
            // The last batch of old workers stays through the probation.
            let keep_old = if self.cfg.probation.is_zero() {
                0
            } else {
                self.cfg.reload_batch
            };
            pool::rolling_plan(
                &self.workers,
                self.desired,
                self.generation,
                self.cfg.reload_batch,
                keep_old,
                may_spawn,
            )
        } else {
            let target = self.memory_surge(now);
            pool::plan(&self.workers, target, self.generation, may_spawn)
        };
        let mut spawn = plan.spawn;
        if self.role.is_successor()
            && !self.phase.served()
            && self.cfg.reload_batch > 0
        {
            // A new master's first generation boots batch by batch too
            // (SPEC 14), so the machine never starts every worker of the
            // new release at once beside the old master's.
            let booting = self
                .workers
                .iter()
                .filter(|w| !w.is_ready() && !w.is_stopping())
                .count();
            spawn = if booting > 0 {
                0
            } else {
                spawn.min(self.cfg.reload_batch)
            };
        }
        let mut retire = plan.retire;
        if self.reload.in_flight() && !self.rolling() {
            // The old generation serves until the new one is ready and,
            // with --probation, has passed it (invariant 2).
            let current = self.generation;
            retire.retain(|pid| {
                self.workers
                    .iter()
                    .any(|w| w.pid == *pid && w.generation == current)
            });
        }
        for pid in retire {
            if let Some(w) = self.workers.iter_mut().find(|w| w.pid == pid) {
                log::info!("retiring {}", w.role());
                signal_group(pid, Signal::SIGTERM);
                w.stop(Stop::Drain, Some(now + self.cfg.graceful_timeout));
            }
        }
        for _ in 0..spawn {
            if let Err(e) = self.spawn_one(now) {
                log::error!("spawn: {e:#}");
                self.respawn_at = Some(now + Duration::from_secs(1));
                break;
            }
            self.respawn_at = None;
        }
    }

    pub(super) fn spawn_one(&mut self, now: Instant) -> Result<()> {
        let listeners: Vec<(String, i32)> = self
            .listeners
            .iter()
            .map(|l| (l.name.clone(), l.raw()))
            .collect();
        let ctx = spawn::Setup {
            master: self.me,
            config: &self.cfg,
            listeners: &listeners,
            notify: self.notify.path(),
            base_env: &self.base_env,
            hooks: self.hooks,
        };
        let age = self.next_age + 1;
        let s = spawn::spawn(&ctx, age, self.generation)?;
        self.next_age = age;
        let ready_at = match (&self.cfg.kind, self.cfg.ready) {
            (WorkerKind::Exec { .. }, ReadyMode::Delay(d)) => Some(now + d),
            _ => None,
        };
        let mut w = Worker::new(
            s.pid,
            age,
            self.generation,
            State::Booting {
                ready_by: now + self.cfg.boot_timeout,
                ready_at,
            },
        );
        w.exec = s.exec;
        log::info!("spawned {}", w.role());
        self.workers.push(w);
        Ok(())
    }
}

/// Signals a worker's whole process group (its children go too).
pub(super) fn signal_group(pid: Pid, sig: Signal) {
    if let Err(e) = killpg(pid, sig)
        && e != Errno::ESRCH
    {
        log::warn!("kill -{sig} -{pid}: {}", e.desc());
    }
}

/// SIGKILLs a worker with everything it started. A built-in worker: its
/// process group. An exec worker: first its keeper is asked (SIGUSR2,
/// to the keeper alone) to SIGKILL the app's whole tree, which as a
/// subreaper it sees even where a descendant left the process group
/// with setsid; a group SIGKILL would kill the keeper before it could.
/// Returns when to fall back to the group SIGKILL, if the keeper does
/// not answer.
pub(super) fn kill(w: &mut Worker, now: Instant) -> Option<Instant> {
    if let Some(x) = &mut w.exec
        && !x.keeper_asked
    {
        x.keeper_asked = true;
        let _ = nix::sys::signal::kill(w.pid, crate::spawn::KILL_TREE);
        return Some(now + Duration::from_secs(1));
    }
    signal_group(w.pid, Signal::SIGKILL);
    None
}
