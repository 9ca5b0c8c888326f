//! HUP: reload. Re-read the configuration, start a new generation of
//! workers with it, and retire the old generation only once every new
//! worker is ready (invariant 2). A configuration that does not load,
//! or a generation that cannot boot, is abandoned: the old generation
//! keeps serving, untouched. A HUP during a reload is queued (one), not
//! interleaved (invariant 3).

use std::rc::Rc;
use std::time::Instant;

use super::Master;
use super::control::{Answer, Wait};
use super::states::{AllReady, Hup, InFlight, Reload};
use crate::config::Config;
use crate::listeners::{self, Listener};
use crate::pool::Stop;

/// A completed reload whose generation is still younger than its boot
/// timeout: the configuration to roll back to. Listeners are not kept
/// (a removed one must close, or connections would queue on it unseen);
/// a rollback binds again what it needs.
pub(super) struct Settling {
    generation: u64,
    previous: Config,
}

impl Master {
    pub(super) fn handle_reload(&mut self) {
        let _ = self.request_reload();
    }

    /// Starts (or queues) a reload; returns the generation it will
    /// bring, or why it cannot. The outcome reaches the clients waiting
    /// on that generation when it is known (`answer_waiting`).
    pub(super) fn request_reload(&mut self) -> Result<u64, String> {
        // While a new master boots it inherited the listeners as they
        // are, and a reload would change them under it; once it is
        // ready, HUP is the rollback step (SPEC 7.5).
        let booting = self.upgrade.booting_child();
        match self.reload.on_hup(
            self.phase.is_running(),
            booting,
            self.last_generation,
        ) {
            Hup::Refused(msg) => {
                log::warn!("{msg}");
                Err(msg)
            }
            Hup::Queued { target } => {
                log::info!("HUP: a reload is in flight; queued");
                Ok(target)
            }
            Hup::Start => self.start_reload(),
        }
    }

    fn start_reload(&mut self) -> Result<u64, String> {
        let target = self.last_generation + 1;
        self.sd_notify(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading",
            monotonic_usec()
        ));
        let loaded = Config::load(&self.cli, self.facts).and_then(|cfg| {
            not_reloadable(&self.cfg, &cfg)?;
            let l = listeners::reconcile(
                &self.listeners,
                &cfg.binds,
                cfg.bind_options,
            )?;
            Ok((cfg, l))
        });
        let (mut cfg, listeners) = match loaded {
            Ok(v) => v,
            Err(e) => {
                let why = one_line(&format!("{e:#}"));
                log::error!(
                    "reload rejected: {why}; generation {} keeps serving",
                    self.generation
                );
                let msg = format!("reload rejected: {why}");
                self.answer_waiting(
                    Wait::Reload(target),
                    Answer::Failed(msg.clone()),
                );
                self.sd_notify(&format!("READY=1\nSTATUS={msg}"));
                return Err(msg);
            }
        };
        // The previous reload's old generation may still drain: as far
        // as its waiters go, it is complete.
        if let Some(t) = self.reload.superseded() {
            self.answer_waiting(Wait::Reload(t), Answer::Reloaded(t));
        }
        for l in &listeners {
            if !self.listeners.iter().any(|o| Rc::ptr_eq(o, l)) {
                log::info!("listening on {} ({})", l.local, l.name);
            }
        }
        log::set_max_level(cfg.log_level);
        if let Some(pinned) =
            crate::spawn::pin_release(&mut cfg, &self.base_env)
        {
            log::info!("generation {target} runs {pinned}");
        }
        let from = self.generation;
        let from_young_until = self.young_until;
        self.last_generation = target;
        self.generation = target;
        self.young_until = Instant::now().checked_add(cfg.boot_timeout);
        self.settling = None;
        self.desired = cfg.workers;
        self.failures = 0;
        self.respawn_at = None;
        log::info!(
            "reload: generation {target} ({} workers) replaces generation \
             {from}",
            self.desired
        );
        self.reload = Reload::InFlight(Box::new(InFlight {
            target,
            from,
            from_young_until,
            previous: std::mem::replace(&mut self.cfg, cfg),
            previous_listeners: std::mem::replace(
                &mut self.listeners,
                listeners,
            ),
            started: Instant::now(),
            queued: false,
            probation: None,
            term_held: false,
        }));
        Ok(target)
    }

    /// Ends a reload in flight where it stands (WINCH): the new
    /// configuration stays, the previous listeners retire with the old
    /// generation.
    pub(super) fn settle_reload(&mut self) {
        if let Some(r) = self.reload.end() {
            self.retire_listeners(r.previous_listeners);
        }
    }

    fn retire_listeners(&mut self, previous: Vec<Rc<Listener>>) {
        for l in previous {
            if !self.listeners.iter().any(|n| Rc::ptr_eq(n, &l)) {
                self.retired.push(l);
            }
        }
    }

    /// Every worker of the new generation is ready: with `--probation`
    /// its window opens and the old generation keeps serving beside it
    /// (SPEC 13); without, or once the window passed, the old one
    /// retires (maintain does that) and the reload is complete once it
    /// is gone.
    pub(super) fn reload_ready(&mut self) {
        let now = Instant::now();
        let step = self.reload.on_all_ready(now, self.cfg.probation);
        if let AllReady::Probation { until } = step {
            log::info!(
                "reload: generation {} ready; on probation for {}, \
                 generation {} serves beside it until then",
                self.generation,
                humantime::format_duration(
                    until.saturating_duration_since(now)
                ),
                self.reload_from().unwrap_or_default()
            );
            self.sd_notify(&format!(
                "STATUS=reloading: generation {} on probation",
                self.generation
            ));
            return;
        }
        if step != AllReady::Passed && self.reload.probation().is_some() {
            return; // the window runs: the timer ends it
        }
        if let Some(r) = self.reload.on_ready() {
            self.reload_passed(r);
        }
    }

    /// A rolling reload (`--reload-batch`): a new worker is ready. The
    /// first one opens the probation window (SPEC 14: counted from the
    /// first batch being ready); `maintain` retires old workers as new
    /// ones are ready.
    pub(super) fn batch_ready(&mut self) {
        if !self.rolling() {
            return;
        }
        let ready = self.ready_count();
        if ready.is_multiple_of(self.cfg.reload_batch) || ready == self.desired
        {
            log::info!(
                "reload: batch ready ({ready}/{} workers of generation {})",
                self.desired,
                self.generation
            );
        }
        let now = Instant::now();
        if let Some(until) =
            self.reload.begin_probation(now, self.cfg.probation)
        {
            log::info!(
                "reload: first batch of generation {} ready; on probation \
                 for {}",
                self.generation,
                humantime::format_duration(
                    until.saturating_duration_since(now)
                )
            );
        }
    }

    /// A rolling reload is in flight.
    pub(super) fn rolling(&self) -> bool {
        self.reload.in_flight() && self.cfg.reload_batch > 0
    }

    /// The generation the reload in flight replaces.
    fn reload_from(&self) -> Option<u64> {
        match &self.reload {
            Reload::InFlight(r) => Some(r.from),
            _ => None,
        }
    }

    /// The probation of a reload in flight passed: the old generation
    /// retires now.
    pub(super) fn reload_timers(&mut self, now: Instant) {
        let all_ready = self.ready_count() >= self.desired;
        if let Some(r) = self.reload.on_probation_timer(now, all_ready) {
            log::info!(
                "reload: generation {} passed its probation of {}",
                self.generation,
                humantime::format_duration(self.cfg.probation)
            );
            self.reload_passed(r);
        }
    }

    fn reload_passed(&mut self, r: Box<InFlight>) {
        log::info!(
            "reload ready in {} ms: generation {} serving; retiring \
             generation {}",
            r.started.elapsed().as_millis(),
            self.generation,
            r.from
        );
        self.retire_listeners(r.previous_listeners);
        // Without a probation, the young-generation rollback covers a
        // release that exits 3/4 after a `--ready delay` readiness; with
        // one, the window did.
        if self.cfg.probation.is_zero() {
            self.settling = Some(Settling {
                generation: self.generation,
                previous: r.previous,
            });
        } else {
            self.young_until = None;
        }
        self.sd_notify(&format!("READY=1\nSTATUS={}", self.status()));
        self.reload_progress();
        self.after_reload(r.queued, r.term_held);
    }

    /// A reload ended (passed, failed or rolled back): a TERM held
    /// during its probation stops now, else a queued HUP starts.
    fn after_reload(&mut self, queued: bool, term_held: bool) {
        if term_held {
            log::info!("the TERM held during the probation stops now");
            self.handle_stop(true);
        } else if queued && self.phase.is_running() {
            let _ = self.start_reload();
        }
    }

    /// Called when a worker went away: a reload whose old generation is
    /// gone is complete, and its waiting clients are told.
    pub(super) fn reload_progress(&mut self) {
        let oldest = self.workers.iter().map(|w| w.generation).min();
        if let Some(target) = self.reload.on_old_gone(oldest) {
            log::info!("reload complete: generation {target} serving");
            self.answer_waiting(
                Wait::Reload(target),
                Answer::Reloaded(target),
            );
        }
    }

    /// The new generation cannot boot, or crashed on probation: stop it
    /// and go back, the previous generation serving untouched with its
    /// configuration. `headline` is the line logged, sent to `-s reload`
    /// and to systemd's STATUS=. Ready workers of the new generation are
    /// drained (they may hold requests); booting ones are killed.
    pub(super) fn abandon_reload(&mut self, headline: &str) {
        let Some(r) = self.reload.end() else { return };
        let headline = one_line(headline);
        log::error!("{headline}; generation {} keeps serving", r.from);
        self.answer_waiting(
            Wait::Reload(r.target),
            Answer::Failed(headline.clone()),
        );
        let now = Instant::now();
        for w in &mut self.workers {
            if w.generation != self.generation || w.is_stopping() {
                continue;
            }
            if w.is_ready() {
                super::workers::signal_group(
                    w.pid,
                    nix::sys::signal::Signal::SIGTERM,
                );
                w.stop(Stop::Drain, Some(now + self.cfg.graceful_timeout));
            } else {
                let kill_at = super::workers::kill(w, now);
                w.stop(Stop::Quit, kill_at);
            }
        }
        let failed =
            std::mem::replace(&mut self.listeners, r.previous_listeners);
        for l in failed {
            if !self.listeners.iter().any(|o| Rc::ptr_eq(o, &l))
                && Rc::strong_count(&l) == 1
            {
                self.unlink(&l);
            }
        }
        log::set_max_level(r.previous.log_level);
        self.cfg = r.previous;
        self.generation = r.from;
        self.young_until = r.from_young_until;
        self.desired = self.cfg.workers;
        self.failures = 0;
        self.respawn_at = None;
        if self.phase.is_running() {
            self.sd_notify(&format!("READY=1\nSTATUS={headline}"));
        }
        self.after_reload(r.queued, r.term_held);
    }

    /// Whether a failure of a worker of `generation` abandons a reload.
    pub(super) fn reload_failing(&self, generation: u64) -> bool {
        self.reload.in_flight() && generation == self.generation
    }

    /// A worker of the generation a reload just brought exited 3/4 after
    /// all, while the generation is younger than its boot timeout: the
    /// release cannot boot. Its workers are stopped and the previous
    /// configuration comes back as a fresh generation (the retired
    /// workers were told to drain already; the listeners hold every
    /// connection meanwhile). Returns false if there is nothing to roll
    /// back to.
    pub(super) fn roll_back(&mut self, generation: u64, reason: &str) -> bool {
        let Some(s) = self.settling.take_if(|s| s.generation == generation)
        else {
            return false;
        };
        let listeners = match listeners::reconcile(
            &self.listeners,
            &s.previous.binds,
            s.previous.bind_options,
        ) {
            Ok(l) => l,
            Err(e) => {
                log::error!(
                    "reload to generation {generation} failed after it was \
                     ready: {reason}; cannot roll back: {e:#}"
                );
                return false;
            }
        };
        log::error!(
            "reload to generation {generation} failed after it was ready: \
             {reason}; rolling back to the previous configuration as \
             generation {}",
            self.last_generation + 1
        );
        let now = Instant::now();
        for w in &mut self.workers {
            if w.generation == generation && !w.is_stopping() {
                let kill_at = super::workers::kill(w, now);
                w.stop(Stop::Quit, kill_at);
            }
        }
        let failed = std::mem::replace(&mut self.listeners, listeners);
        self.retire_listeners(failed);
        log::set_max_level(s.previous.log_level);
        self.cfg = s.previous;
        self.last_generation += 1;
        self.generation = self.last_generation;
        // The previous release booted before: no second settling.
        self.young_until = None;
        self.desired = self.cfg.workers;
        self.failures = 0;
        self.respawn_at = None;
        self.sd_notify(&format!(
            "STATUS=reload rolled back: {}",
            one_line(reason)
        ));
        true
    }

    /// Closes listeners a reload removed once no worker that had them
    /// is left (invariant 1: never closed while a generation serves it).
    pub(super) fn close_retired(&mut self) {
        if self.retired.is_empty()
            || self.workers.iter().any(|w| w.generation < self.generation)
        {
            return;
        }
        for l in std::mem::take(&mut self.retired) {
            if Rc::strong_count(&l) == 1 {
                self.unlink(&l);
            }
            log::info!("closed {} ({}): no longer bound", l.local, l.name);
        }
    }
}

/// Settings a reload cannot apply to the running master: refused with
/// the reason rather than accepted and silently ignored. A USR2 upgrade
/// starts a new master that reads them afresh.
fn not_reloadable(old: &Config, new: &Config) -> anyhow::Result<()> {
    let show = |p: &Option<std::path::PathBuf>| match p {
        Some(p) => p.display().to_string(),
        None => "none".to_string(),
    };
    for (what, a, b) in [
        ("pid", &old.pidfile, &new.pidfile),
        ("log-file", &old.log_file, &new.log_file),
    ] {
        if a != b {
            anyhow::bail!(
                "{what} changed ({} -> {}): a reload cannot move it; use \
                 USR2 (upgrader -s upgrade) to apply it",
                show(a),
                show(b)
            );
        }
    }
    Ok(())
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// CLOCK_MONOTONIC in microseconds, for `MONOTONIC_USEC=` (systemd's
/// notify-reload wants it with RELOADING=1).
pub(super) fn monotonic_usec() -> u128 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u128 * 1_000_000 + t.tv_nsec() as u128 / 1000)
        .unwrap_or(0)
}
