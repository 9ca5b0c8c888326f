//! Forking workers: what every worker does first (its own process
//! group, dropped privileges, death with the master, a clean signal
//! state), and the exec worker's keeper.
//!
//! An exec worker is two processes: the *keeper*, forked by the master,
//! leader of the worker's process group, and the user's app, its child,
//! in the same group. The app's own children (gunicorn's workers) stay
//! in that group too, but the parent-death signal reaches only a direct
//! child; the keeper holds it instead (SIGHUP). The keeper is also a
//! child subreaper (PR_SET_CHILD_SUBREAPER), so whatever the app leaves
//! behind, even a descendant that left the process group with setsid,
//! is reparented to it. When the app exits, or the master dies, the
//! keeper SIGKILLs every remaining descendant before it goes. That is
//! how invariant 4 (no orphans, no held ports) covers apps that fork.
//! The keeper then mirrors the app's exit status (or death signal), so
//! to the master the keeper *is* the worker. See DESIGN.md.

use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nix::fcntl::OFlag;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Pid, getpid, getppid, setpgid};

use crate::config::{Config, Credentials, WorkerKind};
use crate::sys::{self, Fork};

mod tree;
pub use tree::*;

/// Sent to a keeper alone (never to the group): SIGKILL the app and
/// every descendant now.
pub const KILL_TREE: Signal = Signal::SIGUSR2;

/// Everything about the master a worker needs to know.
pub struct Setup<'a> {
    pub master: Pid,
    pub config: &'a Config,
    pub listeners: &'a [(String, RawFd)],
    pub notify: &'a Path,
    /// The master's environment at start, less the hand-off variables.
    pub base_env: &'a [(OsString, OsString)],
    pub hooks: bool,
}

/// A freshly forked worker, as the master sees it.
pub struct Spawned {
    pub pid: Pid,
    pub exec: Option<crate::pool::ExecWorker>,
}

/// Forks one worker of `generation`, number `age`.
pub fn spawn(ctx: &Setup<'_>, age: u64, generation: u64) -> Result<Spawned> {
    match &ctx.config.kind {
        WorkerKind::BuiltIn => spawn_builtin(ctx, age, generation),
        WorkerKind::Exec { program, args } => {
            spawn_exec(ctx, program, args, age, generation)
        }
    }
}

fn spawn_builtin(
    ctx: &Setup<'_>,
    age: u64,
    generation: u64,
) -> Result<Spawned> {
    let params = crate::worker::Params {
        master: ctx.master,
        age,
        generation,
        listeners: ctx.listeners.iter().map(|(_, fd)| *fd).collect(),
        notify: ctx.notify.to_path_buf(),
        timeout: ctx.config.timeout,
        max_requests: crate::worker::with_jitter(
            ctx.config.max_requests,
            ctx.config.max_requests_jitter,
            age,
        ),
        client_timeout: client_timeout(ctx.config),
        hooks: ctx.hooks,
    };
    // SAFETY: the master is single-threaded; the child leaves through
    // `worker::run` (exit_now), never back into the master's loop.
    #[allow(unsafe_code)]
    let forked = unsafe { sys::fork() }.context("fork")?;
    match forked {
        Fork::Child => {
            let mask = crate::signals::mask(&crate::worker::SIGNALS_READ);
            if let Err(e) = become_worker(ctx, Signal::SIGKILL, &mask) {
                setup_failed(ctx, age, generation, e);
            }
            crate::worker::run(params)
        }
        Fork::Parent(pid) => {
            // Also set here, so the master can signal the group even
            // before the child ran (both sides call it; POSIX idiom).
            let _ = setpgid(pid, pid);
            Ok(Spawned { pid, exec: None })
        }
    }
}

/// The built-in worker's per-connection deadline (see
/// `Config::worker_client_timeout`), with one warn line per master
/// process the first time the cap applies (at start, or at the reload
/// that introduced it).
fn client_timeout(cfg: &Config) -> std::time::Duration {
    use std::sync::atomic::{AtomicBool, Ordering};
    static WARNED: AtomicBool = AtomicBool::new(false);
    let (t, capped) = cfg.worker_client_timeout();
    if capped && !WARNED.swap(true, Ordering::Relaxed) {
        log::warn!(
            "--client-timeout {}: capped at {} (half of --timeout) so a \
             slow client cannot make a worker miss its heartbeat",
            humantime::format_duration(cfg.client_timeout),
            humantime::format_duration(t)
        );
    }
    t
}

/// The first steps of every worker: own process group, working
/// directory, umask, privileges, death with the master (set after the
/// privilege drop, which clears it), and a clean signal state.
///
/// `mask` is the signal mask the worker runs with from here on: the
/// master's blocked set is replaced in one step, never passing through
/// an empty mask in which a signal meant for later (USR1 to reopen logs,
/// TERM) would kill a worker still booting.
fn become_worker(ctx: &Setup<'_>, death: Signal, mask: &SigSet) -> Result<()> {
    let cfg = ctx.config;
    setpgid(Pid::from_raw(0), Pid::from_raw(0)).context("setpgid")?;
    if let Some(dir) = cfg.release.chdir.as_ref().or(cfg.chdir.as_ref()) {
        nix::unistd::chdir(dir)
            .with_context(|| format!("chdir {}", dir.display()))?;
    }
    if let Some(mask) = cfg.umask {
        nix::sys::stat::umask(mask);
    }
    drop_privileges(&cfg.credentials)?;
    nix::sys::prctl::set_pdeathsig(death).context("PR_SET_PDEATHSIG")?;
    // Closes the race: the master may have died before the prctl.
    if getppid() != ctx.master {
        sys::exit_now(1);
    }
    sys::reset_all_dispositions();
    mask.thread_set_mask().context("sigprocmask")?;
    Ok(())
}

fn drop_privileges(c: &Credentials) -> Result<()> {
    if let (Some(name), Some(gid)) = (&c.user_name, c.gid) {
        let cname = CString::new(name.as_bytes()).context("user name")?;
        nix::unistd::initgroups(&cname, gid)
            .with_context(|| format!("initgroups {name}"))?;
    } else if let Some(gid) = c.gid {
        nix::unistd::setgroups(&[gid]).context("setgroups")?;
    }
    if let Some(gid) = c.gid {
        nix::unistd::setgid(gid).with_context(|| format!("setgid {gid}"))?;
    }
    if let Some(uid) = c.uid {
        nix::unistd::setuid(uid).with_context(|| format!("setuid {uid}"))?;
    }
    Ok(())
}

/// The environment of an exec worker (`handoff::child_env`), with the
/// pid variables the child fills in itself.
pub fn exec_env(
    ctx: &Setup<'_>,
    age: u64,
    generation: u64,
) -> crate::handoff::ChildEnv {
    let names: Vec<&str> =
        ctx.listeners.iter().map(|(n, _)| n.as_str()).collect();
    crate::handoff::child_env(
        ctx.base_env,
        &crate::handoff::Child::Worker {
            names: &names,
            notify: ctx.notify,
            heartbeat: ctx.config.timeout,
            age,
            generation,
        },
    )
}

/// Pins the release a new generation runs (SPEC 13): the real paths of
/// the exec program and of `--chdir`, symlinks resolved now, so a
/// `current` symlink swapped by the next deploy changes nothing for the
/// workers of this generation, their respawns, or a rollback to it.
/// Returns a line for the log when pinning changed a path.
pub fn pin_release(
    cfg: &mut Config,
    env: &[(OsString, OsString)],
) -> Option<String> {
    let chdir = cfg.chdir.as_ref().and_then(|d| d.canonicalize().ok());
    let program = match &cfg.kind {
        WorkerKind::Exec { program, .. } => {
            resolve(program, env).canonicalize().ok()
        }
        WorkerKind::BuiltIn => None,
    };
    cfg.release = crate::config::Release { program, chdir };
    let moved = |given: Option<&Path>, real: Option<&PathBuf>| {
        given
            .zip(real)
            .filter(|(g, r)| g != r)
            .map(|(_, r)| r.clone())
    };
    let given_program = match &cfg.kind {
        WorkerKind::Exec { program, .. } => Some(program.as_path()),
        WorkerKind::BuiltIn => None,
    };
    let p = moved(given_program, cfg.release.program.as_ref());
    let d = moved(cfg.chdir.as_deref(), cfg.release.chdir.as_ref());
    (p.is_some() || d.is_some()).then(|| {
        let mut parts = Vec::new();
        if let Some(p) = &cfg.release.program {
            parts.push(format!("program {}", p.display()));
        }
        if let Some(d) = &cfg.release.chdir {
            parts.push(format!("directory {}", d.display()));
        }
        parts.join(", ")
    })
}

/// `program` as execve needs it: a path with a slash is taken from the
/// master's working directory (workers may `--chdir` elsewhere), a bare
/// name is looked up in PATH now, so HUP picks up whatever is installed
/// at that moment.
fn resolve(program: &Path, env: &[(OsString, OsString)]) -> PathBuf {
    if program.as_os_str().as_bytes().contains(&b'/') {
        return std::env::current_dir()
            .map(|cwd| cwd.join(program))
            .unwrap_or_else(|_| program.to_path_buf());
    }
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(program);
        if candidate.is_file() {
            return candidate;
        }
    }
    program.to_path_buf()
}

/// One line for a failed exec of `program` (from `cwd`, if one was
/// set): what failed and the OS reason, with a missing `#!` interpreter
/// and a deleted working directory named as such rather than blamed on
/// the program.
pub fn describe_exec_failure(
    program: &Path,
    cwd: Option<&Path>,
    stage: sys::ExecStage,
    errno: nix::errno::Errno,
) -> String {
    use nix::errno::Errno;
    let cwd_text = cwd.map_or("?".into(), |c| c.display().to_string());
    match stage {
        sys::ExecStage::Chdir => {
            format!("chdir {cwd_text}: {}", errno.desc())
        }
        sys::ExecStage::Descriptors => {
            format!(
                "exec {}: passing the listeners: {}",
                program.display(),
                errno.desc()
            )
        }
        sys::ExecStage::Execve => {
            let full = match cwd {
                Some(c) => c.join(program),
                None => program.to_path_buf(),
            };
            if errno == Errno::ENOENT
                && let Some(interp) = interpreter(&full)
                && !interp.exists()
            {
                return format!(
                    "exec {}: its interpreter {} (from its #! line) does \
                     not exist",
                    program.display(),
                    interp.display()
                );
            }
            format!("exec {}: {}", program.display(), errno.desc())
        }
    }
}

/// The interpreter a script names on its `#!` line, if it has one.
fn interpreter(script: &Path) -> Option<PathBuf> {
    use std::io::Read;
    let mut head = [0u8; 256];
    let n = std::fs::File::open(script).ok()?.read(&mut head).ok()?;
    let line = head[..n].strip_prefix(b"#!")?;
    let line = line.split(|b| *b == b'\n').next()?;
    let path = line
        .split(|b| *b == b' ' || *b == b'\t')
        .find(|w| !w.is_empty())?;
    Some(PathBuf::from(OsStr::from_bytes(path)))
}

/// `KEY=VALUE` C strings for execve.
pub fn envp(env: &[(OsString, OsString)]) -> Result<Vec<CString>> {
    env.iter()
        .map(|(k, v)| {
            let mut kv = k.clone();
            kv.push("=");
            kv.push(v);
            cstring(&kv)
        })
        .collect()
}

pub fn cstring(s: &OsStr) -> Result<CString> {
    CString::new(s.as_bytes())
        .with_context(|| format!("{s:?} contains a NUL byte"))
}

fn spawn_exec(
    ctx: &Setup<'_>,
    program: &Path,
    args: &[String],
    age: u64,
    generation: u64,
) -> Result<Spawned> {
    if ctx.listeners.len() > sys::MAX_LISTENERS {
        anyhow::bail!("at most {} listeners", sys::MAX_LISTENERS);
    }
    let env = exec_env(ctx, age, generation);
    let path = match &ctx.config.release.program {
        Some(p) => p.clone(),
        None => resolve(program, &env.vars),
    };
    let mut argv = vec![cstring(program.as_os_str())?];
    for a in args {
        argv.push(cstring(OsStr::new(a))?);
    }
    let envp = envp(&env.vars)?;
    let mut image = sys::ExecImage::new(
        cstring(path.as_os_str())?,
        argv,
        envp,
        &env.pid_vars,
    );
    let (out_r, out_w) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).context("pipe")?;
    let (err_r, err_w) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).context("pipe")?;
    let listeners: Vec<RawFd> =
        ctx.listeners.iter().map(|(_, fd)| *fd).collect();
    // SAFETY: the master is single-threaded; the child becomes the
    // keeper, which never returns (it execs the app or exits).
    #[allow(unsafe_code)]
    let forked = unsafe { sys::fork() }.context("fork")?;
    match forked {
        Fork::Child => {
            drop(out_r);
            drop(err_r);
            keeper(ctx, age, generation, &mut image, &listeners, err_w, out_w)
        }
        Fork::Parent(pid) => {
            let _ = setpgid(pid, pid);
            nix::fcntl::fcntl(
                &out_r,
                nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK),
            )
            .context("pipe O_NONBLOCK")?;
            nix::fcntl::fcntl(
                &err_r,
                nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK),
            )
            .context("pipe O_NONBLOCK")?;
            Ok(Spawned {
                pid,
                exec: Some(crate::pool::ExecWorker::new(out_r, err_r)),
            })
        }
    }
}

/// A worker's own setup failed (chdir, setuid, ...): it says why, in
/// its log line under its own role and on the master's notify socket
/// (so the boot failure the master reports carries the reason), and
/// exits 3: it cannot boot.
fn setup_failed(
    ctx: &Setup<'_>,
    age: u64,
    generation: u64,
    e: anyhow::Error,
) -> ! {
    crate::logging::set_role(crate::pool::role(getpid(), generation, age));
    let reason = format!("setup failed: {e:#}");
    log::error!("{reason}");
    if let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() {
        let _ =
            sock.send_to(format!("X_ERROR={reason}").as_bytes(), ctx.notify);
    }
    sys::exit_now(3)
}

#[cfg(test)]
mod tests;
