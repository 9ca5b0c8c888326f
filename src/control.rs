//! `upgrader -s SIGNAL`: control a running master, synchronously
//! (nginx's `-s` convention, with honest exit statuses).
//!
//! The master is found by its pidfile; the request goes to its control
//! socket (`master::control`), whose answer says when the act is
//! complete or why it failed. Stop and upgrade also wait on the old
//! master's exit through a pidfd, and upgrade then on the promotion of
//! the new one (the pidfile names it, `<pidfile>.2` is gone).

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixStream};
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::unistd::Pid;

use crate::pidfile;

pub mod status;
pub mod wire;

use wire::{Reply, Request};

/// What `-s` can ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Upgrade,
    Reload,
    Stop,
    Quit,
    Reopen,
    Status,
}

impl FromStr for Verb {
    type Err = String;
    fn from_str(s: &str) -> Result<Verb, String> {
        Ok(match s {
            "upgrade" => Verb::Upgrade,
            "reload" => Verb::Reload,
            "stop" => Verb::Stop,
            "quit" => Verb::Quit,
            "reopen" => Verb::Reopen,
            "status" => Verb::Status,
            _ => {
                return Err(format!(
                    "-s {s}: expected upgrade, reload, stop, quit, reopen or \
                     status"
                ));
            }
        })
    }
}

/// Runs one control request; returns what to print on success. Without
/// `wait`, the bound is the master's own graceful plus boot timeouts
/// (asked for first), so a slow drain is not mistaken for a failure.
pub fn run(
    verb: Verb,
    pidfile: &Path,
    wait: Option<Duration>,
    json: bool,
) -> Result<String> {
    let wait = match wait {
        Some(w) => w,
        None => master_budget(pidfile).unwrap_or(Duration::from_secs(60)),
    };
    let deadline = Instant::now() + wait;
    let pid = pidfile::read(pidfile).ok_or_else(|| {
        anyhow!(
            "no master: pidfile {} is missing or empty",
            pidfile.display()
        )
    })?;
    if !pidfile::is_live_upgrader(pid) {
        bail!(
            "no master: pid {pid} from {} is not a running upgrader",
            pidfile.display()
        );
    }
    // Opened before the request, so the exit cannot be missed.
    let exited = crate::sys::pidfd_open(pid)
        .with_context(|| format!("master {pid}: pidfd_open"))?;
    let name = wire::socket_name(pid);
    let addr = SocketAddr::from_abstract_name(name.as_bytes())?;
    let mut stream = UnixStream::connect_addr(&addr)
        .with_context(|| format!("master {pid}: control socket @{name}"))?;
    let request = match (verb, json) {
        (Verb::Status, true) => Request::StatusJson,
        (Verb::Status, false) => Request::Status,
        (Verb::Upgrade, _) => Request::Upgrade,
        (Verb::Reload, _) => Request::Reload,
        (Verb::Stop, _) => Request::Stop,
        (Verb::Quit, _) => Request::Quit,
        (Verb::Reopen, _) => Request::Reopen,
    };
    stream.write_all(request.line().as_bytes())?;
    let mut lines = BufReader::new(stream);
    let mut new_master: Option<Pid> = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("no answer from master {pid} within {wait:?}");
        }
        lines.get_ref().set_read_timeout(Some(left))?;
        let mut line = String::new();
        match lines.read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                bail!("no answer from master {pid} within {wait:?}")
            }
            Err(e) => return Err(e).context(format!("master {pid}")),
        }
        match Reply::parse(&line) {
            Some(Reply::Ok(text)) => {
                let mut out = text;
                // Status text spans lines: the rest follows until EOF.
                if verb == Verb::Status {
                    let mut rest = String::new();
                    let _ =
                        std::io::Read::read_to_string(&mut lines, &mut rest);
                    if !rest.is_empty() {
                        out = format!("{out}\n{}", rest.trim_end());
                    }
                }
                return Ok(out);
            }
            Some(Reply::Error(text)) => bail!("{text}"),
            Some(Reply::NewMaster(pid)) => new_master = Some(pid),
            None => {}
        }
    }
    // The connection closed: the master is exiting.
    wait_exit(&exited, pid, deadline)?;
    match (verb, new_master) {
        (Verb::Stop | Verb::Quit, _) => Ok(format!("master {pid} stopped")),
        (Verb::Upgrade, Some(new)) => {
            wait_promotion(pidfile, new, deadline)?;
            Ok(format!("upgrade complete: master {new} promoted"))
        }
        _ => bail!("master {pid} exited without an answer"),
    }
}

/// The running master's graceful + boot timeouts, plus a second.
fn master_budget(pidfile: &Path) -> Option<Duration> {
    let pid = pidfile::read(pidfile)?;
    let name = wire::socket_name(pid);
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).ok()?;
    let mut s = UnixStream::connect_addr(&addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"status-json\n").ok()?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut s, &mut text).ok()?;
    let j: serde_json::Value =
        serde_json::from_str(text.trim().strip_prefix("ok ")?).ok()?;
    let secs = j["graceful_timeout_secs"].as_f64()?
        + j["boot_timeout_secs"].as_f64()?
        + 1.0;
    Some(Duration::from_secs_f64(secs))
}

fn wait_exit(
    fd: &std::os::fd::OwnedFd,
    pid: Pid,
    deadline: Instant,
) -> Result<()> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let t = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
        let mut p = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut p, t) {
            Ok(0) => bail!("master {pid} still running at the deadline"),
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e).context("poll"),
        }
    }
}

/// The promotion is a rename the new master does right after the old
/// one exits: a short bounded poll of the pidfile.
fn wait_promotion(pidfile: &Path, new: Pid, deadline: Instant) -> Result<()> {
    let dot2 = pidfile::successor(pidfile);
    loop {
        if pidfile::read(pidfile) == Some(new) && !dot2.exists() {
            return Ok(());
        }
        if !pidfile::is_live_upgrader(new) {
            bail!("new master {new} is gone before its promotion");
        }
        if Instant::now() >= deadline {
            bail!("new master {new} not promoted at the deadline");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs() {
        assert_eq!("upgrade".parse::<Verb>(), Ok(Verb::Upgrade));
        assert_eq!("status".parse::<Verb>(), Ok(Verb::Status));
        let e = "restart".parse::<Verb>().unwrap_err();
        assert!(e.contains("restart") && e.contains("upgrade"), "{e}");
    }
}
