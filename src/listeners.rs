//! Listening sockets: what `--bind` means, binding them, and adopting
//! the ones passed in (systemd's `LISTEN_FDS`, a predecessor master's
//! `UPGRADER_FDS`).
//!
//! A listener is created once, before any worker exists, and shared by
//! every generation through the same open file description. Ownership
//! decides cleanup: only a socket this master bound is ever unlinked
//! (the unix path), and only when no successor inherited it.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::str::FromStr;

use anyhow::{Context, Result, anyhow, bail};
use nix::errno::Errno;
use nix::sys::socket::{
    self, AddressFamily, SockFlag, SockType, SockaddrIn, SockaddrIn6,
    SockaddrLike, SockaddrStorage, UnixAddr, sockopt,
};

mod spec;
pub use spec::*;

/// Who created a socket: decides whether this master may unlink it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Bound,
    Inherited,
}

/// An open listening socket.
#[derive(Debug)]
pub struct Listener {
    pub name: String,
    pub fd: OwnedFd,
    /// The address it listens on, as `getsockname` reports it (the real
    /// port when `:0` was asked for).
    pub local: Addr,
    pub origin: Origin,
    /// The `--bind` it was opened for, if any (a reload keeps a listener
    /// whose spec is unchanged, even for `:0`).
    pub spec: Option<BindSpec>,
}

impl Listener {
    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Removes the socket file of a unix listener this master bound.
    pub fn unlink(&self) {
        if let (Origin::Bound, Addr::Unix(path)) = (self.origin, &self.local) {
            match std::fs::remove_file(path) {
                Ok(()) => log::debug!("unlinked {}", path.display()),
                Err(e) => log::warn!("unlink {}: {e}", path.display()),
            }
        }
    }
}

/// Socket options for sockets this master binds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindOptions {
    pub backlog: i32,
    pub reuse_port: bool,
    /// Mode and owner of unix socket files.
    pub unix_mode: Option<u32>,
    pub unix_owner: (Option<u32>, Option<u32>),
}

/// Creates, binds and listens. The socket is CLOEXEC, with SO_REUSEADDR
/// so a restart right after a stop never fails on TIME_WAIT.
pub fn bind(spec: &BindSpec, opts: BindOptions) -> Result<Listener> {
    let what = format!("bind {}", spec.addr);
    let fd = match &spec.addr {
        Addr::Tcp(a) => bind_tcp(*a, opts),
        Addr::Unix(p) => bind_unix(p, opts),
        Addr::Fd(_) | Addr::Systemd(_) => {
            bail!("{what}: no such socket was passed to this process")
        }
    }
    .map_err(|e| anyhow!("{what}: {e}"))?;
    let local = local_addr(fd.as_fd()).unwrap_or_else(|_| spec.addr.clone());
    Ok(Listener {
        name: spec.name().to_string(),
        fd,
        local,
        origin: Origin::Bound,
        spec: Some(spec.clone()),
    })
}

fn errno_text(e: nix::Error) -> String {
    e.desc().to_string()
}

/// The OS reason alone, without std's "(os error N)".
fn io_text(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => Errno::from_raw(n).desc().to_string(),
        None => e.to_string(),
    }
}

fn bind_tcp(addr: SocketAddr, opts: BindOptions) -> Result<OwnedFd, String> {
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd =
        socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
            .map_err(errno_text)?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(errno_text)?;
    if opts.reuse_port {
        socket::setsockopt(&fd, sockopt::ReusePort, &true)
            .map_err(errno_text)?;
    }
    let r = match addr {
        SocketAddr::V4(a) => {
            socket::bind(fd.as_raw_fd(), &SockaddrIn::from(a))
        }
        SocketAddr::V6(a) => {
            // [::] means IPv6 only, so 0.0.0.0 and [::] can both be
            // bound, as nginx does.
            socket::setsockopt(&fd, sockopt::Ipv6V6Only, &true)
                .map_err(errno_text)?;
            socket::bind(fd.as_raw_fd(), &SockaddrIn6::from(a))
        }
    };
    r.map_err(errno_text)?;
    listen(&fd, opts.backlog)?;
    Ok(fd)
}

/// listen(2); a backlog above `net.core.somaxconn` is capped by the
/// kernel (and warned about once at start, see `backlog_cap`).
pub fn listen(fd: &OwnedFd, backlog: i32) -> Result<(), String> {
    crate::sys::listen(fd.as_fd(), backlog).map_err(errno_text)
}

/// The kernel's limit on a listen backlog (`net.core.somaxconn`), if it
/// can be read.
pub fn backlog_cap() -> Option<i32> {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn bind_unix(path: &Path, opts: BindOptions) -> Result<OwnedFd, String> {
    remove_stale_socket(path)?;
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(errno_text)?;
    let addr = UnixAddr::new(path).map_err(errno_text)?;
    socket::bind(fd.as_raw_fd(), &addr).map_err(errno_text)?;
    if let Some(mode) = opts.unix_mode {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("chmod {mode:o}: {}", io_text(&e)))?;
    }
    if let (uid, gid) = opts.unix_owner
        && (uid.is_some() || gid.is_some())
    {
        std::os::unix::fs::chown(path, uid, gid)
            .map_err(|e| format!("chown: {}", io_text(&e)))?;
    }
    listen(&fd, opts.backlog)?;
    Ok(fd)
}

/// A socket file left by a master that died is removed; one that
/// somebody still listens on is not ("address in use").
fn remove_stale_socket(path: &Path) -> Result<(), String> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err("Address already in use (not a socket)".into());
    }
    match probe_unix(path) {
        Ok(()) | Err(Errno::EAGAIN | Errno::EINPROGRESS) => {
            Err("Address already in use (a server is listening)".into())
        }
        Err(Errno::ECONNREFUSED) => std::fs::remove_file(path)
            .or_else(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Ok(()),
                _ => Err(e),
            })
            .map_err(|e| format!("remove stale socket: {}", io_text(&e))),
        // Gone since the look: nothing to remove.
        Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(format!(
            "Address already in use (cannot tell whether a server listens: \
             {})",
            e.desc()
        )),
    }
}

/// A non-blocking connect to a unix socket path: a server whose backlog
/// is full answers EAGAIN at once, where a blocking connect would wait
/// for it to accept (unix(7)), and the master would hang at start.
fn probe_unix(path: &Path) -> Result<(), Errno> {
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    socket::connect(fd.as_raw_fd(), &UnixAddr::new(path)?)
}

/// The address a socket is bound to.
pub fn local_addr(fd: BorrowedFd<'_>) -> Result<Addr> {
    let ss: SockaddrStorage =
        socket::getsockname(fd.as_raw_fd()).context("getsockname")?;
    if let Some(a) = ss.as_sockaddr_in() {
        return Ok(Addr::Tcp(SocketAddr::V4((*a).into())));
    }
    if let Some(a) = ss.as_sockaddr_in6() {
        return Ok(Addr::Tcp(SocketAddr::V6((*a).into())));
    }
    if let Some(u) = ss.as_unix_addr() {
        if let Some(p) = u.path() {
            return Ok(Addr::Unix(p.to_path_buf()));
        }
        return Ok(Addr::Unix(PathBuf::from("@")));
    }
    bail!("unsupported address family {:?}", ss.family())
}

/// Checks that an inherited descriptor is a listening stream socket
/// before it is trusted (listenfd does the same), and wraps it.
pub fn adopt(fd: OwnedFd, name: &str) -> Result<Listener> {
    let raw = fd.as_raw_fd();
    let ty = socket::getsockopt(&fd, sockopt::SockType)
        .with_context(|| format!("fd {raw} ({name}) is not a socket"))?;
    if ty != SockType::Stream {
        bail!("fd {raw} ({name}) is a {ty:?} socket, not a stream socket");
    }
    let listening = socket::getsockopt(&fd, sockopt::AcceptConn)
        .with_context(|| format!("fd {raw} ({name}): SO_ACCEPTCONN"))?;
    if !listening {
        bail!("fd {raw} ({name}) is not listening");
    }
    let local = local_addr(fd.as_fd())
        .with_context(|| format!("fd {raw} ({name})"))?;
    Ok(Listener {
        name: name.to_string(),
        fd,
        local,
        origin: Origin::Inherited,
        spec: None,
    })
}

/// Opens the listeners a configuration asks for. Inherited sockets are
/// matched to `--bind` entries: first a predecessor's by the `--bind` it
/// was opened for (handed over with it: `fd:7` is at descriptor 3 in a
/// new master, `http=systemd:web` is named `http` there), then by name
/// (`systemd:NAME`), number (`fd:N`, only for descriptors passed to
/// this process as they are) or address; the rest are bound. With no
/// `--bind`, every inherited socket is served; with neither, the default
/// address. `successor`: the inherited sockets come from an old master,
/// renumbered, and no other descriptor was passed.
pub fn open_all(
    specs: &[BindSpec],
    mut inherited: Vec<Listener>,
    successor: bool,
    opts: BindOptions,
) -> Result<Vec<Listener>> {
    if specs.is_empty() && !inherited.is_empty() {
        return Ok(inherited);
    }
    let default = [default_bind()];
    let specs = if specs.is_empty() {
        &default[..]
    } else {
        specs
    };
    // Handed-over specs first, for every entry, so a fallback match of
    // one entry cannot take the socket handed over for a later one.
    let mut found: Vec<Option<Listener>> = specs
        .iter()
        .map(|spec| {
            let i = inherited
                .iter()
                .position(|l| l.spec.as_ref() == Some(spec))?;
            Some(inherited.remove(i))
        })
        .collect();
    // Descriptor numbers some `Listener` already owns or will own: a
    // `fd:N` outside them is adopted, one inside is refused (two owners
    // of one number would close it twice).
    let mut owned: Vec<RawFd> = inherited
        .iter()
        .chain(found.iter().flatten())
        .map(Listener::raw)
        .collect();
    let mut out = Vec::with_capacity(specs.len());
    for (spec, handed) in specs.iter().zip(&mut found) {
        // Then an exact match; then `:0` takes an inherited socket on
        // the same address (a successor re-reads the same `--bind
        // 127.0.0.1:0` that gave its predecessor a kernel-chosen port).
        let matched = handed.take().or_else(|| {
            let find =
                |f: &dyn Fn(&Listener) -> bool| inherited.iter().position(f);
            let i = find(&|l| opened_for(spec, l))
                .or_else(|| find(&|l| matches(spec, l, !successor)))
                .or_else(|| find(&|l| any_port(spec, l)))?;
            Some(inherited.remove(i))
        });
        let mut l = match matched {
            Some(l) => l,
            None => match &spec.addr {
                Addr::Fd(n) if successor => bail!(
                    "bind fd:{n}: the old master handed over no such socket"
                ),
                Addr::Fd(n) if owned.contains(n) => bail!(
                    "bind fd:{n}: that descriptor is already served by \
                     another --bind"
                ),
                Addr::Fd(n) => {
                    // SAFETY: the operator passed fd N to this process to
                    // serve; no listener owns it (checked above) and it is
                    // recorded below, so it is adopted once. Nothing else
                    // the master opened exists yet, bar the log file, which
                    // `adopt` refuses (not a listening socket).
                    #[allow(unsafe_code)]
                    let fd = unsafe { crate::sys::adopt_inherited(*n) };
                    let fd = fd.ok_or_else(|| {
                        anyhow!("bind fd:{n}: descriptor is not open")
                    })?;
                    owned.push(*n);
                    let mut l = adopt(fd, spec.name())
                        .with_context(|| format!("bind fd:{n}"))?;
                    // fd:N was ours to take but not ours to unlink.
                    l.origin = Origin::Inherited;
                    l
                }
                _ => bind(spec, opts)?,
            },
        };
        // `systemd:NAME` names it NAME, even a socket an old master
        // served under another name.
        if spec.name.is_some() || matches!(spec.addr, Addr::Systemd(_)) {
            l.name = spec.name().to_string();
        }
        l.spec = Some(spec.clone());
        out.push(l);
    }
    for l in inherited {
        log::warn!(
            "inherited socket {} ({}) matches no --bind: not served",
            l.local,
            l.name
        );
    }
    Ok(out)
}

/// The listener set a reloaded configuration asks for: listeners whose
/// `--bind` did not change are kept (shared), new ones are bound. An
/// empty `--bind` list keeps the current set. Nothing is closed here:
/// the caller drops what is no longer used once the old generation is
/// gone. On error nothing changes.
pub fn reconcile(
    current: &[Rc<Listener>],
    specs: &[BindSpec],
    opts: BindOptions,
) -> Result<Vec<Rc<Listener>>> {
    if specs.is_empty() {
        return Ok(current.to_vec());
    }
    let mut out = Vec::with_capacity(specs.len());
    for spec in specs {
        let find =
            |f: &dyn Fn(&Listener) -> bool| current.iter().find(|l| f(l));
        let kept = find(&|l| l.spec.as_ref() == Some(spec))
            .or_else(|| find(&|l| opened_for(spec, l)))
            .or_else(|| find(&|l| matches(spec, l, false)));
        match kept {
            Some(l) => out.push(Rc::clone(l)),
            None => out.push(Rc::new(bind(spec, opts)?)),
        }
    }
    Ok(out)
}

/// `127.0.0.1:8000`, as gunicorn.
pub fn default_bind() -> BindSpec {
    BindSpec {
        name: None,
        addr: Addr::Tcp(SocketAddr::from(([127, 0, 0, 1], 8000))),
    }
}

fn any_port(spec: &BindSpec, l: &Listener) -> bool {
    match (&spec.addr, &l.local) {
        (Addr::Tcp(want), Addr::Tcp(have)) => {
            want.port() == 0 && want.ip() == have.ip()
        }
        _ => false,
    }
}

/// Whether `l` was opened for the same `fd:N` or `systemd:NAME` as
/// `spec` asks for, perhaps under another name (an old master's
/// listeners carry the `--bind` they were opened for).
fn opened_for(spec: &BindSpec, l: &Listener) -> bool {
    matches!(spec.addr, Addr::Fd(_) | Addr::Systemd(_))
        && l.spec.as_ref().is_some_and(|s| s.addr == spec.addr)
}

/// Whether `l` is the socket `spec` asks for by its systemd name (only
/// a socket not yet renamed by a `--bind`), address or, if `by_number`
/// (descriptors passed as they are, not renumbered by a predecessor),
/// number.
fn matches(spec: &BindSpec, l: &Listener, by_number: bool) -> bool {
    match &spec.addr {
        Addr::Systemd(name) => l.spec.is_none() && &l.name == name,
        Addr::Fd(n) => by_number && l.raw() == *n,
        Addr::Tcp(a) => l.local == Addr::Tcp(*a),
        Addr::Unix(p) => l.local == Addr::Unix(p.clone()),
    }
}

#[cfg(test)]
mod tests;
