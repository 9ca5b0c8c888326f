//! `--max-worker-memory` (SPEC 15): every `--memory-check-interval` the
//! master measures each worker as the PSS summed over its process group
//! (a built-in worker; an exec worker's keeper, app and the app's own
//! children), RSS where `smaps_rollup` is missing, and replaces one
//! worker over the limit at a time, surge first: a new worker is
//! spawned beside it and the old one is TERMed once the new one is
//! ready, so serving capacity never dips. The deadline exists only while
//! the limit is set (no tick otherwise, invariant 7).

use std::collections::HashMap;
use std::time::Instant;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::Master;
use crate::pool::Stop;

impl Master {
    /// When the next measurement is due, if the limit is on.
    pub(super) fn memory_deadline(&self) -> Option<Instant> {
        self.memory_due
            .filter(|_| self.cfg.max_worker_memory.is_some())
    }

    /// Measures the workers if it is time, and picks one to replace.
    pub(super) fn memory_timers(&mut self, now: Instant) {
        let Some(limit) = self.cfg.max_worker_memory else {
            self.memory_due = None;
            return;
        };
        match self.memory_due {
            Some(t) if t > now => return,
            None => {
                self.memory_due = Some(now + self.cfg.memory_check_interval);
                return;
            }
            Some(_) => {}
        }
        self.memory_due = Some(now + self.cfg.memory_check_interval);
        let groups = process_groups();
        for w in &mut self.workers {
            w.memory = groups.get(&w.pid.as_raw()).map(|pids| {
                pids.iter().filter_map(|p| memory_of(*p)).sum::<u64>()
            });
        }
        // One replacement at a time, and none while the pool is changing
        // anyway (a reload replaces every worker; stopping, nothing).
        if self.replacing.is_some()
            || self.reload.in_flight()
            || !self.phase.is_running()
            || !self.phase.served()
        {
            return;
        }
        let worst = self
            .workers
            .iter()
            .filter(|w| {
                w.generation == self.generation
                    && w.is_ready()
                    && w.memory.is_some_and(|m| m > limit)
            })
            .max_by_key(|w| w.memory);
        if let Some(w) = worst {
            log::warn!(
                "{} uses {} (PSS of its process group), over \
                 --max-worker-memory {}: replacing it (a new worker first)",
                w.role(),
                mib(w.memory.unwrap_or_default()),
                mib(limit)
            );
            self.replacing = Some(w.pid);
        }
    }

    /// While a worker over the limit is being replaced: the pool is one
    /// larger; once the extra one is ready the old one is retired.
    /// Returns how many workers the plan should aim for.
    pub(super) fn memory_surge(&mut self, now: Instant) -> usize {
        let Some(pid) = self.replacing else {
            return self.desired;
        };
        let live = self
            .workers
            .iter()
            .any(|w| w.pid == pid && !w.is_stopping());
        if !live || self.reload.in_flight() || !self.phase.is_running() {
            self.replacing = None;
            return self.desired;
        }
        if self.ready_count() > self.desired {
            self.replacing = None;
            if let Some(w) = self.workers.iter_mut().find(|w| w.pid == pid) {
                log::info!("retiring {} (over --max-worker-memory)", w.role());
                super::workers::signal_group(pid, Signal::SIGTERM);
                w.stop(Stop::Drain, Some(now + self.cfg.graceful_timeout));
            }
            return self.desired;
        }
        self.desired + 1
    }
}

/// Every process by its process group: one pass over /proc.
fn process_groups() -> HashMap<i32, Vec<Pid>> {
    let mut groups: HashMap<i32, Vec<Pid>> = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return groups;
    };
    for e in dir.flatten() {
        let Some(pid) =
            e.file_name().to_str().and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if let Some(pgrp) = pgrp_of(pid) {
            groups.entry(pgrp).or_default().push(Pid::from_raw(pid));
        }
    }
    groups
}

/// The process group from /proc/PID/stat (field 5, after the command
/// name, which may itself hold spaces and parentheses).
fn pgrp_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(2)?.parse().ok()
}

/// One process's memory: PSS from smaps_rollup (shared pages split
/// among the processes sharing them, so a forking app is not counted
/// twice), else RSS.
pub(crate) fn memory_of(pid: Pid) -> Option<u64> {
    let kb = |text: &str, key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .map(|k| k * 1024)
    };
    if let Ok(t) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        && let Some(b) = kb(&t, "Pss:")
    {
        return Some(b);
    }
    let t = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    kb(&t, "VmRSS:")
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_measured_and_grouped() {
        let me = nix::unistd::getpid();
        let m = memory_of(me).expect("memory of this process");
        assert!(m > 100 * 1024, "{m}");
        let pg = nix::unistd::getpgrp().as_raw();
        assert!(process_groups()[&pg].contains(&me));
        assert_eq!(pgrp_of(me.as_raw()), Some(pg));
    }
}
