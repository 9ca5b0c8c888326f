//! The environment, read once at start and never mutated (edition 2024
//! makes `set_var` unsafe for good reason): what systemd passed
//! (`LISTEN_*`, `NOTIFY_SOCKET`, `WATCHDOG_*`, `JOURNAL_STREAM`), what a
//! predecessor master passed (`UPGRADER_*`), and the rest, which is
//! what workers and successors inherit.

use std::ffi::OsString;
use std::time::Duration;

use anyhow::{Result, bail};

use crate::listeners::{self, Listener};

/// Enables the built-in worker's `/_test/` paths (integration tests).
pub const UPGRADER_TEST_HOOKS: &str = "UPGRADER_TEST_HOOKS";

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
}

impl Environment {
    pub fn read() -> Environment {
        let vars: Vec<(OsString, OsString)> = std::env::vars_os().collect();
        let get = |k: &str| -> Option<String> {
            vars.iter()
                .find(|(n, _)| n == k)
                .and_then(|(_, v)| v.to_str().map(str::to_string))
        };
        let me = std::process::id().to_string();
        let for_me = |k: &str| get(k).is_none_or(|p| p == me);
        let watchdog = get("WATCHDOG_USEC")
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|_| for_me("WATCHDOG_PID"))
            .filter(|u| *u > 0)
            .map(Duration::from_micros);
        let listen_fds = match (get("LISTEN_PID"), get("LISTEN_FDS")) {
            (Some(pid), Some(n)) if pid == me => {
                let n: i32 = n.parse().unwrap_or(0);
                let names = get("LISTEN_FDNAMES").unwrap_or_default();
                let names: Vec<&str> = names.split(':').collect();
                (0..n.max(0))
                    .map(|i| {
                        let name = names
                            .get(i as usize)
                            .filter(|s| !s.is_empty())
                            .unwrap_or(&listeners::UNNAMED);
                        (3 + i, name.to_string())
                    })
                    .collect()
            }
            _ => Vec::new(),
        };
        Environment {
            notify_socket: get("NOTIFY_SOCKET").filter(|s| !s.is_empty()),
            watchdog,
            journal: get("JOURNAL_STREAM").is_some(),
            hooks: get(UPGRADER_TEST_HOOKS).as_deref() == Some("1"),
            listen_fds,
            vars,
        }
    }

    /// Takes the sockets systemd passed, validated.
    pub fn take_listen_fds(&mut self) -> Result<Vec<Listener>> {
        let mut out = Vec::new();
        for (fd, name) in std::mem::take(&mut self.listen_fds) {
            let Some(owned) = crate::sys::adopt_inherited(fd) else {
                bail!("LISTEN_FDS: fd {fd} ({name}) is not open");
            };
            // sd_listen_fds(3) sets CLOEXEC: nothing else inherits these
            // unless we hand them on on purpose.
            let _ = nix::fcntl::fcntl(
                &owned,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            );
            out.push(listeners::adopt(owned, &name)?);
        }
        Ok(out)
    }
}
