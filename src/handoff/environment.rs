//! The environment as this process started with it, read once and
//! never mutated (edition 2024 marks `set_var` as `unsafe`, for good
//! reason): what systemd passed (`LISTEN_*`, `NOTIFY_SOCKET`,
//! `WATCHDOG_*`, `JOURNAL_STREAM`), a predecessor's hand-off (decoded by
//! the parent module), and the rest, which children inherit. Also how
//! the process was invoked, for USR2.

use std::ffi::OsString;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use super::{HANDOFF, Predecessor, UPGRADER_FDS, UPGRADER_TEST_HOOKS};
use super::{decode, lookup, nth_name};
use crate::listeners::{self, Listener};

/// The shortest systemd watchdog the master honours as given; below it
/// (`WATCHDOG_USEC=1`) pinging at half the interval would be a busy
/// loop, so the interval is raised to this with a warning.
pub const WATCHDOG_FLOOR: Duration = Duration::from_millis(100);

/// What a descriptor number refers to, as far as the environment cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdKind {
    Closed,
    Pipe,
    Other,
}

/// The one question reading the environment asks the kernel; a seam so
/// the decisions are unit-tested with made-up descriptor tables.
pub trait Probe {
    fn kind(&self, fd: RawFd) -> FdKind;
}

/// The real descriptor table (fstat).
pub struct Kernel;

impl Probe for Kernel {
    fn kind(&self, fd: RawFd) -> FdKind {
        match crate::sys::file_type(fd) {
            None => FdKind::Closed,
            Some(t) if t == nix::libc::S_IFIFO => FdKind::Pipe,
            Some(_) => FdKind::Other,
        }
    }
}

/// How this process was started, recorded at start for USR2: the
/// executable path resolved now (never /proc/self/exe, which names the
/// replaced file after a package upgrade), argv and cwd.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub exe: PathBuf,
    pub argv: Vec<OsString>,
    pub cwd: PathBuf,
}

/// The start-up environment.
#[derive(Debug, Default)]
pub struct Environment {
    /// Everything, as it was (for children; filtered by `child_env`).
    pub vars: Vec<(OsString, OsString)>,
    pub notify_socket: Option<String>,
    /// systemd's watchdog for the master itself.
    pub watchdog: Option<Duration>,
    pub journal: bool,
    pub hooks: bool,
    /// `LISTEN_FDS` meant for us: (fd, name).
    pub listen_fds: Vec<(i32, String)>,
    pub predecessor: Option<Predecessor>,
    /// What was ignored, for the log once it exists.
    pub warnings: Vec<String>,
}

impl Environment {
    /// Reads this process's environment. An error is a configuration
    /// error (exit 2): systemd-style variables meant for this process
    /// that make no sense.
    pub fn read() -> Result<Environment> {
        Environment::from_vars(
            std::env::vars_os().collect(),
            std::process::id(),
            &Kernel,
        )
    }

    pub fn from_vars(
        vars: Vec<(OsString, OsString)>,
        me: u32,
        probe: &dyn Probe,
    ) -> Result<Environment> {
        let get = |k: &str| lookup(&vars, k);
        let mut warnings = Vec::new();
        let listen_fds = listen_fds(&vars, me, probe)?;
        let predecessor = match decode(&vars, probe) {
            Ok(p) => p,
            Err(why) => {
                let present: Vec<&str> =
                    HANDOFF.into_iter().filter(|k| get(k).is_some()).collect();
                warnings.push(format!(
                    "ignored {}: {why} (they are set only by an old \
                     master's USR2)",
                    present.join(", ")
                ));
                None
            }
        };
        let predecessor = predecessor.filter(|p| {
            let taken = p
                .fds
                .iter()
                .find(|(fd, _)| listen_fds.iter().any(|(l, _)| l == fd));
            if let Some((fd, _)) = taken {
                warnings.push(format!(
                    "ignored {UPGRADER_FDS}: descriptor {fd} is also in \
                     LISTEN_FDS"
                ));
            }
            taken.is_none()
        });
        let watchdog =
            watchdog(&vars, me, predecessor.as_ref(), &mut warnings);
        Ok(Environment {
            notify_socket: get("NOTIFY_SOCKET").filter(|s| !s.is_empty()),
            watchdog,
            journal: get("JOURNAL_STREAM").is_some(),
            hooks: get(UPGRADER_TEST_HOOKS).as_deref() == Some("1"),
            listen_fds,
            predecessor,
            warnings,
            vars,
        })
    }

    /// Takes the sockets systemd passed, or a predecessor handed on,
    /// validated.
    pub fn take_inherited(&mut self) -> Result<Vec<Listener>> {
        let systemd = std::mem::take(&mut self.listen_fds)
            .into_iter()
            .map(|(fd, name)| (fd, name, None));
        let handed = self
            .predecessor
            .iter()
            .flat_map(|p| p.fds.iter().cloned())
            .map(|(fd, h)| (fd, h.name.clone(), Some(h)));
        let mut out = Vec::new();
        for (fd, name, handed) in systemd.chain(handed) {
            // SAFETY: `take_inherited` runs once, and these numbers were
            // validated as distinct above stderr (LISTEN_FDS counts from 3;
            // UPGRADER_FDS refuses repeats and the ready pipe).
            #[allow(unsafe_code)]
            let owned = unsafe { crate::sys::adopt_inherited(fd) };
            let Some(owned) = owned else {
                bail!("inherited fd {fd} ({name}) is not open");
            };
            // sd_listen_fds(3) sets CLOEXEC: nothing else inherits these
            // unless we hand them on on purpose.
            nix::fcntl::fcntl(
                &owned,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            )
            .with_context(|| format!("inherited fd {fd}"))?;
            let mut l = listeners::adopt(owned, &name)?;
            if let Some(h) = handed {
                l.spec = h.spec;
                l.origin = h.origin;
            }
            out.push(l);
        }
        Ok(out)
    }
}

/// `LISTEN_FDS` when `LISTEN_PID` is this process (sd_listen_fds(3):
/// anything else is not for us and ignored). Each descriptor is checked
/// to be open before its entry exists, so a huge count fails at the
/// first closed number instead of building that many entries.
fn listen_fds(
    vars: &[(OsString, OsString)],
    me: u32,
    probe: &dyn Probe,
) -> Result<Vec<(i32, String)>> {
    let get = |k: &str| lookup(vars, k);
    let ours = get("LISTEN_PID").and_then(|p| p.trim().parse::<u32>().ok())
        == Some(me);
    let Some(count) = get("LISTEN_FDS").filter(|_| ours) else {
        return Ok(Vec::new());
    };
    let n: usize = count.trim().parse().map_err(|_| {
        anyhow!("LISTEN_FDS={count}: not a number of descriptors")
    })?;
    let names = get("LISTEN_FDNAMES");
    let mut out = Vec::new();
    for i in 0..n {
        let fd = i32::try_from(i + 3)
            .ok()
            .filter(|&fd| probe.kind(fd) != FdKind::Closed);
        let Some(fd) = fd else {
            bail!(
                "LISTEN_FDS={count}: descriptor {} is not open (only {i} \
                 were passed)",
                i + 3
            );
        };
        out.push((fd, nth_name(names.as_deref(), i)));
    }
    Ok(out)
}

/// systemd's watchdog for this master: only when `WATCHDOG_PID` is
/// unset, this process, or the predecessor (whose duty a new master
/// takes over); never shorter than `WATCHDOG_FLOOR`.
fn watchdog(
    vars: &[(OsString, OsString)],
    me: u32,
    pred: Option<&Predecessor>,
    warnings: &mut Vec<String>,
) -> Option<Duration> {
    let get = |k: &str| lookup(vars, k);
    let me = me.to_string();
    let pred = pred.map(|p| p.pid.to_string());
    let for_me = get("WATCHDOG_PID").is_none_or(|p| {
        let p = p.trim();
        p == me || Some(p) == pred.as_deref()
    });
    let usec = get("WATCHDOG_USEC").filter(|_| for_me)?;
    let Ok(us) = usec.trim().parse::<u64>() else {
        warnings.push(format!(
            "ignored WATCHDOG_USEC={usec}: not a number of microseconds"
        ));
        return None;
    };
    let every = Duration::from_micros(us);
    if us == 0 {
        None
    } else if every < WATCHDOG_FLOOR {
        warnings.push(format!(
            "WATCHDOG_USEC={usec}: below {} ms, taken as {} ms (pings \
             every {} ms)",
            WATCHDOG_FLOOR.as_millis(),
            WATCHDOG_FLOOR.as_millis(),
            WATCHDOG_FLOOR.as_millis() / 2
        ));
        Some(WATCHDOG_FLOOR)
    } else {
        Some(every)
    }
}

/// Resolves how this process was started.
pub fn invocation(vars: &[(OsString, OsString)]) -> Result<Invocation> {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let cwd = std::env::current_dir().context("current directory")?;
    let arg0 = PathBuf::from(argv.first().cloned().unwrap_or_default());
    let exe = if arg0.as_os_str().to_string_lossy().contains('/') {
        cwd.join(&arg0)
    } else {
        let path = lookup(vars, "PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .map(|d| d.join(&arg0))
            .find(|p| p.is_file())
            .map(|p| if p.is_absolute() { p } else { cwd.join(p) })
            .with_context(|| format!("{} not found in PATH", arg0.display()))?
    };
    Ok(Invocation { exe, argv, cwd })
}
