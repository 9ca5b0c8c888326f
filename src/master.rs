//! The master: one loop that sleeps in poll until a signal, a worker's
//! notify datagram, a worker's output, or the earliest deadline it owns,
//! then dispatches what happened, reaps, fires due timers and maintains
//! the pool. Read top to bottom, it is the SIGNALS section of the man
//! page.
//!
//! Vocabulary (gunicorn's): *spawn* a worker, *reap* a dead one,
//! *murder* a late one (the timeout signal, then SIGKILL), *maintain*
//! the pool's shape, *drain* (TERM, then SIGKILL at the deadline),
//! *halt* (stop with a failure status).

use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, killpg};
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::cli::{Options, ReadyMode};
use crate::config::{Config, Facts, WorkerKind};
use crate::listeners::Listener;
use crate::notify::{self, Systemd};
use crate::pool::{self, Due, State, Stop, Worker};
use crate::signals::{self, Event};
use crate::spawn;

/// How the master ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    pub code: u8,
    /// The one-line reason for a non-zero status.
    pub reason: Option<String>,
}

#[derive(Debug)]
enum Phase {
    Running,
    /// Stopping; exits with `exit` once every worker is reaped.
    Stopping {
        graceful: bool,
        exit: Exit,
    },
}

/// What a poll round found readable.
#[derive(Default)]
struct Readable {
    signals: bool,
    notify: bool,
    outputs: Vec<Pid>,
}

pub struct Master {
    cli: Options,
    facts: Facts,
    cfg: Config,
    me: Pid,
    listeners: Vec<Listener>,
    signals: SignalFd,
    notify: notify::Server,
    systemd: Systemd,
    /// The master's own watchdog (systemd's `WATCHDOG_USEC`).
    watchdog: Option<(Duration, Instant)>,
    base_env: Vec<(OsString, OsString)>,
    hooks: bool,
    workers: Vec<Worker>,
    next_age: u64,
    /// The generation new workers belong to.
    generation: u64,
    desired: usize,
    phase: Phase,
    /// The first generation has been ready (before that, a boot failure
    /// halts the master: invariant 5).
    ever_ready: bool,
    /// Consecutive worker failures, and when the next spawn may happen.
    failures: u32,
    respawn_at: Option<Instant>,
}

/// What `Master::new` needs from start-up.
pub struct Parts {
    pub cli: Options,
    pub facts: Facts,
    pub cfg: Config,
    pub listeners: Vec<Listener>,
    pub signals: SignalFd,
    pub env: crate::handoff::Environment,
}

impl Master {
    pub fn new(p: Parts) -> Result<Master> {
        let notify = notify::Server::bind(p.cfg.credentials.uid)?;
        let base_env = p.env.vars;
        let now = Instant::now();
        Ok(Master {
            desired: p.cfg.workers,
            cli: p.cli,
            facts: p.facts,
            cfg: p.cfg,
            me: nix::unistd::getpid(),
            listeners: p.listeners,
            signals: p.signals,
            notify,
            systemd: Systemd::new(p.env.notify_socket),
            watchdog: p.env.watchdog.map(|w| (w / 2, now + w / 2)),
            base_env,
            hooks: p.env.hooks,
            workers: Vec::new(),
            next_age: 0,
            generation: 1,
            phase: Phase::Running,
            ever_ready: false,
            failures: 0,
            respawn_at: None,
        })
    }

    /// The loop. Returns how the master ends.
    pub fn run(mut self) -> Result<Exit> {
        for l in &self.listeners {
            log::info!("listening on {} ({})", l.local, l.name);
        }
        log::info!(
            "upgrader {} master starting {} {}",
            env!("CARGO_PKG_VERSION"),
            self.desired,
            match &self.cfg.kind {
                WorkerKind::BuiltIn => "built-in workers".to_string(),
                WorkerKind::Exec { program, .. } => {
                    format!("exec workers: {}", program.display())
                }
            }
        );
        loop {
            let now = Instant::now();
            self.maintain(now);
            if let Some(exit) = self.finished() {
                self.cleanup();
                return Ok(exit);
            }
            let ready = self.wait(now)?;
            if ready.signals {
                for sig in signals::drain(&self.signals) {
                    if let Some(ev) = Event::from_signal(sig) {
                        self.dispatch(ev, sig);
                    }
                }
            }
            if ready.notify {
                self.handle_notify();
            }
            for pid in ready.outputs {
                self.relay(pid, false);
            }
            self.reap();
            self.timers(Instant::now());
        }
    }

    /// Sleeps in poll until something happens or the earliest deadline.
    fn wait(&self, now: Instant) -> Result<Readable> {
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
        let mut srcs: Vec<(BorrowedFd<'_>, Option<Pid>)> =
            vec![(self.signals.as_fd(), None), (self.notify.fd(), None)];
        for w in &self.workers {
            if let Some(o) = &w.output {
                srcs.push((o.as_fd(), Some(w.pid)));
            }
        }
        let mut fds: Vec<PollFd<'_>> = srcs
            .iter()
            .map(|(fd, _)| PollFd::new(*fd, PollFlags::POLLIN))
            .collect();
        match poll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(e).context("poll"),
        }
        let mut r = Readable::default();
        for (i, f) in fds.iter().enumerate() {
            if !f.any().unwrap_or(false) {
                continue;
            }
            match (i, srcs[i].1) {
                (0, _) => r.signals = true,
                (1, _) => r.notify = true,
                (_, Some(pid)) => r.outputs.push(pid),
                _ => {}
            }
        }
        Ok(r)
    }

    fn next_deadline(&self) -> Option<Instant> {
        let workers = self.workers.iter().filter_map(Worker::deadline);
        let respawn = self.respawn_at.filter(|_| self.wants_spawn());
        let watchdog = self.watchdog.map(|(_, at)| at);
        workers.chain(respawn).chain(watchdog).min()
    }

    fn wants_spawn(&self) -> bool {
        matches!(self.phase, Phase::Running)
            && pool::plan(&self.workers, self.desired, self.generation, true)
                .spawn
                > 0
    }

    /// One `handle_*` per event.
    fn dispatch(&mut self, ev: Event, sig: Signal) {
        log::debug!("got {sig}");
        match ev {
            Event::GracefulStop => self.handle_stop(true),
            Event::FastStop => self.handle_stop(false),
            Event::MoreWorkers => self.handle_scale(1),
            Event::FewerWorkers => self.handle_scale(-1),
            Event::DrainWorkers => self.handle_drain(),
            Event::ReopenLogs => self.handle_reopen(),
            Event::Reload => self.handle_reload(),
            Event::Upgrade => self.handle_upgrade(),
            Event::ChildExited => {} // the reaper runs every round
        }
    }

    /// TERM: graceful stop; INT/QUIT: fast stop (SPEC 6).
    fn handle_stop(&mut self, graceful: bool) {
        if let Phase::Stopping {
            graceful: false, ..
        } = self.phase
        {
            return; // already as fast as it gets
        }
        if let Phase::Stopping { graceful: true, .. } = self.phase
            && graceful
        {
            return;
        }
        log::info!(
            "{} stop: {} workers",
            if graceful { "graceful" } else { "fast" },
            self.workers.len()
        );
        self.systemd.notify("STOPPING=1\nSTATUS=stopping");
        self.stop_all(
            graceful,
            Exit {
                code: 0,
                reason: None,
            },
        );
    }

    fn stop_all(&mut self, graceful: bool, exit: Exit) {
        let now = Instant::now();
        let (sig, why, budget) = if graceful {
            (Signal::SIGTERM, Stop::Drain, self.cfg.graceful_timeout)
        } else {
            (Signal::SIGQUIT, Stop::Quit, Duration::from_secs(1))
        };
        for w in &mut self.workers {
            let stronger = matches!(
                w.state,
                State::Stopping {
                    why: Stop::Quit | Stop::BootTimeout,
                    ..
                } | State::Stopping { kill_at: None, .. }
            );
            if stronger && graceful {
                continue;
            }
            signal_group(w.pid, sig);
            w.state = State::Stopping {
                why,
                kill_at: Some(now + budget),
            };
        }
        self.phase = Phase::Stopping { graceful, exit };
    }

    /// TTIN / TTOU: one worker more or fewer, never below one.
    fn handle_scale(&mut self, delta: i64) {
        let n = (self.desired as i64 + delta).max(1) as usize;
        log::info!("workers: {} -> {n}", self.desired);
        self.desired = n;
    }

    /// WINCH: drain every worker, keep the master and the listeners.
    fn handle_drain(&mut self) {
        log::info!("WINCH: draining all workers; HUP brings them back");
        self.desired = 0;
    }

    /// USR1: reopen log files, here and in built-in workers.
    fn handle_reopen(&mut self) {
        if let Err(e) = crate::logging::reopen() {
            log::error!("{e:#}");
        }
        if !self.cfg.is_exec() {
            for w in &self.workers {
                let _ = nix::sys::signal::kill(w.pid, Signal::SIGUSR1);
            }
        }
    }

    fn handle_reload(&mut self) {
        // Reload (HUP) arrives with the reload issue; until then HUP only
        // undoes a WINCH.
        if self.desired == 0 {
            self.desired = self.cfg.workers;
            log::info!("HUP: workers back to {}", self.desired);
        } else {
            log::warn!("HUP: reload is not implemented yet");
        }
    }

    fn handle_upgrade(&mut self) {
        log::warn!("USR2: binary upgrade is not implemented yet");
    }

    /// Datagrams on the private notify socket.
    fn handle_notify(&mut self) {
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
    fn find_sender(&self, pid: Pid) -> Option<usize> {
        if let Some(i) = self.workers.iter().position(|w| w.pid == pid) {
            return Some(i);
        }
        let pgid = nix::unistd::getpgid(Some(pid)).ok()?;
        self.workers.iter().position(|w| w.pid == pgid)
    }

    fn on_notify(&mut self, i: usize, key: &str, value: &str, now: Instant) {
        let notify_mode =
            !self.cfg.is_exec() || self.cfg.ready == ReadyMode::Notify;
        let timeout = self.cfg.timeout;
        let w = &mut self.workers[i];
        match (key, value) {
            ("READY", "1") if notify_mode => {
                if let State::Booting { .. } = w.state {
                    w.state = State::Ready {
                        since: now,
                        beat_by: timeout.map(|t| now + t),
                    };
                    self.on_ready(i);
                }
            }
            ("WATCHDOG", "1") => {
                if let State::Ready {
                    since,
                    beat_by: Some(_),
                } = w.state
                {
                    w.state = State::Ready {
                        since,
                        beat_by: timeout.map(|t| now + t),
                    };
                }
            }
            ("STATUS", s) => w.status = Some(s.to_string()),
            ("STOPPING", "1") if w.is_ready() => {
                log::info!("{} is leaving", w.role());
                w.state = State::Stopping {
                    why: Stop::Leaving,
                    kill_at: Some(now + self.cfg.graceful_timeout),
                };
            }
            _ => {}
        }
    }

    /// A worker became ready.
    fn on_ready(&mut self, i: usize) {
        let w = &self.workers[i];
        log::info!(
            "{} ready in {} ms",
            w.role(),
            w.spawned.elapsed().as_millis()
        );
        if !self.ever_ready {
            let ready = self
                .workers
                .iter()
                .filter(|w| w.generation == self.generation && w.is_ready())
                .count();
            if ready >= self.desired {
                self.ever_ready = true;
                self.on_serving();
            }
        }
    }

    /// The first generation is ready: the master is serving.
    fn on_serving(&mut self) {
        if let Some(path) = &self.cfg.pidfile
            && let Err(e) = crate::pidfile::write(path, self.me)
        {
            log::error!("{e:#}");
        }
        log::info!(
            "serving: generation {} with {} workers",
            self.generation,
            self.desired
        );
        self.systemd.notify(&format!(
            "READY=1\nSTATUS=serving: generation {}, {} workers",
            self.generation, self.desired
        ));
    }

    /// Relays an exec worker's output into the log, line by line, and
    /// keeps the last lines for failure reports.
    fn relay(&mut self, pid: Pid, to_eof: bool) {
        let Some(w) = self.workers.iter_mut().find(|w| w.pid == pid) else {
            return;
        };
        let Some(fd) = &w.output else { return };
        let mut buf = [0u8; 8192];
        let mut eof = false;
        // Bounded per round so one chatty worker cannot starve the loop.
        for _ in 0..if to_eof { usize::MAX } else { 8 } {
            match nix::unistd::read(fd, &mut buf) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => w.partial.extend_from_slice(&buf[..n]),
                Err(Errno::EINTR) => continue,
                Err(_) => break, // EAGAIN: all read for now
            }
        }
        let role = w.role();
        while let Some(nl) = w.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = w.partial.drain(..=nl).collect();
            emit(&role, &mut w.tail, &line[..line.len() - 1]);
        }
        if w.partial.len() > 4096 || (eof && !w.partial.is_empty()) {
            let line = std::mem::take(&mut w.partial);
            emit(&role, &mut w.tail, &line);
        }
        if eof {
            w.output = None;
        }
    }

    /// Collects every dead child (signals coalesce: one SIGCHLD may
    /// stand for many exits).
    fn reap(&mut self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(status) => {
                    if let Some(pid) = status.pid() {
                        self.reaped(pid, status);
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

    fn reaped(&mut self, pid: Pid, status: WaitStatus) {
        let Some(i) = self.workers.iter().position(|w| w.pid == pid) else {
            log::debug!(
                "reaped pid {pid} ({}): not a worker",
                describe(status)
            );
            return;
        };
        self.relay(pid, true);
        let w = self.workers.remove(i);
        let now = Instant::now();
        let what = describe(status);
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
                let code = boot_code(status);
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
            (State::Stopping { .. }, _) => {
                log::info!("{} {what}", w.role());
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

    /// A worker that could not boot: before the first generation was
    /// ready this halts the master (exit 3, or 4 when the app said it
    /// cannot load); later it is a failure in the backoff streak.
    /// `line` is the one-line reason the master exits with.
    fn boot_failed(
        &mut self,
        w: &Worker,
        code: u8,
        reason: String,
        line: String,
    ) {
        log::error!("{reason}");
        if self.ever_ready {
            self.failed(w, Instant::now());
            return;
        }
        match &mut self.phase {
            Phase::Stopping { exit, .. } if exit.code != 0 => {
                if code == 4 && exit.code == 3 {
                    exit.code = 4; // "4 wins over 3"
                }
            }
            _ => {
                log::error!("halting: workers failed to boot");
                self.systemd.notify("STATUS=halted: workers failed to boot");
                let exit = Exit {
                    code,
                    reason: Some(line),
                };
                self.stop_all(false, exit);
            }
        }
    }

    /// Counts a failed worker and sets the respawn backoff.
    fn failed(&mut self, w: &Worker, now: Instant) {
        let stable = match w.state {
            State::Ready { since, .. } => {
                now.duration_since(since) >= pool::STABLE
            }
            _ => false,
        };
        self.failures = if stable { 1 } else { self.failures + 1 };
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
    fn timers(&mut self, now: Instant) {
        let timeout = self.cfg.timeout;
        let mut newly_ready = Vec::new();
        for (i, w) in self.workers.iter_mut().enumerate() {
            match pool::due(w, now) {
                None => {}
                Some(Due::Ready) => {
                    w.state = State::Ready {
                        since: now,
                        beat_by: timeout.map(|t| now + t),
                    };
                    newly_ready.push(i);
                }
                Some(Due::BootTimeout) => {
                    log::error!(
                        "{} not ready after {:?}: SIGKILL",
                        w.role(),
                        self.cfg.boot_timeout
                    );
                    signal_group(w.pid, Signal::SIGKILL);
                    w.state = State::Stopping {
                        why: Stop::BootTimeout,
                        kill_at: None,
                    };
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
                    w.state = State::Stopping {
                        why: Stop::Late,
                        kill_at: Some(now + self.cfg.kill_after),
                    };
                }
                Some(Due::Kill) => {
                    log::warn!("{} still alive: SIGKILL", w.role());
                    signal_group(w.pid, Signal::SIGKILL);
                    if let State::Stopping { why, .. } = w.state {
                        w.state = State::Stopping { why, kill_at: None };
                    }
                }
            }
        }
        for i in newly_ready {
            self.on_ready(i);
        }
        if let Some((every, at)) = self.watchdog
            && at <= now
        {
            self.systemd.notify("WATCHDOG=1");
            self.watchdog = Some((every, now + every));
        }
    }

    /// Carries out the pool plan: spawn what is missing, retire what is
    /// too much or too old.
    fn maintain(&mut self, now: Instant) {
        if !matches!(self.phase, Phase::Running) {
            return;
        }
        let may_spawn = self.respawn_at.is_none_or(|t| t <= now);
        let plan = pool::plan(
            &self.workers,
            self.desired,
            self.generation,
            may_spawn,
        );
        for pid in plan.retire {
            if let Some(w) = self.workers.iter_mut().find(|w| w.pid == pid) {
                log::info!("retiring {}", w.role());
                signal_group(pid, Signal::SIGTERM);
                w.state = State::Stopping {
                    why: Stop::Drain,
                    kill_at: Some(now + self.cfg.graceful_timeout),
                };
            }
        }
        for _ in 0..plan.spawn {
            if let Err(e) = self.spawn_one(now) {
                log::error!("spawn: {e:#}");
                self.respawn_at = Some(now + Duration::from_secs(1));
                break;
            }
            self.respawn_at = None;
        }
    }

    fn spawn_one(&mut self, now: Instant) -> Result<()> {
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
        w.output = s.output;
        w.exec_errors = s.exec_errors;
        log::info!("spawned {}", w.role());
        self.workers.push(w);
        Ok(())
    }

    fn finished(&self) -> Option<Exit> {
        match &self.phase {
            Phase::Stopping { exit, .. } if self.workers.is_empty() => {
                Some(exit.clone())
            }
            _ => None,
        }
    }

    fn cleanup(&mut self) {
        if let Some(p) = &self.cfg.pidfile {
            crate::pidfile::remove_if_ours(p, self.me);
        }
        for l in &self.listeners {
            l.unlink();
        }
        self.notify.remove();
        let _ = (&self.cli, &self.facts);
        log::info!("master exiting");
    }
}

fn emit(role: &str, tail: &mut pool::Tail, line: &[u8]) {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end_matches('\r');
    log::info!(target: crate::logging::RELAY, "{role}: {text}");
    tail.push(text);
}

/// Signals a worker's whole process group (its children go too).
fn signal_group(pid: Pid, sig: Signal) {
    if let Err(e) = killpg(pid, sig)
        && e != Errno::ESRCH
    {
        log::warn!("kill -{sig} -{pid}: {}", e.desc());
    }
}

/// "exited with status 1", "killed by SIGKILL".
pub fn describe(status: WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, c) => format!("exited with status {c}"),
        WaitStatus::Signaled(_, s, core) => {
            format!(
                "killed by {s}{}",
                if core { " (core dumped)" } else { "" }
            )
        }
        other => format!("{other:?}"),
    }
}

/// The status a boot failure halts the master with: 4 when the app
/// said it cannot load (gunicorn's APP_LOAD_ERROR), else 3.
fn boot_code(status: WaitStatus) -> u8 {
    match status {
        WaitStatus::Exited(_, 4) => 4,
        _ => 3,
    }
}

fn with_tail(reason: String, w: &Worker) -> String {
    match w.tail.last() {
        Some(l) => format!("{reason}; last output: {l}"),
        None => reason,
    }
}

/// The reason an exec worker's program could not be executed, if that
/// is what happened (its errno came back on the pipe).
fn exec_error(w: &Worker, cfg: &Config) -> Option<String> {
    let fd = w.exec_errors.as_ref()?;
    let mut buf = [0u8; 4];
    match nix::unistd::read(fd, &mut buf) {
        Ok(4) => {
            let errno = Errno::from_raw(i32::from_ne_bytes(buf));
            let program = match &cfg.kind {
                WorkerKind::Exec { program, .. } => {
                    program.display().to_string()
                }
                WorkerKind::BuiltIn => "worker".into(),
            };
            Some(format!("exec {program}: {}", errno.desc()))
        }
        _ => None,
    }
}
