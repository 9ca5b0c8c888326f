//! What --bind means: the address forms, names, parsing and display.

use super::*;

/// The listener name systemd gives an unnamed descriptor.
pub const UNNAMED: &str = "unknown";

/// Where a listener is, as written after `--bind`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addr {
    Tcp(SocketAddr),
    Unix(PathBuf),
    /// A descriptor already open in this process (`fd:NUM`).
    Fd(RawFd),
    /// A socket passed by systemd, chosen by its `FileDescriptorName=`.
    Systemd(String),
}

/// One `--bind [NAME=]ADDR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindSpec {
    pub name: Option<String>,
    pub addr: Addr,
}

impl BindSpec {
    /// The name handed on in `LISTEN_FDNAMES`.
    pub fn name(&self) -> &str {
        match (&self.name, &self.addr) {
            (Some(n), _) => n,
            (None, Addr::Systemd(n)) => n,
            (None, _) => UNNAMED,
        }
    }
}

/// A name as systemd accepts it in `LISTEN_FDNAMES` (and a little
/// stricter: letters, digits, `_.-`).
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

impl FromStr for BindSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (name, rest) = match s.split_once('=') {
            Some((n, r)) if valid_name(n) => (Some(n.to_string()), r),
            _ => (None, s),
        };
        let addr = parse_addr(rest)?;
        Ok(BindSpec { name, addr })
    }
}

pub(super) fn parse_addr(s: &str) -> Result<Addr, String> {
    if let Some(path) = s.strip_prefix("unix:") {
        if path.is_empty() {
            return Err("unix: needs a path".into());
        }
        return Ok(Addr::Unix(PathBuf::from(path)));
    }
    if let Some(num) = s.strip_prefix("fd:") {
        let fd: RawFd = num
            .parse()
            .map_err(|_| format!("fd:{num}: not a descriptor number"))?;
        if fd < 3 {
            return Err(format!("fd:{fd}: 0, 1 and 2 are stdio"));
        }
        return Ok(Addr::Fd(fd));
    }
    if let Some(name) = s.strip_prefix("systemd:") {
        if !valid_name(name) {
            return Err(format!(
                "systemd:{name}: a name is letters, digits and _.-"
            ));
        }
        return Ok(Addr::Systemd(name.to_string()));
    }
    parse_tcp(s).map(Addr::Tcp)
}

pub(super) fn parse_tcp(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!(
            "{s}: expected HOST:PORT, [V6]:PORT, unix:PATH, fd:NUM or \
             systemd:NAME"
        ));
    };
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{s}: port {port:?} is not in 0-65535"))?;
    if host.is_empty() {
        return Err(format!("{s}: missing host"));
    }
    (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("{s}: cannot resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{s}: {host} has no address"))
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Addr::Tcp(a) => write!(f, "{a}"),
            Addr::Unix(p) => write!(f, "unix:{}", p.display()),
            Addr::Fd(n) => write!(f, "fd:{n}"),
            Addr::Systemd(n) => write!(f, "systemd:{n}"),
        }
    }
}

impl fmt::Display for BindSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(n) => write!(f, "{n}={}", self.addr),
            None => write!(f, "{}", self.addr),
        }
    }
}
