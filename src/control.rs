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
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::unistd::Pid;

use crate::pidfile;

pub mod status;
pub mod wire;

use status::Status;
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

/// The exit status of `-s` when `--wait` ran out while the act goes on
/// (sysexits.h EX_TEMPFAIL: "try again later"; SPEC 8).
pub const EX_TEMPFAIL: u8 = 75;

/// The deadline passed and the act is not abandoned: the master carries
/// on, and the caller can tell "unknown yet" (75) from "failed" (1).
#[derive(Debug)]
pub struct InProgress(pub String);

impl std::fmt::Display for InProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InProgress {}

/// A duration as an operator writes it: 250ms, 1s, 1.5s, 2m, 2m30s.
pub fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".to_string();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = d.as_secs();
    if secs < 60 {
        let tenths = (ms % 1000) / 100;
        return if tenths == 0 {
            format!("{secs}s")
        } else {
            format!("{secs}.{tenths}s")
        };
    }
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out += &format!("{h}h");
    }
    if m > 0 {
        out += &format!("{m}m");
    }
    if s > 0 {
        out += &format!("{s}s");
    }
    out
}

/// One line on stderr saying what `-s` waits for, when a person watches
/// (stderr is a terminal; SPEC 8); scripts see nothing.
fn progress(text: &str) {
    use std::io::IsTerminal;
    if std::io::stderr().is_terminal() {
        crate::logging::stderr_line(&format!("upgrader: {text}…"));
    }
}

/// Runs one control request; returns what to print on success. Without
/// `wait`, the bound is the master's own graceful plus boot timeouts
/// (asked for first), so a slow drain is not mistaken for a failure.
/// An `InProgress` error means the bound passed with the act going on.
pub fn run(
    verb: Verb,
    pidfile: &Path,
    wait: Option<Duration>,
    json: bool,
) -> Result<String> {
    let pid = master_pid(pidfile)?;
    let wait = match wait {
        Some(w) => w,
        None => master_status(pid, Duration::from_secs(5))
            .map(|s| {
                Duration::from_secs_f64(
                    s.graceful_timeout_secs
                        + s.boot_timeout_secs
                        + s.probation_secs
                        + 1.0,
                )
            })
            .unwrap_or(Duration::from_secs(60)),
    };
    let deadline = Instant::now() + wait;
    // Opened before the request, so the exit cannot be missed.
    let exited = crate::sys::pidfd_open(pid)
        .with_context(|| format!("master {pid}: pidfd_open"))?;
    let addr = wire::address(pid)?;
    let mut stream = UnixStream::connect_addr(&addr).with_context(|| {
        format!("master {pid}: control socket @{}", wire::socket_name(pid))
    })?;
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
    match verb {
        Verb::Upgrade => progress("waiting for the new master to be ready"),
        Verb::Reload => progress("waiting for the new generation to be ready"),
        Verb::Stop | Verb::Quit => {
            progress(&format!("waiting for master {pid} to stop"))
        }
        Verb::Status | Verb::Reopen => {}
    }
    let late = |new: Option<Pid>, now: &str| -> anyhow::Error {
        late(verb, pid, wait, new, now)
    };
    let mut lines = BufReader::new(stream);
    let mut new_master: Option<Pid> = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(late(new_master, ""));
        }
        lines.get_ref().set_read_timeout(Some(left))?;
        let mut line = String::new();
        match lines.read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                return Err(late(new_master, ""));
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
            Some(Reply::NewMaster(new)) => {
                progress(&format!(
                    "new master {new} ready; waiting for master {pid} to \
                     retire"
                ));
                new_master = Some(new);
            }
            None => {}
        }
    }
    // The connection closed: the master is exiting.
    if !wait_exit(&exited, deadline)? {
        return Err(late(new_master, "still running"));
    }
    match (verb, new_master) {
        (Verb::Stop | Verb::Quit, _) => Ok(format!("master {pid} stopped")),
        (Verb::Upgrade, Some(new)) => {
            progress(&format!("waiting for new master {new} to be promoted"));
            wait_promotion(pidfile, new, deadline)
                .map_err(|e| e.unwrap_or_else(|| late(Some(new), "")))?;
            Ok(format!("upgrade complete: master {new} promoted"))
        }
        _ => bail!("master {pid} exited without an answer"),
    }
}

/// The error for a deadline that passed: `InProgress` (exit 75) for an
/// act that goes on, a plain failure for a question (status, reopen)
/// the master did not answer. `now` says what the old master is doing,
/// when known.
fn late(
    verb: Verb,
    pid: Pid,
    wait: Duration,
    new: Option<Pid>,
    now: &str,
) -> anyhow::Error {
    let after = human(wait);
    let what = match verb {
        Verb::Status | Verb::Reopen => {
            return anyhow!("master {pid} did not answer within {after}");
        }
        Verb::Upgrade => "upgrade",
        Verb::Reload => "reload",
        Verb::Stop => "stop",
        Verb::Quit => "quit",
    };
    let state = match (verb, new) {
        (Verb::Upgrade, Some(new)) if now.is_empty() => {
            format!("new master {new} ready, not promoted yet")
        }
        (Verb::Upgrade, Some(new)) => {
            format!("new master {new} ready, master {pid} {now}")
        }
        (Verb::Stop | Verb::Quit, _) => format!("master {pid} still running"),
        _ => master_status(pid, Duration::from_secs(1))
            .map(|s| match &s.upgrade {
                Some(u) if verb == Verb::Upgrade => {
                    format!("new master {} {}", u.new_master, u.state)
                }
                _ => format!(
                    "generation {}: {}/{} workers ready",
                    s.generation, s.ready, s.desired
                ),
            })
            .unwrap_or_else(|| format!("master {pid} busy")),
    };
    anyhow::Error::new(InProgress(format!(
        "{what} still in progress after {after} ({state}); run `upgrader -s \
         status` to see when it finishes"
    )))
}

/// The master the pidfile names, if it is a running upgrader; else why
/// there is none.
fn master_pid(pidfile: &Path) -> Result<Pid> {
    let shown = pidfile.display();
    let pid = match pidfile::content(pidfile) {
        pidfile::Content::Pid(pid) => pid,
        pidfile::Content::Missing => {
            bail!("no master: pidfile {shown} does not exist")
        }
        pidfile::Content::Empty => bail!(
            "no master: pidfile {shown} is empty, which is not a pid \
             (upgrader never leaves it so; use --pid with the right file)"
        ),
        pidfile::Content::Garbage(text) => {
            bail!(
                "no master: pidfile {shown} holds {text:?}, which is not a pid"
            )
        }
        pidfile::Content::Unreadable(why) => {
            bail!("no master: pidfile {shown}: {why}")
        }
    };
    if !pidfile::is_live_upgrader(pid) {
        bail!("no master: pid {pid} from {shown} is not a running upgrader");
    }
    Ok(pid)
}

/// The running master's status (its timeouts, its upgrade), through
/// the control protocol's own types.
fn master_status(pid: Pid, limit: Duration) -> Option<Status> {
    let mut s = UnixStream::connect_addr(&wire::address(pid).ok()?).ok()?;
    s.set_read_timeout(Some(limit)).ok()?;
    s.write_all(Request::StatusJson.line().as_bytes()).ok()?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut s, &mut text).ok()?;
    match Reply::parse(text.trim())? {
        Reply::Ok(json) => serde_json::from_str(&json).ok(),
        _ => None,
    }
}

/// Whether the master exited (its pidfd is readable) before the
/// deadline.
fn wait_exit(fd: &std::os::fd::OwnedFd, deadline: Instant) -> Result<bool> {
    crate::sys::wait_for(fd.as_fd(), nix::poll::PollFlags::POLLIN, deadline)
        .context("poll")
}

/// The promotion is a rename the new master does right after the old
/// one exits: a short bounded poll of the pidfile. `Err(None)`: the
/// deadline passed first.
fn wait_promotion(
    pidfile: &Path,
    new: Pid,
    deadline: Instant,
) -> Result<(), Option<anyhow::Error>> {
    let dot2 = pidfile::successor(pidfile);
    loop {
        if pidfile::read(pidfile) == Some(new) && !dot2.exists() {
            return Ok(());
        }
        if !pidfile::is_live_upgrader(new) {
            return Err(Some(anyhow!(
                "new master {new} is gone before its promotion"
            )));
        }
        if Instant::now() >= deadline {
            return Err(None);
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

    #[test]
    fn durations_read_as_written() {
        let ms = Duration::from_millis;
        assert_eq!(human(Duration::ZERO), "0s");
        assert_eq!(human(ms(250)), "250ms");
        assert_eq!(human(ms(1000)), "1s");
        assert_eq!(human(ms(1500)), "1.5s");
        assert_eq!(human(ms(120_000)), "2m");
        assert_eq!(human(ms(150_000)), "2m30s");
        assert_eq!(human(ms(3_660_000)), "1h1m");
    }
}
