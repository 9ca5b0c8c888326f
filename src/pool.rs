//! The worker pool as data: who is alive, in which state, of which
//! generation, and what should happen next. Nothing here forks or
//! signals; the master asks `plan` and `due` and carries the answers
//! out, so the decisions are unit-tested without processes.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use nix::unistd::Pid;

/// Where a worker is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Spawned, not ready yet. `ready_at`: exec workers in
    /// `--ready delay:SECS` mode become ready then by themselves.
    Booting {
        ready_by: Instant,
        ready_at: Option<Instant>,
    },
    /// Serving. `beat_by`: the next heartbeat is owed by then.
    Ready {
        since: Instant,
        beat_by: Option<Instant>,
    },
    /// Asked to go (the signal is sent); SIGKILL at `kill_at` if still
    /// there (`None` once the SIGKILL is sent).
    Stopping { why: Stop, kill_at: Option<Instant> },
}

/// Why a worker is going away; decides how its exit is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Retired: scale-down, reload, WINCH, graceful stop (TERM).
    Drain,
    /// Fast stop or halt (QUIT).
    Quit,
    /// Missed its heartbeat (the timeout signal).
    Late,
    /// Not ready by the boot deadline (SIGKILL).
    BootTimeout,
    /// Said `STOPPING=1` itself (e.g. --max-requests).
    Leaving,
}

/// Bounded tail of an exec worker's output, for failure reports.
#[derive(Debug, Default)]
pub struct Tail {
    lines: VecDeque<String>,
}

impl Tail {
    pub const KEEP: usize = 5;

    pub fn push(&mut self, line: &str) {
        if self.lines.len() == Self::KEEP {
            self.lines.pop_front();
        }
        self.lines.push_back(line.chars().take(300).collect());
    }

    pub fn last(&self) -> Option<&str> {
        self.lines.back().map(|s| s.as_str())
    }
}

/// What only an exec worker (keeper + app) has.
#[derive(Debug)]
pub struct ExecWorker {
    /// Read end of its stdout/stderr pipe (`None` after EOF).
    pub output: Option<OwnedFd>,
    /// A partial line of output not yet relayed.
    pub partial: Vec<u8>,
    /// Read end of the pipe that carries a failed exec's step and errno.
    pub errors: OwnedFd,
    /// Its keeper was asked to kill the app's tree.
    pub keeper_asked: bool,
}

impl ExecWorker {
    pub fn new(output: OwnedFd, errors: OwnedFd) -> ExecWorker {
        ExecWorker {
            output: Some(output),
            partial: Vec::new(),
            errors,
            keeper_asked: false,
        }
    }
}

#[derive(Debug)]
pub struct Worker {
    pub pid: Pid,
    pub age: u64,
    pub generation: u64,
    pub spawned: Instant,
    pub state: State,
    /// The last lines of its output (exec workers) or its setup error,
    /// for failure reports.
    pub tail: Tail,
    /// The last `STATUS=` it sent.
    pub status: Option<String>,
    /// When its last `WATCHDOG=1` came, and the request count a
    /// built-in worker reports with it (`X_REQUESTS=`).
    pub last_beat: Option<Instant>,
    pub requests: Option<u64>,
    /// When it became ready (kept once it is stopping, so its exit can
    /// be judged by how long it served).
    pub ready_since: Option<Instant>,
    /// An exec worker's own parts; `None` for a built-in worker.
    pub exec: Option<ExecWorker>,
    /// Its memory (bytes of PSS over its process group) when last
    /// measured (`--max-worker-memory`).
    pub memory: Option<u64>,
}

impl Worker {
    pub fn new(pid: Pid, age: u64, generation: u64, state: State) -> Self {
        Worker {
            pid,
            age,
            generation,
            spawned: Instant::now(),
            state,
            tail: Tail::default(),
            status: None,
            last_beat: None,
            requests: None,
            ready_since: None,
            exec: None,
            memory: None,
        }
    }

    /// An exec worker (keeper + app), not a built-in one.
    pub fn is_exec(&self) -> bool {
        self.exec.is_some()
    }

    /// Booting -> Ready at `now`; `timeout` is the heartbeat it owes.
    /// Returns false (and changes nothing) unless it was booting.
    pub fn become_ready(
        &mut self,
        now: Instant,
        timeout: Option<Duration>,
    ) -> bool {
        if !matches!(self.state, State::Booting { .. }) {
            return false;
        }
        self.state = State::Ready {
            since: now,
            beat_by: timeout.map(|t| now + t),
        };
        self.ready_since = Some(now);
        true
    }

    /// A heartbeat came: the next one is owed `timeout` from now.
    pub fn beat(&mut self, now: Instant, timeout: Option<Duration>) {
        self.last_beat = Some(now);
        if let State::Ready {
            since,
            beat_by: Some(_),
        } = self.state
        {
            self.state = State::Ready {
                since,
                beat_by: timeout.map(|t| now + t),
            };
        }
    }

    /// Asked (or decided) to go, for `why`; SIGKILL at `kill_at`.
    pub fn stop(&mut self, why: Stop, kill_at: Option<Instant>) {
        self.state = State::Stopping { why, kill_at };
    }

    /// How long it has been ready, if it ever was.
    pub fn served_for(&self, now: Instant) -> Option<Duration> {
        self.ready_since.map(|t| now.saturating_duration_since(t))
    }

    pub fn is_ready(&self) -> bool {
        matches!(self.state, State::Ready { .. })
    }

    pub fn is_stopping(&self) -> bool {
        matches!(self.state, State::Stopping { .. })
    }

    /// "worker[123] gen=2 age=7", the role its log lines carry.
    pub fn role(&self) -> String {
        role(self.pid, self.generation, self.age)
    }

    /// The next instant at which this worker needs attention.
    pub fn deadline(&self) -> Option<Instant> {
        match self.state {
            State::Booting { ready_by, ready_at } => {
                Some(ready_at.map_or(ready_by, |a| a.min(ready_by)))
            }
            State::Ready { beat_by, .. } => beat_by,
            State::Stopping { kill_at, .. } => kill_at,
        }
    }
}

pub fn role(pid: Pid, generation: u64, age: u64) -> String {
    format!("worker[{pid}] gen={generation} age={age}")
}

/// A timer that went off for one worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// `--ready delay`: alive long enough, now ready.
    Ready,
    /// Not ready by `--boot-timeout`.
    BootTimeout,
    /// Heartbeat late by `--timeout`: send the timeout signal.
    Late,
    /// Still there at its kill deadline: SIGKILL.
    Kill,
}

/// What timer (if any) has gone off for `w` at `now`.
pub fn due(w: &Worker, now: Instant) -> Option<Due> {
    match w.state {
        State::Booting { ready_by, ready_at } => {
            if ready_at.is_some_and(|a| a <= now) && now < ready_by {
                Some(Due::Ready)
            } else if ready_by <= now {
                Some(Due::BootTimeout)
            } else {
                None
            }
        }
        State::Ready { beat_by, .. } => {
            beat_by.filter(|b| *b <= now).map(|_| Due::Late)
        }
        State::Stopping { kill_at, .. } => {
            kill_at.filter(|k| *k <= now).map(|_| Due::Kill)
        }
    }
}

/// What the pool should do now to reach the desired shape.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Workers of the current generation to spawn.
    pub spawn: usize,
    /// Workers to retire gracefully (TERM), oldest first.
    pub retire: Vec<Pid>,
}

/// Reconciles the workers with `desired` workers of generation
/// `current`:
/// * too few of the current generation: spawn (unless `may_spawn` is
///   false: backoff or stopping);
/// * too many: retire the oldest;
/// * older generations are retired only once the current one has
///   `desired` ready workers (invariant 2: the old serves until the
///   new is ready).
pub fn plan(
    workers: &[Worker],
    desired: usize,
    current: u64,
    may_spawn: bool,
) -> Plan {
    let mut live: Vec<&Worker> = workers
        .iter()
        .filter(|w| w.generation == current && !w.is_stopping())
        .collect();
    live.sort_by_key(|w| w.age);
    let mut plan = Plan::default();
    if live.len() < desired && may_spawn {
        plan.spawn = desired - live.len();
    }
    if live.len() > desired {
        // Prefer retiring workers that are not ready yet? No: the oldest
        // go first, as gunicorn and nginx do; the young are the ones
        // carrying the newest code.
        let extra = live.len() - desired;
        plan.retire.extend(live.iter().take(extra).map(|w| w.pid));
    }
    let ready = live.iter().filter(|w| w.is_ready()).count();
    if ready >= desired {
        let mut old: Vec<&Worker> = workers
            .iter()
            .filter(|w| w.generation < current && !w.is_stopping())
            .collect();
        old.sort_by_key(|w| w.age);
        plan.retire.extend(old.iter().map(|w| w.pid));
    }
    plan
}

/// SPEC 14: a rolling reload to generation `current`, `batch` workers
/// at a time. Every process counts against `desired + batch` (draining
/// ones too: they still hold memory), so new workers are spawned only as
/// old ones are gone; each ready new worker lets one old one retire,
/// oldest first, so serving capacity never drops below `desired`; the
/// last `keep_old` old workers stay (until the probation has passed).
pub fn rolling_plan(
    workers: &[Worker],
    desired: usize,
    current: u64,
    batch: usize,
    keep_old: usize,
    may_spawn: bool,
) -> Plan {
    let mut new: Vec<&Worker> = workers
        .iter()
        .filter(|w| w.generation == current && !w.is_stopping())
        .collect();
    new.sort_by_key(|w| w.age);
    let mut old: Vec<&Worker> = workers
        .iter()
        .filter(|w| w.generation < current && !w.is_stopping())
        .collect();
    old.sort_by_key(|w| w.age);
    let mut plan = Plan::default();
    if may_spawn && new.len() < desired {
        let room = (desired + batch).saturating_sub(workers.len());
        plan.spawn = (desired - new.len()).min(room);
    }
    if new.len() > desired {
        plan.retire
            .extend(new.iter().take(new.len() - desired).map(|w| w.pid));
    }
    let ready = new.iter().filter(|w| w.is_ready()).count().min(desired);
    let surplus = (old.len() + ready).saturating_sub(desired);
    let may_go = old.len().saturating_sub(keep_old);
    plan.retire
        .extend(old.iter().take(surplus.min(may_go)).map(|w| w.pid));
    plan
}

/// Delay before the next respawn after `failures` consecutive failed
/// workers: the first failure respawns at once, then 100 ms doubling up
/// to 10 s, so a crashing app costs a little CPU, not a fork storm.
pub fn backoff(failures: u32) -> Duration {
    if failures <= 1 {
        return Duration::ZERO;
    }
    let exp = (failures - 2).min(7);
    (Duration::from_millis(100) * 2u32.pow(exp)).min(Duration::from_secs(10))
}

/// How long a worker must have served before its death no longer counts
/// as part of a crash streak.
pub const STABLE: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    fn stopping(pid: i32, age: u64, generation: u64) -> Worker {
        let mut x = w(pid, age, generation, true);
        x.stop(Stop::Drain, None);
        x
    }

    #[test]
    fn a_rolling_reload_goes_batch_by_batch_within_desired_plus_batch() {
        // 4 old (gen 1) workers, batch 2, to gen 2.
        let mut ws: Vec<Worker> =
            (1..=4).map(|i| w(i, i as u64, 1, true)).collect();
        let p = rolling_plan(&ws, 4, 2, 2, 0, true);
        assert_eq!(
            p,
            Plan {
                spawn: 2,
                retire: vec![]
            }
        );
        // Two new ones booting: nothing more until they are ready.
        ws.push(w(11, 5, 2, false));
        ws.push(w(12, 6, 2, false));
        assert_eq!(rolling_plan(&ws, 4, 2, 2, 0, true), Plan::default());
        // Ready: the two oldest old ones retire.
        for x in ws.iter_mut().filter(|x| x.generation == 2) {
            x.become_ready(Instant::now(), None);
        }
        let p = rolling_plan(&ws, 4, 2, 2, 0, true);
        assert_eq!(
            p,
            Plan {
                spawn: 0,
                retire: vec![Pid::from_raw(1), Pid::from_raw(2)]
            }
        );
        // While they drain they still count: no spawn beyond 6.
        ws[0].stop(Stop::Drain, None);
        ws[1].stop(Stop::Drain, None);
        assert_eq!(rolling_plan(&ws, 4, 2, 2, 0, true).spawn, 0);
        // Gone: the next batch.
        ws.drain(..2);
        assert_eq!(rolling_plan(&ws, 4, 2, 2, 0, true).spawn, 2);
    }

    #[test]
    fn the_last_batch_of_old_workers_waits_for_the_probation() {
        let mut ws: Vec<Worker> = vec![w(3, 3, 1, true), w(4, 4, 1, true)];
        ws.extend((11..=14).map(|i| w(i, i as u64, 2, true)));
        let p = rolling_plan(&ws, 4, 2, 2, 2, true);
        assert!(p.retire.is_empty(), "kept for the probation: {p:?}");
        let p = rolling_plan(&ws, 4, 2, 2, 0, true);
        assert_eq!(p.retire, vec![Pid::from_raw(3), Pid::from_raw(4)]);
        assert_eq!(p.spawn, 0);
    }

    #[test]
    fn a_rolling_plan_never_exceeds_desired_plus_batch() {
        let mut ws: Vec<Worker> =
            (1..=8).map(|i| w(i, i as u64, 1, true)).collect();
        ws.push(stopping(20, 20, 1));
        let p = rolling_plan(&ws, 8, 2, 2, 0, true);
        assert_eq!(p.spawn, 1, "9 processes, room for 1");
        assert_eq!(rolling_plan(&ws, 8, 2, 2, 0, false).spawn, 0, "backoff");
    }

    fn w(pid: i32, age: u64, generation: u64, ready: bool) -> Worker {
        let now = Instant::now();
        let state = if ready {
            State::Ready {
                since: now,
                beat_by: None,
            }
        } else {
            State::Booting {
                ready_by: now + Duration::from_secs(30),
                ready_at: None,
            }
        };
        Worker::new(Pid::from_raw(pid), age, generation, state)
    }

    #[test]
    fn spawns_up_to_desired() {
        let p = plan(&[w(10, 1, 1, true)], 3, 1, true);
        assert_eq!(p.spawn, 2);
        assert!(p.retire.is_empty());
        assert_eq!(plan(&[], 3, 1, false).spawn, 0, "backoff holds spawns");
    }

    #[test]
    fn scale_down_retires_oldest_first() {
        let ws = [w(12, 3, 1, true), w(10, 1, 1, true), w(11, 2, 1, true)];
        let p = plan(&ws, 1, 1, true);
        assert_eq!(p.retire, [Pid::from_raw(10), Pid::from_raw(11)]);
    }

    #[test]
    fn old_generation_stays_until_new_is_ready() {
        let mut ws = vec![w(10, 1, 1, true), w(11, 2, 1, true)];
        ws.push(w(20, 3, 2, true));
        ws.push(w(21, 4, 2, false));
        let p = plan(&ws, 2, 2, true);
        assert!(p.retire.is_empty(), "one new worker is still booting");
        ws[3].state = State::Ready {
            since: Instant::now(),
            beat_by: None,
        };
        let p = plan(&ws, 2, 2, true);
        assert_eq!(p.retire, [Pid::from_raw(10), Pid::from_raw(11)]);
    }

    #[test]
    fn stopping_workers_are_not_counted() {
        let mut a = w(10, 1, 1, true);
        a.state = State::Stopping {
            why: Stop::Leaving,
            kill_at: None,
        };
        assert_eq!(plan(&[a], 1, 1, true).spawn, 1);
    }

    #[test]
    fn drain_to_zero_retires_everyone() {
        let ws = [w(10, 1, 1, true), w(11, 2, 1, false)];
        assert_eq!(plan(&ws, 0, 1, true).retire.len(), 2);
    }

    #[test]
    fn timers() {
        let now = Instant::now();
        let mut a = w(10, 1, 1, false);
        a.state = State::Booting {
            ready_by: now + Duration::from_secs(5),
            ready_at: Some(now),
        };
        assert_eq!(due(&a, now), Some(Due::Ready));
        a.state = State::Booting {
            ready_by: now,
            ready_at: None,
        };
        assert_eq!(due(&a, now), Some(Due::BootTimeout));
        a.state = State::Ready {
            since: now,
            beat_by: Some(now + Duration::from_secs(1)),
        };
        assert_eq!(due(&a, now), None);
        assert_eq!(due(&a, now + Duration::from_secs(1)), Some(Due::Late));
        a.state = State::Stopping {
            why: Stop::Drain,
            kill_at: Some(now),
        };
        assert_eq!(due(&a, now), Some(Due::Kill));
        assert_eq!(a.deadline(), Some(now));
    }

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(0), Duration::ZERO);
        assert_eq!(backoff(1), Duration::ZERO);
        assert_eq!(backoff(2), Duration::from_millis(100));
        assert_eq!(backoff(3), Duration::from_millis(200));
        assert_eq!(backoff(50), Duration::from_secs(10));
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let mut t = Tail::default();
        for i in 0..9 {
            t.push(&format!("line {i}"));
        }
        assert_eq!(t.last(), Some("line 8"));
        assert_eq!(t.lines.len(), Tail::KEEP);
    }
}
