//! The keeper of an exec worker and the process tree it looks after: it
//! forwards stops, reaps, and SIGKILLs every descendant before it goes (see
//! the module header of spawn).

use super::*;

/// The keeper: see the module header. Never returns.
pub(super) fn keeper(
    ctx: &Setup<'_>,
    age: u64,
    generation: u64,
    image: &mut sys::ExecImage,
    listeners: &[RawFd],
    errors: OwnedFd,
    output: OwnedFd,
) -> ! {
    // SIGHUP is the keeper's parent-death signal: blocked below and read
    // synchronously, then checked against getppid, so a stray HUP is
    // harmless.
    if let Err(e) = become_worker(ctx, Signal::SIGHUP, &SigSet::all()) {
        setup_failed(ctx, age, generation, e);
    }
    if nix::unistd::dup2_stdout(&output).is_err()
        || nix::unistd::dup2_stderr(&output).is_err()
    {
        sys::exit_now(3);
    }
    drop(output);
    let mut keep = listeners.to_vec();
    keep.push(errors.as_raw_fd());
    // SAFETY: the freshly forked keeper, before it serves or execs: the
    // master's descriptors it closes are never used in this process.
    #[allow(unsafe_code)]
    unsafe {
        sys::close_fds_except(&mut keep)
    };
    // Everything is blocked (become_worker): the master signals the
    // whole group, and those signals are meant for the app; the keeper
    // only waits.
    let all = SigSet::all();
    if nix::sys::prctl::set_child_subreaper(true).is_err() {
        sys::exit_now(3);
    }
    // SAFETY: the keeper is single-threaded; the child goes straight to
    // the exec image, which is built, allocates nothing and never
    // returns; `listeners` and `errors` are open in it.
    #[allow(unsafe_code)]
    let app = match unsafe { sys::fork() } {
        Ok(Fork::Child) => unsafe {
            image.exec(listeners, errors.as_raw_fd())
        },
        Ok(Fork::Parent(pid)) => pid,
        Err(_) => sys::exit_now(3),
    };
    forward_early_stops(app);
    drop(errors);
    for &fd in listeners {
        let _ = nix::unistd::close(fd);
    }
    loop {
        match all.wait() {
            Ok(Signal::SIGCHLD) => {
                if let Some(status) = reap_children(app) {
                    kill_descendants();
                    match status {
                        WaitStatus::Signaled(_, sig, _) => sys::die_like(sig),
                        WaitStatus::Exited(_, code) => sys::exit_now(code),
                        _ => sys::exit_now(1),
                    }
                }
            }
            Ok(Signal::SIGHUP) if getppid() != ctx.master => {
                kill_descendants();
                sys::exit_now(1)
            }
            Ok(KILL_TREE) => {
                kill_descendants();
                sys::die_like(Signal::SIGKILL)
            }
            _ => {}
        }
    }
}

/// A stop the master sent to the worker's group before the app existed
/// reached only the keeper (pending, blocked): the app is told too, or
/// it would serve until the drain's SIGKILL. (A signal sent just after
/// the fork reaches both; the app then gets it twice, which a stop
/// signal tolerates.)
pub(super) fn forward_early_stops(app: Pid) {
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGQUIT] {
        if sys::is_pending(sig) {
            let _ = nix::sys::signal::kill(app, sig);
        }
    }
}

/// Reaps every dead child (the app, or orphans reparented to the
/// keeper); returns the app's status once it is dead.
pub(super) fn reap_children(app: Pid) -> Option<WaitStatus> {
    let mut app_status = None;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return app_status,
            Ok(st) if st.pid() == Some(app) => app_status = Some(st),
            Ok(_) => {}
        }
    }
}

/// SIGKILLs every descendant: the keeper's children as the kernel lists
/// them, round after round, since each death reparents the dead one's
/// children to the keeper (a subreaper).
pub(super) fn kill_descendants() {
    let me = getpid();
    for _ in 0..1000 {
        let kids = children(me);
        if kids.is_empty() {
            return;
        }
        for k in kids {
            let _ = nix::sys::signal::kill(k, Signal::SIGKILL);
        }
        let _ = waitpid(Pid::from_raw(-1), None);
    }
}

/// The direct children of `pid` (a single-threaded process), from
/// /proc/PID/task/PID/children (proc(5)); where the kernel has no such
/// file (CONFIG_PROC_CHILDREN off), from every process's parent pid.
pub fn children(pid: Pid) -> Vec<Pid> {
    match std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
        Ok(text) => text
            .split_whitespace()
            .filter_map(|s| s.parse().ok())
            .map(Pid::from_raw)
            .collect(),
        Err(_) => children_by_scan(pid),
    }
}

/// The processes whose parent is `pid`, by reading /proc/*/stat.
pub(super) fn children_by_scan(pid: Pid) -> Vec<Pid> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| parent_of(&s))
                == Some(pid.as_raw())
        })
        .map(Pid::from_raw)
        .collect()
}

/// The parent pid in a /proc/PID/stat line (the field after the state,
/// which follows the last ')' of the command name).
pub(super) fn parent_of(stat: &str) -> Option<i32> {
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}
