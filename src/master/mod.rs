//! The master: one loop that sleeps in poll until a signal, a worker's
//! notify datagram, a worker's output, the upgrade's ready pipe, the
//! predecessor's exit, or the earliest deadline it owns; then it
//! dispatches what happened, reaps, fires due timers and maintains the
//! pool. Read top to bottom, it is the SIGNALS section of the man page.
//!
//! Vocabulary (gunicorn's): *spawn* a worker, *reap* a dead one,
//! *murder* a late one (the timeout signal, then SIGKILL), *maintain*
//! the pool's shape, *drain* (TERM, then SIGKILL at the deadline),
//! *halt* (stop with a failure status), *reexec* a new master (USR2),
//! *retire* the old one, *promote* the new one.
//!
//! Submodules hold the rest of `impl Master`: `poll` (the one wait),
//! `reload` (HUP), `upgrade` (USR2, retirement) and `successor` (the new
//! master's side, promotion), `workers` (reap, timers, maintain),
//! `datagrams` (the notify socket), `control` (`upgrader -s`),
//! `resources` (listeners restored, files removed at exit). The
//! lifecycles themselves are state machines in `states`.

mod control;
mod datagrams;
mod memory;
mod poll;
mod reload;
mod resources;
mod states;
mod successor;
mod upgrade;
mod verdicts;
mod workers;

use std::ffi::OsString;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Result;
use nix::sys::signal::Signal;
use nix::sys::signalfd::SignalFd;
use nix::unistd::Pid;

use crate::cli::Options;
use crate::config::{Config, Facts, WorkerKind};
use crate::handoff::Invocation;
use crate::listeners::Listener;
use crate::notify::{self, Systemd};
use crate::pool::{self, State, Stop, Worker};
use crate::signals::{self, Event};

use states::{Phase, Reload, Upgrade};

pub use successor::{Role, label as role_label};

/// How the master ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    pub code: u8,
    /// The one-line reason for a non-zero status.
    pub reason: Option<String>,
}

pub struct Master {
    cli: Options,
    facts: Facts,
    cfg: Config,
    me: Pid,
    role: Role,
    invocation: Invocation,
    /// The listeners new workers get.
    listeners: Vec<Rc<Listener>>,
    /// Listeners a reload removed: closed once no older worker is left.
    retired: Vec<Rc<Listener>>,
    /// Listeners that stopped listening and could not be restored (by
    /// descriptor): no longer polled.
    lost: Vec<std::os::fd::RawFd>,
    signals: SignalFd,
    notify: notify::Server,
    systemd: Systemd,
    /// The master's own watchdog (systemd's `WATCHDOG_USEC`).
    watchdog: Option<(Duration, Instant)>,
    base_env: Vec<(OsString, OsString)>,
    hooks: bool,
    workers: Vec<Worker>,
    next_age: u64,
    /// The generation new workers belong to, and the last one started;
    /// until when the current one is younger than its boot timeout
    /// (a worker exiting 3/4 then means the release cannot boot).
    generation: u64,
    last_generation: u64,
    young_until: Option<Instant>,
    desired: usize,
    phase: Phase,
    /// `--max-worker-memory`: the next measurement, and the worker over
    /// the limit being replaced (surge first).
    memory_due: Option<Instant>,
    replacing: Option<Pid>,
    /// The pidfile is written and READY=1 sent (a plain master does
    /// that when its first generation is ready, before its probation).
    announced: bool,
    /// Consecutive worker failures, and when the next spawn may happen.
    failures: u32,
    respawn_at: Option<Instant>,
    reload: Reload,
    /// The last completed reload, while its generation is younger than
    /// its boot timeout: what to roll back to if it turns out unable to
    /// boot after all (exit 3/4 after a `--ready delay` readiness).
    settling: Option<reload::Settling>,
    upgrade: Upgrade,
    /// The sd_notify barrier after `MAINPID=` at retirement: the pipe
    /// that hangs up once systemd has read it, and how long to wait.
    barrier: Option<(std::os::fd::OwnedFd, Instant)>,
    /// `upgrader -s`: the control socket and its clients.
    control: Option<std::os::unix::net::UnixListener>,
    clients: Vec<control::Client>,
    /// At most this many clients at once (`control::max_clients`).
    max_clients: usize,
    /// Refused control connections (wrong uid; no descriptor left), a
    /// spare descriptor for the latter, and a pause of the control
    /// socket when even that is gone.
    refusals: control::Refusals,
    fd_refusals: control::Refusals,
    spare: Option<std::fs::File>,
    control_paused: Option<Instant>,
    started: Instant,
    /// The flock on the pidfile, held as long as this master lives (see
    /// `pidfile`); a new master's on `<pidfile>.2` until its promotion.
    pidlock: Option<crate::pidfile::Lock>,
    pidlock_next: Option<crate::pidfile::Lock>,
}

/// What `Master::new` needs from start-up.
pub struct Parts {
    pub cli: Options,
    pub facts: Facts,
    pub cfg: Config,
    pub listeners: Vec<Listener>,
    pub signals: SignalFd,
    pub env: crate::handoff::Environment,
    pub invocation: Invocation,
    pub pidlock: Option<crate::pidfile::Lock>,
}

impl Master {
    pub fn new(mut p: Parts) -> Result<Master> {
        if let Some(pinned) =
            crate::spawn::pin_release(&mut p.cfg, &p.env.vars)
        {
            log::info!("generation 1 runs {pinned}");
        }
        let notify = notify::Server::bind(p.cfg.credentials.uid)?;
        let now = Instant::now();
        let role = Role::from_env(p.env.predecessor.as_ref())?;
        let control = match control::bind(nix::unistd::getpid()) {
            Ok(l) => Some(l),
            Err(e) => {
                log::warn!("{e:#}: upgrader -s will not reach this master");
                None
            }
        };
        Ok(Master {
            desired: p.cfg.workers,
            cli: p.cli,
            facts: p.facts,
            young_until: now.checked_add(p.cfg.boot_timeout),
            cfg: p.cfg,
            me: nix::unistd::getpid(),
            role,
            invocation: p.invocation,
            listeners: p.listeners.into_iter().map(Rc::new).collect(),
            retired: Vec::new(),
            lost: Vec::new(),
            signals: p.signals,
            notify,
            systemd: Systemd::new(p.env.notify_socket),
            watchdog: p.env.watchdog.map(|w| (w / 2, now + w / 2)),
            base_env: p.env.vars,
            hooks: p.env.hooks,
            workers: Vec::new(),
            next_age: 0,
            generation: 1,
            last_generation: 1,
            phase: Phase::Starting,
            memory_due: None,
            replacing: None,
            announced: false,
            failures: 0,
            respawn_at: None,
            reload: Reload::Idle,
            settling: None,
            upgrade: Upgrade::Idle,
            barrier: None,
            control,
            clients: Vec::new(),
            max_clients: control::max_clients(),
            refusals: control::Refusals::default(),
            fd_refusals: control::Refusals::default(),
            spare: control::spare_fd(),
            control_paused: None,
            started: now,
            pidlock: p.pidlock,
            pidlock_next: None,
        })
    }

    /// The loop. Returns how the master ends.
    pub fn run(mut self) -> Result<Exit> {
        for l in &self.listeners {
            log::info!("listening on {} ({})", l.local, l.name);
        }
        log::info!(
            "upgrader {} {} starting {} {}",
            env!("CARGO_PKG_VERSION"),
            self.role.label(),
            self.desired,
            match &self.cfg.kind {
                WorkerKind::BuiltIn => "built-in workers".to_string(),
                WorkerKind::Exec { program, .. } => {
                    format!("exec workers: {}", program.display())
                }
            }
        );
        self.check_predecessor();
        loop {
            let now = Instant::now();
            self.maintain(now);
            if let Some(exit) = self.finished() {
                self.cleanup(&exit);
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
            for i in ready.listeners {
                self.restore_listener(i);
            }
            if ready.successor_ready {
                self.on_successor_readable();
            }
            if ready.control {
                self.control_accept();
            }
            if ready.barrier {
                log::debug!("sd_notify barrier passed");
                self.barrier = None;
            }
            for i in ready.clients {
                self.control_read(i);
            }
            self.reap();
            if ready.predecessor_gone {
                self.check_predecessor();
            }
            self.timers(Instant::now());
            self.control_tidy();
        }
    }

    fn wants_spawn(&self) -> bool {
        self.phase.is_running()
            && pool::plan(&self.workers, self.desired, self.generation, true)
                .spawn
                > 0
    }

    /// One `handle_*` per event.
    fn dispatch(&mut self, ev: Event, sig: Signal) {
        log::debug!("got {sig}");
        match ev {
            Event::Reload => self.handle_reload(),
            Event::Upgrade => self.handle_upgrade(),
            Event::GracefulStop => self.handle_stop(true),
            Event::FastStop => self.handle_stop(false),
            Event::MoreWorkers => self.handle_scale(1),
            Event::FewerWorkers => self.handle_scale(-1),
            Event::DrainWorkers => self.handle_drain(),
            Event::ReopenLogs => self.handle_reopen(),
            Event::ChildExited => {} // the reaper runs every round
        }
    }

    /// TERM: graceful stop; INT/QUIT: fast stop (SPEC 6). With a new
    /// master in play, a stop is a retirement (see `upgrade`).
    fn handle_stop(&mut self, graceful: bool) {
        if self.reload.hold_stop(graceful) {
            log::info!(
                "TERM held until the probation of generation {} ends (a \
                 second TERM or QUIT stops now)",
                self.generation
            );
            return;
        }
        if self.stop_is_retirement(graceful) {
            return;
        }
        if !self.phase.wants_stop(graceful) {
            return;
        }
        log::info!(
            "{} stop: {} workers",
            if graceful { "graceful" } else { "fast" },
            self.workers.len()
        );
        // After a hand-off the unit goes on under the new master.
        if !self.upgrade.handed_over() {
            self.sd_notify("STOPPING=1\nSTATUS=stopping");
        }
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
            workers::signal_group(w.pid, sig);
            w.stop(why, Some(now + budget));
        }
        self.phase.stop(graceful, exit);
    }

    /// TTIN / TTOU: one worker more or fewer, never below one.
    fn handle_scale(&mut self, delta: i64) {
        let Some(n) = states::scale(self.desired, delta) else {
            // Drained by WINCH: there is nothing to take away, and
            // "never below one" must not bring a worker back.
            log::info!(
                "TTOU ignored: workers are drained (HUP brings them back)"
            );
            return;
        };
        log::info!("workers: {} -> {n}", self.desired);
        self.desired = n;
    }

    /// WINCH: drain every worker, keep the master and the listeners.
    fn handle_drain(&mut self) {
        log::info!("WINCH: draining all workers; HUP brings them back");
        // A reload in flight is over: its generation drains too.
        self.settle_reload();
        self.desired = 0;
    }

    /// USR1: reopen log files, here and in built-in workers.
    fn handle_reopen(&mut self) {
        if let Err(e) = crate::logging::reopen() {
            log::error!("{e:#}");
        }
        for w in &self.workers {
            if !w.is_exec() {
                let _ = nix::sys::signal::kill(w.pid, Signal::SIGUSR1);
            }
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
        self.batch_ready();
        if self.ready_count() < self.desired {
            return;
        }
        let probation = self.cfg.probation;
        if !probation.is_zero()
            && self.phase.on_probation(Instant::now() + probation)
        {
            self.on_probation();
        } else if self.phase.serving() {
            self.on_serving();
        }
        // Also right after on_serving: a HUP before the first
        // generation was ready is a reload like any other.
        self.reload_ready();
    }

    /// Ready workers of the current generation.
    pub(super) fn ready_count(&self) -> usize {
        self.workers
            .iter()
            .filter(|w| w.generation == self.generation && w.is_ready())
            .count()
    }

    /// The first generation is ready and on probation (SPEC 13). A
    /// plain master serves from now on as far as the world goes
    /// (pidfile, READY=1; a crash in the window still halts it); a new
    /// master tells the old one only when the window has passed, so the
    /// old master keeps serving until then.
    fn on_probation(&mut self) {
        log::info!(
            "serving: generation {} with {} workers, on probation for {}",
            self.generation,
            self.desired,
            humantime::format_duration(self.cfg.probation)
        );
        if !self.role.is_successor() {
            self.announce_serving();
        }
    }

    /// The first generation is ready (and passed its probation, if
    /// any): the master is serving.
    fn on_serving(&mut self) {
        log::info!(
            "serving: generation {} with {} workers",
            self.generation,
            self.desired
        );
        if self.role.is_successor() {
            self.successor_serving();
            return;
        }
        if !self.announced {
            self.announce_serving();
        }
    }

    /// Pidfile and READY=1: the master serves.
    fn announce_serving(&mut self) {
        self.announced = true;
        self.write_pidfile();
        self.sd_notify(&format!("READY=1\nSTATUS={}", self.status()));
    }

    /// Writes the pidfile and keeps the lock of the new file, then
    /// removes `<pidfile>.lock`, the lock of the boot (see pidfile.rs).
    /// When the pidfile cannot be written the boot lock stays held.
    fn write_pidfile(&mut self) {
        if let Some(path) = &self.cfg.pidfile {
            match crate::pidfile::write(path, self.me) {
                Ok(lock) => {
                    if let Some(boot) = self.pidlock.replace(lock) {
                        boot.remove();
                    }
                }
                Err(e) => log::error!("{e:#}"),
            }
        }
    }

    /// Tells systemd, unless this is a new master not yet promoted: it
    /// is not the main pid, so under NotifyAccess=main systemd refuses
    /// it, and under NotifyAccess=all its STOPPING=1 (a rollback's TERM)
    /// would stop the whole unit.
    fn sd_notify(&self, text: &str) {
        if !self.role.is_successor() {
            self.systemd.notify(text);
        }
    }

    /// One line of state for systemd's STATUS=.
    fn status(&self) -> String {
        format!(
            "serving: generation {}, {}/{} workers ready",
            self.generation,
            self.ready_count(),
            self.desired
        )
    }

    fn finished(&mut self) -> Option<Exit> {
        match &self.phase {
            Phase::Stopping { exit, .. } if self.workers.is_empty() => {
                let exit = exit.clone();
                if let Some((_, by)) = &self.barrier {
                    if Instant::now() < *by {
                        return None;
                    }
                    log::warn!(
                        "sd_notify barrier: no answer from systemd in {}s",
                        upgrade::BARRIER_LIMIT.as_secs()
                    );
                    self.barrier = None;
                }
                Some(exit)
            }
            _ => None,
        }
    }
}
