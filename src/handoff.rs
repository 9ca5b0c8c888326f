//! The environment, read once at start and never mutated (edition 2024
//! marks `set_var` as `unsafe`, for good reason): what systemd passed
//! (`LISTEN_*`, `NOTIFY_SOCKET`, `WATCHDOG_*`, `JOURNAL_STREAM`), what a
//! predecessor master passed (`UPGRADER_*`, SPEC section 7), and the
//! rest, which is what workers and successors inherit.
//!
//! The hand-off protocol from an old master to the new one it execs:
//! * `UPGRADER_FDS=3,4`: the listening sockets, in `--bind` order;
//! * `UPGRADER_FDNAMES=http:admin`: their names, systemd's format;
//! * `UPGRADER_PID=<old master>`: who to wait for before promotion;
//! * `UPGRADER_READY_FD=5`: write one byte there once serving (EOF
//!   before that byte means the upgrade failed).

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nix::unistd::Pid;

use crate::listeners::{self, Listener};

pub const UPGRADER_FDS: &str = "UPGRADER_FDS";
pub const UPGRADER_FDNAMES: &str = "UPGRADER_FDNAMES";
pub const UPGRADER_PID: &str = "UPGRADER_PID";
pub const UPGRADER_READY_FD: &str = "UPGRADER_READY_FD";
/// Enables the built-in worker's `/_test/` paths (integration tests).
pub const UPGRADER_TEST_HOOKS: &str = "UPGRADER_TEST_HOOKS";

/// What an old master handed to this one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Predecessor {
    pub pid: Pid,
    /// (fd, name) of each listener.
    pub fds: Vec<(i32, String)>,
    pub ready_fd: Option<i32>,
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
    /// Everything, as it was (for workers; filtered when used).
    pub vars: Vec<(OsString, OsString)>,
    pub notify_socket: Option<String>,
    /// systemd's watchdog for the master itself.
    pub watchdog: Option<Duration>,
    pub journal: bool,
    pub hooks: bool,
    /// `LISTEN_FDS` meant for us: (fd, name).
    pub listen_fds: Vec<(i32, String)>,
    pub predecessor: Option<Predecessor>,
}

fn lookup(vars: &[(OsString, OsString)], k: &str) -> Option<String> {
    vars.iter()
        .find(|(n, _)| n == k)
        .and_then(|(_, v)| v.to_str().map(str::to_string))
}

/// Splits systemd-style names (`a:b`), `unknown` for missing ones.
fn names(list: Option<String>, n: usize) -> Vec<String> {
    let list = list.unwrap_or_default();
    let given: Vec<&str> = list.split(':').collect();
    (0..n)
        .map(|i| {
            given
                .get(i)
                .filter(|s| !s.is_empty())
                .unwrap_or(&listeners::UNNAMED)
                .to_string()
        })
        .collect()
}

impl Environment {
    pub fn read() -> Environment {
        Environment::from_vars(
            std::env::vars_os().collect(),
            std::process::id(),
        )
    }

    pub fn from_vars(vars: Vec<(OsString, OsString)>, me: u32) -> Environment {
        let get = |k: &str| lookup(&vars, k);
        let me = me.to_string();
        let predecessor = decode(&vars);
        // After an upgrade systemd's WATCHDOG_PID still names the old
        // master; the new one takes the duty over.
        let pred = predecessor.as_ref().map(|p| p.pid.to_string());
        let watchdog_for_me = get("WATCHDOG_PID")
            .is_none_or(|p| p == me || Some(&p) == pred.as_ref());
        let watchdog = get("WATCHDOG_USEC")
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|u| *u > 0 && watchdog_for_me)
            .map(Duration::from_micros);
        let listen_fds = match (get("LISTEN_PID"), get("LISTEN_FDS")) {
            (Some(pid), Some(n)) if pid == me => {
                let n: usize = n.parse().unwrap_or(0);
                let names = names(get("LISTEN_FDNAMES"), n);
                (0..n).map(|i| (3 + i as i32, names[i].clone())).collect()
            }
            _ => Vec::new(),
        };
        Environment {
            notify_socket: get("NOTIFY_SOCKET").filter(|s| !s.is_empty()),
            watchdog,
            journal: get("JOURNAL_STREAM").is_some(),
            hooks: get(UPGRADER_TEST_HOOKS).as_deref() == Some("1"),
            listen_fds,
            predecessor,
            vars,
        }
    }

    /// Takes the sockets systemd passed, or a predecessor handed on,
    /// validated.
    pub fn take_inherited(&mut self) -> Result<Vec<Listener>> {
        let mut fds = std::mem::take(&mut self.listen_fds);
        if let Some(p) = &self.predecessor {
            fds.extend(p.fds.iter().cloned());
        }
        let mut out = Vec::new();
        for (fd, name) in fds {
            let Some(owned) = crate::sys::adopt_inherited(fd) else {
                bail!("inherited fd {fd} ({name}) is not open");
            };
            // sd_listen_fds(3) sets CLOEXEC: nothing else inherits these
            // unless we hand them on on purpose.
            nix::fcntl::fcntl(
                &owned,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            )
            .with_context(|| format!("inherited fd {fd}"))?;
            out.push(listeners::adopt(owned, &name)?);
        }
        Ok(out)
    }
}

/// Reads the hand-off variables, if a predecessor set them.
pub fn decode(vars: &[(OsString, OsString)]) -> Option<Predecessor> {
    let pid: i32 = lookup(vars, UPGRADER_PID)?.parse().ok()?;
    let fds: Vec<i32> = lookup(vars, UPGRADER_FDS)
        .unwrap_or_default()
        .split(',')
        .filter_map(|s| s.parse().ok())
        .collect();
    let names = names(lookup(vars, UPGRADER_FDNAMES), fds.len());
    Some(Predecessor {
        pid: Pid::from_raw(pid),
        fds: fds.into_iter().zip(names).collect(),
        ready_fd: lookup(vars, UPGRADER_READY_FD).and_then(|s| s.parse().ok()),
    })
}

/// The hand-off variables for a successor whose listeners will sit at
/// fds 3.. and its ready pipe right after them.
pub fn encode(names: &[&str], me: Pid) -> Vec<(OsString, OsString)> {
    let n = names.len() as i32;
    let fds: Vec<String> = (3..3 + n).map(|f| f.to_string()).collect();
    vec![
        (UPGRADER_FDS.into(), fds.join(",").into()),
        (UPGRADER_FDNAMES.into(), names.join(":").into()),
        (UPGRADER_PID.into(), me.to_string().into()),
        (UPGRADER_READY_FD.into(), (3 + n).to_string().into()),
    ]
}

/// Variables a successor must not inherit from this master's own start:
/// sockets passed to *this* process, and the hand-off of *its*
/// predecessor. NOTIFY_SOCKET and the rest pass on.
pub fn is_handoff_var(name: &OsString) -> bool {
    let n = name.to_string_lossy();
    n.starts_with("LISTEN_")
        || [
            UPGRADER_FDS,
            UPGRADER_FDNAMES,
            UPGRADER_PID,
            UPGRADER_READY_FD,
        ]
        .contains(&n.as_ref())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs.iter().map(|(k, v)| (k.into(), v.into())).collect()
    }

    #[test]
    fn encode_decode_round_trip() {
        let enc = encode(&["http", "admin"], Pid::from_raw(4242));
        let p = decode(&enc).unwrap();
        assert_eq!(p.pid, Pid::from_raw(4242));
        assert_eq!(p.fds, [(3, "http".into()), (4, "admin".into())]);
        assert_eq!(p.ready_fd, Some(5));
    }

    #[test]
    fn no_predecessor_without_pid() {
        assert_eq!(decode(&vars(&[("UPGRADER_FDS", "3")])), None);
    }

    #[test]
    fn listen_fds_only_for_our_pid() {
        let e = Environment::from_vars(
            vars(&[
                ("LISTEN_PID", "77"),
                ("LISTEN_FDS", "2"),
                ("LISTEN_FDNAMES", "a"),
            ]),
            77,
        );
        assert_eq!(e.listen_fds, [(3, "a".into()), (4, "unknown".into())]);
        let e = Environment::from_vars(
            vars(&[("LISTEN_PID", "78"), ("LISTEN_FDS", "2")]),
            77,
        );
        assert!(e.listen_fds.is_empty());
    }

    #[test]
    fn watchdog_follows_the_main_pid() {
        let w = |pid: &str| {
            Environment::from_vars(
                vars(&[
                    ("WATCHDOG_USEC", "2000000"),
                    ("WATCHDOG_PID", pid),
                    ("UPGRADER_PID", "10"),
                ]),
                77,
            )
            .watchdog
        };
        assert_eq!(w("77"), Some(Duration::from_secs(2)));
        assert_eq!(w("10"), Some(Duration::from_secs(2)), "predecessor's");
        assert_eq!(w("11"), None);
    }

    #[test]
    fn handoff_vars_are_not_inherited() {
        for v in ["LISTEN_FDS", "UPGRADER_PID", "UPGRADER_READY_FD"] {
            assert!(is_handoff_var(&v.into()), "{v}");
        }
        for v in ["NOTIFY_SOCKET", "PATH", "UPGRADER_TEST_HOOKS"] {
            assert!(!is_handoff_var(&v.into()), "{v}");
        }
    }
}
