//! The control protocol on the wire, for both ends: the `-s` client and
//! the master's control socket (`master::control`).
//!
//! The socket is abstract, `@upgrader-control-<pid>`: found from the
//! pid in the pidfile, nothing on disk to clean up after a SIGKILL. A
//! client sends one request line; the master answers with reply lines
//! when the act is complete or has failed:
//! * `ok TEXT` (for `status`, the text goes on to EOF),
//! * `error TEXT`,
//! * `info new master PID ready` (an upgrade: the connection then stays
//!   open until the old master exits).

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::SocketAddr;

use nix::unistd::Pid;

/// The abstract name of a master's control socket.
pub fn socket_name(pid: Pid) -> String {
    format!("upgrader-control-{pid}")
}

/// The control socket's address.
pub fn address(pid: Pid) -> std::io::Result<SocketAddr> {
    SocketAddr::from_abstract_name(socket_name(pid).as_bytes())
}

/// What a client asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Status,
    StatusJson,
    Reopen,
    Stop,
    Quit,
    Reload,
    Upgrade,
}

impl Request {
    const ALL: [Request; 7] = [
        Request::Status,
        Request::StatusJson,
        Request::Reopen,
        Request::Stop,
        Request::Quit,
        Request::Reload,
        Request::Upgrade,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::StatusJson => "status-json",
            Request::Reopen => "reopen",
            Request::Stop => "stop",
            Request::Quit => "quit",
            Request::Reload => "reload",
            Request::Upgrade => "upgrade",
        }
    }

    /// The request line, newline included.
    pub fn line(self) -> String {
        format!("{}\n", self.as_str())
    }

    pub fn parse(line: &str) -> Option<Request> {
        let line = line.trim();
        Request::ALL.into_iter().find(|r| r.as_str() == line)
    }
}

/// What the master answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Ok(String),
    Error(String),
    /// The new master of an upgrade is ready.
    NewMaster(Pid),
}

impl Reply {
    /// The reply line(s), newline included.
    pub fn line(&self) -> String {
        match self {
            Reply::Ok(t) => format!("ok {t}\n"),
            Reply::Error(t) => format!("error {t}\n"),
            Reply::NewMaster(p) => format!("info new master {p} ready\n"),
        }
    }

    /// Parses one reply line (without its newline).
    pub fn parse(line: &str) -> Option<Reply> {
        let line = line.trim_end();
        if let Some(t) = line.strip_prefix("ok ") {
            return Some(Reply::Ok(t.to_string()));
        }
        if let Some(t) = line.strip_prefix("error ") {
            return Some(Reply::Error(t.to_string()));
        }
        let pid = line
            .strip_prefix("info new master ")?
            .strip_suffix(" ready")?
            .parse()
            .ok()?;
        Some(Reply::NewMaster(Pid::from_raw(pid)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        for r in Request::ALL {
            assert_eq!(Request::parse(&r.line()), Some(r));
        }
        assert_eq!(Request::parse("restart"), None);
    }

    #[test]
    fn replies_round_trip() {
        for r in [
            Reply::Ok("reload complete".into()),
            Reply::Error("upgrade failed: x".into()),
            Reply::NewMaster(Pid::from_raw(42)),
        ] {
            assert_eq!(Reply::parse(&r.line()), Some(r));
        }
        assert_eq!(Reply::parse("hello"), None);
    }
}
