//! The environment protocol: what this process was given at start
//! (`environment`, read once and never mutated), the hand-off from an
//! old master to the new one (SPEC section 7), and the one function that
//! builds every child's environment, worker or new master
//! (`child_env`).
//!
//! The hand-off protocol from an old master to the new one it execs:
//! * `UPGRADER_FDS=3,4`: the listening sockets, in `--bind` order;
//! * `UPGRADER_FDNAMES=http:admin`: their names, systemd's format;
//! * `UPGRADER_BINDS=fd:7,http=systemd:web`: the `--bind` each was
//!   opened for (empty for none), so the new master finds `fd:7` at
//!   descriptor 3 and `systemd:web` under its new name;
//! * `UPGRADER_ORIGINS=bound,inherited`: whether the old master bound it
//!   (then the new one owns the unix socket file and unlinks it last);
//! * `UPGRADER_PID=<old master>`: who to wait for before promotion;
//! * `UPGRADER_READY_FD=5`: write one byte there once serving (EOF
//!   before that byte means the upgrade failed).
//!
//! Everything inherited is validated before it is trusted: a garbage
//! `LISTEN_FDS` is a configuration error (exit 2), a garbage hand-off is
//! ignored with one warning (it cannot be from a real old master).

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use nix::unistd::Pid;

use crate::listeners::{self, BindSpec, Listener, Origin};

mod environment;

pub use environment::{Environment, FdKind, Invocation, Probe, invocation};

pub const UPGRADER_FDS: &str = "UPGRADER_FDS";
pub const UPGRADER_FDNAMES: &str = "UPGRADER_FDNAMES";
pub const UPGRADER_BINDS: &str = "UPGRADER_BINDS";
pub const UPGRADER_ORIGINS: &str = "UPGRADER_ORIGINS";
pub const UPGRADER_PID: &str = "UPGRADER_PID";
pub const UPGRADER_READY_FD: &str = "UPGRADER_READY_FD";
/// Enables the built-in worker's `/_test/` paths (integration tests).
pub const UPGRADER_TEST_HOOKS: &str = "UPGRADER_TEST_HOOKS";

/// The hand-off variables, in the order a warning names them.
const HANDOFF: [&str; 6] = [
    UPGRADER_PID,
    UPGRADER_FDS,
    UPGRADER_FDNAMES,
    UPGRADER_BINDS,
    UPGRADER_ORIGINS,
    UPGRADER_READY_FD,
];

/// One listener in a hand-off (at descriptor 3 + its position).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handed {
    pub name: String,
    /// The `--bind` it was opened for, if any.
    pub spec: Option<BindSpec>,
    pub origin: Origin,
}

impl Handed {
    pub fn of(l: &Listener) -> Handed {
        Handed {
            name: l.name.clone(),
            spec: l.spec.clone(),
            origin: l.origin,
        }
    }
}

/// What an old master handed to this one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Predecessor {
    pub pid: Pid,
    /// Each listener and the descriptor it is at.
    pub fds: Vec<(i32, Handed)>,
    /// A pipe above stderr, checked (fstat) before it is trusted.
    pub ready_fd: Option<i32>,
}

fn lookup(vars: &[(OsString, OsString)], k: &str) -> Option<String> {
    vars.iter()
        .find(|(n, _)| n == k)
        .map(|(_, v)| v.to_string_lossy().into_owned())
}

/// The `i`-th of systemd-style names (`a:b`), `unknown` if missing.
fn nth_name(list: Option<&str>, i: usize) -> String {
    list.and_then(|l| l.split(':').nth(i))
        .filter(|s| !s.is_empty())
        .unwrap_or(listeners::UNNAMED)
        .to_string()
}

/// `%` and `,` escaped, so a `--bind` fits in a comma-separated list.
fn escape(s: &str) -> String {
    s.replace('%', "%25").replace(',', "%2C")
}

fn unescape(s: &str) -> String {
    s.replace("%2C", ",")
        .replace("%2c", ",")
        .replace("%25", "%")
}

/// Reads the hand-off variables: `Ok(None)` if there are none, an error
/// (the reason they are all ignored) if they cannot be from an old
/// master: a pid that is no pid, listeners that are not open, a ready
/// "pipe" that is stdio, closed or not a pipe.
pub fn decode(
    vars: &[(OsString, OsString)],
    probe: &dyn Probe,
) -> Result<Option<Predecessor>, String> {
    let get = |k: &str| lookup(vars, k);
    let Some(pid_text) = get(UPGRADER_PID) else {
        return match HANDOFF.iter().find(|k| get(k).is_some()) {
            Some(_) => Err(format!("{UPGRADER_PID} is not set")),
            None => Ok(None),
        };
    };
    let pid = pid_text
        .trim()
        .parse::<i32>()
        .ok()
        .filter(|&p| p > 0)
        .ok_or_else(|| format!("{UPGRADER_PID}={pid_text} is not a pid"))?;
    let fds_text = get(UPGRADER_FDS).unwrap_or_default();
    let mut fds: Vec<i32> = Vec::new();
    for s in fds_text.split(',').filter(|s| !s.is_empty()) {
        let fd = s
            .trim()
            .parse::<i32>()
            .ok()
            .filter(|&fd| fd > 2 && !fds.contains(&fd))
            .ok_or_else(|| {
                format!("{UPGRADER_FDS}={fds_text}: {s:?} is not a listener")
            })?;
        if probe.kind(fd) == FdKind::Closed {
            return Err(format!(
                "{UPGRADER_FDS}={fds_text}: descriptor {fd} is not open"
            ));
        }
        fds.push(fd);
    }
    let ready_fd = match get(UPGRADER_READY_FD) {
        None => None,
        Some(text) => {
            let bad = |why: &str| format!("{UPGRADER_READY_FD}={text} {why}");
            let fd: i32 =
                text.trim().parse().map_err(|_| bad("is not a number"))?;
            if fd <= 2 {
                return Err(bad("is standard input, output or error"));
            }
            if fds.contains(&fd) {
                return Err(bad("is one of the listeners"));
            }
            match probe.kind(fd) {
                FdKind::Pipe => Some(fd),
                FdKind::Closed => return Err(bad("is not open")),
                FdKind::Other => return Err(bad("is not a pipe")),
            }
        }
    };
    let names = get(UPGRADER_FDNAMES);
    let binds = get(UPGRADER_BINDS);
    let origins = get(UPGRADER_ORIGINS);
    let field = |list: &Option<String>, i: usize| {
        list.as_deref()
            .and_then(|l| l.split(',').nth(i))
            .map(unescape)
            .filter(|s| !s.is_empty())
    };
    let fds = fds
        .into_iter()
        .enumerate()
        .map(|(i, fd)| {
            let handed = Handed {
                name: nth_name(names.as_deref(), i),
                spec: field(&binds, i).and_then(|s| s.parse().ok()),
                // Unknown means not ours to unlink.
                origin: match field(&origins, i).as_deref() {
                    Some("bound") => Origin::Bound,
                    _ => Origin::Inherited,
                },
            };
            (fd, handed)
        })
        .collect();
    Ok(Some(Predecessor {
        pid: Pid::from_raw(pid),
        fds,
        ready_fd,
    }))
}

/// The hand-off variables for a successor whose listeners will sit at
/// fds 3.. and its ready pipe right after them.
pub fn encode(listeners: &[Handed], me: Pid) -> Vec<(OsString, OsString)> {
    let n = listeners.len() as i32;
    let join = |f: &dyn Fn(&Handed) -> String, sep: &str| -> OsString {
        listeners.iter().map(f).collect::<Vec<_>>().join(sep).into()
    };
    let fds: Vec<String> = (3..3 + n).map(|f| f.to_string()).collect();
    vec![
        (UPGRADER_FDS.into(), fds.join(",").into()),
        (UPGRADER_FDNAMES.into(), join(&|h| h.name.clone(), ":")),
        (
            UPGRADER_BINDS.into(),
            join(
                &|h| {
                    h.spec
                        .as_ref()
                        .map_or(String::new(), |s| escape(&s.to_string()))
                },
                ",",
            ),
        ),
        (
            UPGRADER_ORIGINS.into(),
            join(
                &|h| match h.origin {
                    Origin::Bound => "bound".into(),
                    Origin::Inherited => "inherited".into(),
                },
                ",",
            ),
        ),
        (UPGRADER_PID.into(), me.to_string().into()),
        (UPGRADER_READY_FD.into(), (3 + n).to_string().into()),
    ]
}

/// Variables no child inherits from this master's own start: sockets
/// passed to *this* process, and the hand-off of *its* predecessor.
pub fn is_handoff_var(name: &OsString) -> bool {
    let n = name.to_string_lossy();
    n.starts_with("LISTEN_") || HANDOFF.contains(&n.as_ref())
}

/// Variables never handed to an exec worker from the master's own
/// environment: systemd's (they were meant for the master) and the
/// master's hand-off protocol.
pub fn is_private_var(name: &OsString) -> bool {
    let n = name.to_string_lossy();
    n.starts_with("LISTEN_")
        || n.starts_with("WATCHDOG_")
        || n.starts_with("UPGRADER_")
        || n == "NOTIFY_SOCKET"
}

/// The child a `child_env` is for.
pub enum Child<'a> {
    /// An exec worker: its listeners at 3.. (`names`), the master's
    /// private notify socket, a heartbeat only with `--ready notify`.
    Worker {
        names: &'a [&'a str],
        notify: &'a Path,
        heartbeat: Option<Duration>,
        age: u64,
        generation: u64,
    },
    /// A new master (USR2): the listeners at 3.., the ready pipe after
    /// them; `watchdog` if this master pings systemd's watchdog (the
    /// duty goes to the new one).
    Successor {
        listeners: &'a [Handed],
        me: Pid,
        watchdog: bool,
    },
}

/// A child's environment, built (never edited): the variables, and the
/// names of those whose value is the child's own pid, which only the
/// forked child knows (`sys::ExecImage` writes them before execve).
#[derive(Debug, PartialEq, Eq)]
pub struct ChildEnv {
    pub vars: Vec<(OsString, OsString)>,
    pub pid_vars: Vec<&'static str>,
}

/// The one place a child's environment is made: the master's start-up
/// environment less what was meant for the master alone, plus what this
/// child needs.
pub fn child_env(
    base: &[(OsString, OsString)],
    child: &Child<'_>,
) -> ChildEnv {
    let mut pid_vars = Vec::new();
    let mut vars: Vec<(OsString, OsString)>;
    let set = |vars: &mut Vec<_>, k: &str, v: String| {
        vars.push((OsString::from(k), OsString::from(v)));
    };
    match child {
        Child::Worker {
            names,
            notify,
            heartbeat,
            age,
            generation,
        } => {
            vars = base
                .iter()
                .filter(|(k, _)| !is_private_var(k))
                .cloned()
                .collect();
            set(&mut vars, "LISTEN_FDS", names.len().to_string());
            set(&mut vars, "LISTEN_FDNAMES", names.join(":"));
            set(&mut vars, "NOTIFY_SOCKET", notify.display().to_string());
            pid_vars.push("LISTEN_PID");
            if let Some(t) = heartbeat {
                set(&mut vars, "WATCHDOG_USEC", t.as_micros().to_string());
                pid_vars.push("WATCHDOG_PID");
            }
            set(&mut vars, "UPGRADER_WORKER_AGE", age.to_string());
            set(&mut vars, "UPGRADER_GENERATION", generation.to_string());
        }
        Child::Successor {
            listeners,
            me,
            watchdog,
        } => {
            vars = base
                .iter()
                .filter(|(k, _)| !is_handoff_var(k))
                .filter(|(k, _)| !(*watchdog && k == "WATCHDOG_PID"))
                .cloned()
                .collect();
            vars.extend(encode(listeners, *me));
            if *watchdog {
                pid_vars.push("WATCHDOG_PID");
            }
        }
    }
    ChildEnv { vars, pid_vars }
}

#[cfg(test)]
mod tests;
