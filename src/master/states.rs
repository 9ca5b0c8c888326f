//! The master's lifecycles as state machines: the master as a whole
//! (`Phase`), a HUP reload (`Reload`) and a USR2 upgrade (`Upgrade`).
//! Each enum's variants carry exactly the data valid in that state; a
//! transition takes an event and says what must happen, and the master
//! (mod.rs, reload.rs, upgrade.rs) carries it out: signals, forks,
//! answers to waiting `-s` clients. Nothing here forks or signals, so
//! every odd order of events is a unit test (below). DESIGN.md has a
//! table per lifecycle.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::rc::Rc;
use std::time::Instant;

use nix::unistd::Pid;

use super::Exit;
use crate::config::Config;
use crate::listeners::Listener;

/// The master as a whole.
#[derive(Debug)]
pub enum Phase {
    /// The first generation is not ready yet: a worker that cannot boot
    /// halts the master (invariant 5).
    Starting,
    /// SPEC 13: the first generation is ready and on probation until
    /// `until`; a crash of one of its workers meanwhile halts, as a boot
    /// failure does. A plain master already serves (pidfile, READY=1); a
    /// new master reports ready to the old one only once it is over.
    Probation {
        until: Instant,
    },
    Serving,
    /// Stopping; exits with `exit` once every worker is reaped.
    /// `served`: the first generation had been ready.
    Stopping {
        graceful: bool,
        exit: Exit,
        served: bool,
    },
}

impl Phase {
    pub fn is_running(&self) -> bool {
        !matches!(self, Phase::Stopping { .. })
    }

    /// Whether the first generation has been ready.
    pub fn served(&self) -> bool {
        match self {
            Phase::Starting | Phase::Probation { .. } => false,
            Phase::Serving => true,
            Phase::Stopping { served, .. } => *served,
        }
    }

    /// The first generation is ready; true the first time.
    pub fn serving(&mut self) -> bool {
        match self {
            Phase::Starting => {
                *self = Phase::Serving;
                true
            }
            _ => false,
        }
    }

    /// The first generation is ready and `probation` is on: its window
    /// runs until `until`. True the first time (from `Starting`).
    pub fn on_probation(&mut self, until: Instant) -> bool {
        match self {
            Phase::Starting => {
                *self = Phase::Probation { until };
                true
            }
            _ => false,
        }
    }

    /// The first generation's probation passed at `now`: serving. True
    /// the once it happens.
    pub fn probation_over(&mut self, now: Instant) -> bool {
        match self {
            Phase::Probation { until } if *until <= now => {
                *self = Phase::Serving;
                true
            }
            _ => false,
        }
    }

    /// When the first generation's probation ends.
    pub fn deadline(&self) -> Option<Instant> {
        match self {
            Phase::Probation { until } => Some(*until),
            _ => None,
        }
    }

    /// Whether a stop request changes anything: a graceful stop does
    /// not soften a fast one, and neither repeats itself.
    pub fn wants_stop(&self, graceful: bool) -> bool {
        match self {
            Phase::Stopping {
                graceful: false, ..
            } => false,
            Phase::Stopping { graceful: true, .. } => !graceful,
            _ => true,
        }
    }

    pub fn stop(&mut self, graceful: bool, exit: Exit) {
        let served = self.served();
        *self = Phase::Stopping {
            graceful,
            exit,
            served,
        };
    }

    /// A boot failure: the exit status to halt with, if this failure
    /// halts (before the first generation was ready). While a halt is
    /// under way, a later exit 4 wins over 3 and nothing else changes.
    pub fn halt_code(&mut self, code: u8) -> Option<u8> {
        match self {
            Phase::Stopping { exit, .. } if exit.code != 0 => {
                if code == 4 && exit.code == 3 {
                    exit.code = 4; // "4 wins over 3"
                }
                None
            }
            _ => Some(code),
        }
    }
}

/// A HUP reload.
pub enum Reload {
    Idle,
    /// The new generation `target` is booting; what to go back to if it
    /// cannot. `queued`: another HUP came meanwhile (one is kept).
    InFlight(Box<InFlight>),
    /// The new generation is ready and the old one drains: the reload is
    /// complete once no older worker is left.
    Retiring {
        target: u64,
    },
}

pub struct InFlight {
    pub target: u64,
    pub from: u64,
    pub from_young_until: Option<Instant>,
    pub previous: Config,
    pub previous_listeners: Vec<Rc<Listener>>,
    pub started: Instant,
    pub queued: bool,
    /// SPEC 13: every new worker is ready and the generation is on
    /// probation since `.0` until `.1`; the old one serves meanwhile.
    pub probation: Option<(Instant, Instant)>,
    /// A TERM came during the probation: the stop waits for its end.
    pub term_held: bool,
}

/// What happens when every worker of the new generation is ready.
#[derive(Debug, PartialEq, Eq)]
pub enum AllReady {
    /// No reload in flight, or its probation runs already.
    Nothing,
    /// The probation window opens; the old generation keeps serving.
    Probation { until: Instant },
    /// The window (opened by a first batch of a rolling reload) has
    /// passed already: the reload goes on (`on_ready`).
    Passed,
}

/// What a HUP does.
#[derive(Debug, PartialEq, Eq)]
pub enum Hup {
    /// Start a reload now.
    Start,
    /// A reload is in flight: this one follows it, to `target`.
    Queued {
        target: u64,
    },
    Refused(String),
}

impl Reload {
    pub fn in_flight(&self) -> bool {
        matches!(self, Reload::InFlight(_))
    }

    /// A HUP. `booting`: a new master that is still booting (it inherited
    /// the listeners as they are; a reload would change them under it);
    /// `last`: the last generation started.
    pub fn on_hup(
        &mut self,
        running: bool,
        booting: Option<Pid>,
        last: u64,
    ) -> Hup {
        if !running {
            return Hup::Refused("HUP ignored: stopping".into());
        }
        if let Reload::InFlight(r) = self {
            r.queued = true;
            return Hup::Queued { target: last + 1 };
        }
        if let Some(child) = booting {
            return Hup::Refused(format!(
                "HUP refused: new master {child} is booting; reload once \
                 the upgrade is over, or end it with TERM to {child}"
            ));
        }
        Hup::Start
    }

    /// Every worker of the new generation is ready at `now`. Without a
    /// probation the reload goes on at once (`on_ready`); with one, its
    /// window opens, once.
    pub fn on_all_ready(
        &mut self,
        now: Instant,
        probation: std::time::Duration,
    ) -> AllReady {
        if let Some(until) = self.begin_probation(now, probation) {
            return AllReady::Probation { until };
        }
        match self {
            Reload::InFlight(r)
                if r.probation.is_some_and(|(_, until)| until <= now) =>
            {
                AllReady::Passed
            }
            _ => AllReady::Nothing,
        }
    }

    /// Opens the probation window at `now`, once: when every new worker
    /// is ready, or (a rolling reload) when the first batch is. Returns
    /// its end when it opened now.
    pub fn begin_probation(
        &mut self,
        now: Instant,
        probation: std::time::Duration,
    ) -> Option<Instant> {
        match self {
            Reload::InFlight(r)
                if r.probation.is_none() && !probation.is_zero() =>
            {
                let until = now + probation;
                r.probation = Some((now, until));
                Some(until)
            }
            _ => None,
        }
    }

    /// The probation window of the reload in flight passed at `now`,
    /// with every new worker ready (`all_ready`; if not, their readiness
    /// ends it): the old generation retires (see `on_ready`).
    pub fn on_probation_timer(
        &mut self,
        now: Instant,
        all_ready: bool,
    ) -> Option<Box<InFlight>> {
        match self {
            Reload::InFlight(r)
                if all_ready
                    && r.probation.is_some_and(|(_, until)| until <= now) =>
            {
                self.on_ready()
            }
            _ => None,
        }
    }

    /// When the probation of the reload in flight ends.
    pub fn deadline(&self) -> Option<Instant> {
        match self {
            Reload::InFlight(r) => r.probation.map(|(_, until)| until),
            _ => None,
        }
    }

    /// Whether the new generation's probation runs (since when, and how
    /// long it lasts).
    pub fn probation(&self) -> Option<(Instant, Instant)> {
        match self {
            Reload::InFlight(r) => r.probation,
            _ => None,
        }
    }

    /// A stop during the probation: the first TERM is held until the
    /// window ends (true); a second TERM, or INT/QUIT, stops at once.
    pub fn hold_stop(&mut self, graceful: bool) -> bool {
        match self {
            Reload::InFlight(r)
                if graceful && r.probation.is_some() && !r.term_held =>
            {
                r.term_held = true;
                true
            }
            _ => false,
        }
    }

    /// Every worker of the new generation is ready (and its probation,
    /// if any, passed): the old one retires. Returns what the reload
    /// replaced, and whether a HUP is queued.
    pub fn on_ready(&mut self) -> Option<Box<InFlight>> {
        match std::mem::replace(self, Reload::Idle) {
            Reload::InFlight(r) => {
                *self = Reload::Retiring { target: r.target };
                Some(r)
            }
            other => {
                *self = other;
                None
            }
        }
    }

    /// The new generation cannot boot (or WINCH ended the reload where
    /// it stands): back to idle, with what it replaced.
    pub fn end(&mut self) -> Option<Box<InFlight>> {
        match std::mem::replace(self, Reload::Idle) {
            Reload::InFlight(r) => Some(r),
            _ => None,
        }
    }

    /// A worker went away: if no worker older than the reload's target
    /// is left (`oldest` is the oldest live generation), the reload is
    /// complete; returns its target.
    pub fn on_old_gone(&mut self, oldest: Option<u64>) -> Option<u64> {
        match *self {
            Reload::Retiring { target }
                if oldest.is_none_or(|g| g >= target) =>
            {
                *self = Reload::Idle;
                Some(target)
            }
            _ => None,
        }
    }

    /// A new reload starts while the previous one's old generation still
    /// drains: that one is complete as far as its waiters go.
    pub fn superseded(&mut self) -> Option<u64> {
        match *self {
            Reload::Retiring { target } => {
                *self = Reload::Idle;
                Some(target)
            }
            _ => None,
        }
    }
}

/// The old master's side of a USR2 upgrade.
pub enum Upgrade {
    Idle,
    /// The new master runs and has not written its ready byte.
    Booting(Box<Booting>),
    /// The new master is ready; this one serves until it retires.
    Ready {
        child: Pid,
    },
    /// This master retired in favour of `child` (MAINPID handed over,
    /// draining). `alive`: the new master has not been reaped.
    HandedOver {
        child: Pid,
        alive: bool,
    },
}

pub struct Booting {
    pub child: Pid,
    /// The ready pipe, until a byte, `!reason` or EOF came.
    pub ready: Option<OwnedFd>,
    /// The exec's error pipe (stage and errno if exec failed).
    pub errors: OwnedFd,
    pub deadline: Instant,
    /// A TERM arrived meanwhile: retire if it succeeds, stop if not.
    pub term_held: bool,
    /// `upgrader -s upgrade`: retire when it is ready (the TERM of the
    /// manual procedure).
    pub retire_when_ready: bool,
    /// Why it failed, once known (reported when the child is reaped).
    pub failure: Option<String>,
    pub started: Instant,
}

/// What a stop signal (TERM graceful, INT/QUIT fast) means while an
/// upgrade is in play.
#[derive(Debug, PartialEq, Eq)]
pub enum StopStep {
    /// An ordinary stop.
    Stop,
    /// TERM while the new master boots: held until the outcome. `first`:
    /// not held before.
    Hold { first: bool },
    /// The new master is ready: this stop is the retirement.
    Retire,
    /// Retiring already; nothing more to do.
    Ignore,
}

/// What the ready pipe said.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadyStep {
    /// Nothing yet (EAGAIN) or not booting.
    Nothing,
    /// The new master is ready; retire now if a TERM was held or `-s
    /// upgrade` asked for it.
    Ready {
        child: Pid,
        retire: bool,
        took: std::time::Duration,
    },
    /// It halted and said why, or closed the pipe: its exit follows (a
    /// second later at most, or it is killed).
    Failing,
}

/// How the new master's exit is to be taken.
pub enum ExitStep {
    /// Not the new master.
    NotOurs,
    /// It died before it was ready: the upgrade failed. `failure`: the
    /// reason it gave (or the deadline's), `errors`: the exec's error
    /// pipe, `stop`: a TERM was held.
    Failed {
        failure: Option<String>,
        errors: OwnedFd,
        stop: bool,
    },
    /// It was ready but this master had not retired yet.
    DiedBeforeRetirement,
    /// It died after the hand-off while this master was still draining:
    /// nobody would serve once this one exits.
    DiedWhileRetiring,
    /// It exited after the hand-off, this master being gone as far as
    /// the service is concerned.
    Gone,
}

impl Upgrade {
    pub fn booting(
        child: Pid,
        ready: OwnedFd,
        errors: OwnedFd,
        deadline: Instant,
    ) -> Upgrade {
        Upgrade::Booting(Box::new(Booting {
            child,
            ready: Some(ready),
            errors,
            deadline,
            term_held: false,
            retire_when_ready: false,
            failure: None,
            started: Instant::now(),
        }))
    }

    /// The new master, while it runs (booting, ready, or handed over).
    pub fn child(&self) -> Option<Pid> {
        match self {
            Upgrade::Idle => None,
            Upgrade::Booting(b) => Some(b.child),
            Upgrade::Ready { child } => Some(*child),
            Upgrade::HandedOver { child, alive } => alive.then_some(*child),
        }
    }

    /// The new master while it boots.
    pub fn booting_child(&self) -> Option<Pid> {
        match self {
            Upgrade::Booting(b) => Some(b.child),
            _ => None,
        }
    }

    /// A successor inherited the listeners (it exists, or took over).
    pub fn has_successor(&self) -> bool {
        !matches!(self, Upgrade::Idle)
    }

    pub fn handed_over(&self) -> bool {
        matches!(self, Upgrade::HandedOver { .. })
    }

    pub fn ready_fd(&self) -> Option<BorrowedFd<'_>> {
        match self {
            Upgrade::Booting(b) => b.ready.as_ref().map(|r| r.as_fd()),
            _ => None,
        }
    }

    /// When to give up on a booting new master.
    pub fn deadline(&self) -> Option<Instant> {
        match self {
            Upgrade::Booting(b) if b.failure.is_none() => Some(b.deadline),
            _ => None,
        }
    }

    /// Why a USR2 cannot start an upgrade now, if it cannot.
    /// `unpromoted`: this master is itself a new master whose old master
    /// (the pid) still runs; `running`: not stopping; `reload`: the HUP
    /// lifecycle. One change at a time (invariant 3): an abandoned reload
    /// would close listeners the new master inherited.
    pub fn refuse(
        &self,
        unpromoted: Option<Pid>,
        running: bool,
        reload: &Reload,
    ) -> Option<String> {
        if let Some(old) = unpromoted {
            return Some(format!(
                "USR2 ignored: not promoted yet (old master {old} still runs)"
            ));
        }
        if let Some(child) = self.child() {
            return Some(format!("USR2 ignored: new master {child} exists"));
        }
        if !running {
            return Some("USR2 ignored: stopping".into());
        }
        reload
            .in_flight()
            .then(|| "USR2 ignored: a reload is in flight".into())
    }

    /// `-s upgrade`: retire once the new master is ready.
    pub fn retire_when_ready(&mut self) {
        if let Upgrade::Booting(b) = self {
            b.retire_when_ready = true;
        }
    }

    pub fn on_stop(&mut self, graceful: bool) -> StopStep {
        match self {
            Upgrade::Booting(b) if graceful => {
                let first = !b.term_held;
                b.term_held = true;
                StopStep::Hold { first }
            }
            Upgrade::Ready { .. } => StopStep::Retire,
            Upgrade::HandedOver { .. } if graceful => StopStep::Ignore,
            _ => StopStep::Stop,
        }
    }

    /// What was read from the ready pipe: `Some(bytes)` (empty: EOF), or
    /// `None` (nothing yet). `auto_retire`: `--auto-retire on`.
    pub fn on_ready_pipe(
        &mut self,
        read: Option<&[u8]>,
        now: Instant,
        auto_retire: bool,
    ) -> ReadyStep {
        let Upgrade::Booting(b) = self else {
            return ReadyStep::Nothing;
        };
        match read {
            None => ReadyStep::Nothing,
            // "!reason": the new master halted and says why.
            Some([b'!', why @ ..]) => {
                b.ready = None;
                b.failure = Some(String::from_utf8_lossy(why).into_owned());
                ReadyStep::Failing
            }
            Some([]) => {
                // EOF without the byte (SPEC 7.2). A new master closes the
                // pipe just before it exits; one that still runs a second
                // later is killed, so it cannot block the next USR2.
                b.ready = None;
                b.deadline = b.deadline.min(now + EXIT_GRACE);
                ReadyStep::Failing
            }
            Some(_) => {
                let (child, took) = (b.child, now - b.started);
                let retire = b.term_held || b.retire_when_ready || auto_retire;
                *self = Upgrade::Ready { child };
                ReadyStep::Ready {
                    child,
                    retire,
                    took,
                }
            }
        }
    }

    /// The deadline passed: returns the new master to SIGKILL, with the
    /// failure recorded as `why`.
    pub fn on_deadline(&mut self, now: Instant, why: String) -> Option<Pid> {
        match self {
            Upgrade::Booting(b)
                if b.failure.is_none() && b.deadline <= now =>
            {
                b.failure = Some(match b.ready {
                    Some(_) => why,
                    None => "closed its ready pipe without being ready".into(),
                });
                Some(b.child)
            }
            _ => None,
        }
    }

    /// Ready -> HandedOver: the retirement begins. Returns the new master.
    pub fn retire(&mut self) -> Option<Pid> {
        match *self {
            Upgrade::Ready { child } => {
                *self = Upgrade::HandedOver { child, alive: true };
                Some(child)
            }
            _ => None,
        }
    }

    /// A child was reaped; `stopping`: this master is draining.
    pub fn on_exit(&mut self, pid: Pid, stopping: bool) -> ExitStep {
        if self.child() != Some(pid) {
            return ExitStep::NotOurs;
        }
        match std::mem::replace(self, Upgrade::Idle) {
            Upgrade::Booting(b) => ExitStep::Failed {
                failure: b.failure,
                errors: b.errors,
                stop: b.term_held,
            },
            Upgrade::Ready { .. } => ExitStep::DiedBeforeRetirement,
            Upgrade::HandedOver { child, .. } => {
                *self = Upgrade::HandedOver {
                    child,
                    alive: false,
                };
                if stopping {
                    ExitStep::DiedWhileRetiring
                } else {
                    ExitStep::Gone
                }
            }
            Upgrade::Idle => ExitStep::NotOurs,
        }
    }

    /// The old master takes over again after its successor died.
    pub fn take_over(&mut self) {
        *self = Upgrade::Idle;
    }

    /// For `-s status`: the new master and what it is doing.
    pub fn describe(&self) -> Option<(Pid, &'static str)> {
        match self {
            Upgrade::Idle => None,
            Upgrade::Booting(b) => Some((b.child, "booting")),
            Upgrade::Ready { child } => Some((*child, "ready")),
            Upgrade::HandedOver { child, .. } => Some((*child, "handed over")),
        }
    }
}

/// How long a new master that closed its ready pipe has to exit.
const EXIT_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// TTIN (+1) / TTOU (-1): the new pool size, or `None` when the change
/// is refused (TTOU while drained by WINCH must not bring a worker back).
pub fn scale(desired: usize, delta: i64) -> Option<usize> {
    if desired == 0 && delta < 0 {
        return None;
    }
    Some((desired as i64 + delta).max(1) as usize)
}

#[cfg(test)]
mod tests;
