//! The sd_notify datagram protocol, both ways.
//!
//! * `Server`: the master's private notify socket. Workers (built-in and
//!   exec alike) send `READY=1`, `WATCHDOG=1`, `STATUS=`, `STOPPING=1`
//!   there; the kernel stamps each datagram with the sender's pid
//!   (SO_PASSCRED), which is how the master knows who spoke.
//! * `send` / `Systemd`: messages to a notify socket, systemd's or the
//!   master's, including the `BARRIER=1` handshake that makes sure
//!   systemd processed everything sent before (sd_notify_barrier(3)).
//!
//! The wire format is newline-separated `KEY=VALUE` lines
//! (sd_notify(3)); a path starting with `@` is in the abstract namespace.

use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nix::sys::socket::{
    self, ControlMessage, ControlMessageOwned, MsgFlags, UnixCredentials,
    sockopt,
};
use nix::unistd::Pid;

/// One datagram, as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub pid: Pid,
    pub text: String,
}

impl Message {
    /// The `KEY=VALUE` pairs, in order.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        pairs(&self.text)
    }
}

pub fn pairs(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.lines().filter_map(|l| l.split_once('='))
}

/// The most datagrams one `Server::drain` reads.
pub const DRAIN_MAX: usize = 256;

/// The master's private notify socket, in a directory of its own.
#[derive(Debug)]
pub struct Server {
    sock: UnixDatagram,
    dir: PathBuf,
    path: PathBuf,
}

impl Server {
    /// Binds `<runtime dir>/upgrader.<pid>.<nanos>/notify`.
    pub fn bind(owner: Option<nix::unistd::Uid>) -> Result<Server> {
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        remove_stale(&base);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir =
            base.join(format!("upgrader.{}.{nanos}", std::process::id()));
        std::fs::create_dir(&dir)
            .with_context(|| format!("notify dir {}", dir.display()))?;
        // Workers that dropped privileges must reach the socket: the
        // directory is searchable, not listable; senders are checked by
        // their kernel credentials anyway.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))
            .with_context(|| format!("chmod {}", dir.display()))?;
        let path = dir.join("notify");
        let sock = UnixDatagram::bind(&path)
            .with_context(|| format!("notify socket {}", path.display()))?;
        std::fs::set_permissions(
            &path,
            std::fs::Permissions::from_mode(0o666),
        )
        .with_context(|| format!("chmod {}", path.display()))?;
        if let Some(uid) = owner {
            let _ = nix::unistd::chown(&path, Some(uid), None);
        }
        sock.set_nonblocking(true).context("notify socket")?;
        socket::setsockopt(&sock, sockopt::PassCred, &true)
            .context("SO_PASSCRED")?;
        Ok(Server { sock, dir, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.sock.as_fd()
    }

    /// The datagrams waiting now, at most `DRAIN_MAX` a call: a worker
    /// flooding the socket must not keep the master from its other
    /// events (the rest wait for the next round of the loop).
    pub fn drain(&self) -> Vec<Message> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        for _ in 0..DRAIN_MAX {
            let mut cmsg = nix::cmsg_space!(UnixCredentials);
            let mut iov = [IoSliceMut::new(&mut buf)];
            let r = socket::recvmsg::<()>(
                self.sock.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
            );
            let msg = match r {
                Ok(m) => m,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => break,
            };
            let pid = msg.cmsgs().ok().and_then(|mut c| {
                c.find_map(|m| match m {
                    ControlMessageOwned::ScmCredentials(c) => Some(c.pid()),
                    _ => None,
                })
            });
            let len = msg.bytes;
            if let Some(pid) = pid {
                let text = String::from_utf8_lossy(&buf[..len]).into_owned();
                out.push(Message {
                    pid: Pid::from_raw(pid),
                    text,
                });
            }
        }
        out
    }

    /// Removes the socket and its directory.
    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Removes the notify directories of masters that died without cleaning
/// up (SIGKILL): `upgrader.<pid>.<n>` directories of this user whose
/// socket nobody holds any more (a connect is refused). A directory of a
/// live master, in this PID namespace or another sharing the directory,
/// still answers and is left alone.
fn remove_stale(base: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    let me = nix::unistd::geteuid().as_raw();
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) =
            name.to_str().and_then(|n| n.strip_prefix("upgrader."))
        else {
            continue;
        };
        let ours = rest.split('.').count() == 2
            && rest.split('.').all(|p| p.parse::<u64>().is_ok());
        let dir = e.path();
        let owned = std::fs::symlink_metadata(&dir)
            .is_ok_and(|m| m.is_dir() && m.uid() == me);
        if !ours || !owned {
            continue;
        }
        let sock = dir.join("notify");
        let refused = match UnixDatagram::unbound() {
            Ok(s) => s.connect(&sock).is_err_and(|e| {
                matches!(
                    e.raw_os_error(),
                    Some(nix::libc::ECONNREFUSED | nix::libc::ENOENT)
                )
            }),
            Err(_) => false,
        };
        if refused {
            let _ = std::fs::remove_file(&sock);
            if std::fs::remove_dir(&dir).is_ok() {
                log::debug!("removed stale notify dir {}", dir.display());
            }
        }
    }
}

fn address(path: &str) -> std::io::Result<SocketAddr> {
    match path.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
        None => SocketAddr::from_pathname(path),
    }
}

/// Sends one datagram to a notify socket.
pub fn send(path: &str, text: &str) -> std::io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    sock.send_to_addr(text.as_bytes(), &address(path)?)?;
    Ok(())
}

/// systemd's notify socket, if the master was started with one.
#[derive(Debug, Clone)]
pub struct Systemd {
    path: Option<String>,
}

impl Systemd {
    pub fn new(path: Option<String>) -> Systemd {
        Systemd { path }
    }

    pub fn enabled(&self) -> bool {
        self.path.is_some()
    }

    /// Sends `text`; failures are logged at debug, as systemd's own
    /// clients do: notification is best effort.
    pub fn notify(&self, text: &str) {
        if let Some(p) = &self.path {
            match send(p, text) {
                Ok(()) => {
                    log::debug!("sd_notify: {}", text.replace('\n', " "))
                }
                Err(e) => log::debug!("sd_notify {p}: {e}"),
            }
        }
    }
    /// `BARRIER=1` (sd_notify_barrier(3)): sends it with the write end
    /// of a pipe and returns the read end, which hangs up once systemd
    /// has processed every message sent before (it closes the end we
    /// passed). The caller waits for that in its own poll.
    pub fn barrier(&self) -> Result<Option<OwnedFd>> {
        let Some(p) = &self.path else { return Ok(None) };
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .context("pipe")?;
        let sock = UnixDatagram::unbound().context("socket")?;
        sock.connect_addr(&address(p)?)
            .with_context(|| format!("connect {p}"))?;
        let fds = [w.as_raw_fd()];
        let cmsg = [ControlMessage::ScmRights(&fds)];
        let iov = [std::io::IoSlice::new(b"BARRIER=1")];
        socket::sendmsg::<()>(
            sock.as_raw_fd(),
            &iov,
            &cmsg,
            MsgFlags::MSG_DONTWAIT,
            None,
        )
        .context("sendmsg BARRIER=1")?;
        Ok(Some(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_sees_sender_pid_and_text() {
        let s = Server::bind(None).unwrap();
        send(s.path().to_str().unwrap(), "READY=1\nSTATUS=hi there").unwrap();
        let msgs = s.drain();
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].pid.as_raw() as u32, std::process::id());
        let pairs: Vec<_> = msgs[0].pairs().collect();
        assert_eq!(pairs, [("READY", "1"), ("STATUS", "hi there")]);
        s.remove();
        assert!(!s.dir.exists());
    }

    #[test]
    fn stale_dirs_are_removed_live_ones_kept() {
        let base = std::env::temp_dir()
            .join(format!("upgrader-notify-test-{}", std::process::id()));
        std::fs::create_dir_all(&base).unwrap();
        // A dead master's directory: the socket file with nobody bound.
        let dead = base.join("upgrader.999999.1");
        std::fs::create_dir_all(&dead).unwrap();
        drop(UnixDatagram::bind(dead.join("notify")).unwrap());
        let live = base.join("upgrader.1.2");
        std::fs::create_dir_all(&live).unwrap();
        let _held = UnixDatagram::bind(live.join("notify")).unwrap();
        let other = base.join("something-else");
        std::fs::create_dir_all(&other).unwrap();
        remove_stale(&base);
        assert!(!dead.exists(), "stale dir kept");
        assert!(live.join("notify").exists(), "live socket removed");
        assert!(other.exists());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
