//! Accepting without spinning: a spare descriptor for EMFILE, a pause for a
//! listener that stopped listening, the 503 for those refused.

use super::*;

/// What one accept found.
#[derive(Debug)]
pub(super) enum Accepted {
    Conn(OwnedFd),
    /// Out of descriptors: one queued connection was answered 503 and
    /// closed through the spare descriptor; try the next.
    Refused,
    /// Nothing queued (or another worker took it).
    Empty,
    /// Not accepting on this listener for a moment: it is not listening
    /// (EINVAL: an exec'd app called shutdown() on the shared socket;
    /// the master restores it), or no descriptor is to be had at all.
    Pause,
}

pub(super) fn accept(
    l: BorrowedFd<'_>,
    spare: &mut Spare,
) -> anyhow::Result<Accepted> {
    loop {
        match sys::accept(l) {
            Ok(fd) => {
                spare.recovered();
                return Ok(Accepted::Conn(fd));
            }
            Err(Errno::EAGAIN) => return Ok(Accepted::Empty),
            Err(Errno::EINTR) => continue,
            // The connection was reset while queued, or memory is short
            // for a moment: not this worker's death.
            Err(
                Errno::ECONNABORTED
                | Errno::EPROTO
                | Errno::ENOBUFS
                | Errno::ENOMEM,
            ) => return Ok(Accepted::Empty),
            Err(e @ (Errno::EMFILE | Errno::ENFILE)) => {
                return Ok(spare.refuse_one(l, e));
            }
            Err(Errno::EINVAL) => return Ok(Accepted::Pause),
            Err(e) => {
                return Err(anyhow::anyhow!("accept: {}", e.desc()));
            }
        }
    }
}

/// A descriptor kept open (on /dev/null) to be given up when accept
/// fails with EMFILE/ENFILE: closing it makes room to accept the
/// queued connection and close it at once, so the client gets an
/// answer instead of waiting in the queue forever, and level-triggered
/// epoll does not wake the worker again for the same connection
/// (libev's and libuv's trick).
pub(super) struct Spare {
    fd: Option<std::fs::File>,
    /// Exhaustion was logged and has not ended since.
    warned: bool,
}

impl Spare {
    pub(super) fn open() -> Spare {
        Spare {
            fd: std::fs::File::open("/dev/null").ok(),
            warned: false,
        }
    }

    pub(super) fn refuse_one(
        &mut self,
        l: BorrowedFd<'_>,
        e: Errno,
    ) -> Accepted {
        if !self.warned {
            self.warned = true;
            let limit = nix::sys::resource::getrlimit(
                nix::sys::resource::Resource::RLIMIT_NOFILE,
            )
            .map_or_else(
                |_| "unknown".to_string(),
                |(soft, _)| soft.to_string(),
            );
            log::warn!(
                "accept: {} (descriptor limit {limit}): answering 503 to new \
                 connections until descriptors are free",
                e.desc().to_lowercase()
            );
        }
        if self.fd.take().is_none() {
            return Accepted::Pause;
        }
        let r = match sys::accept(l) {
            Ok(conn) => {
                refuse(conn);
                Accepted::Refused
            }
            Err(Errno::EAGAIN) => Accepted::Empty,
            Err(_) => Accepted::Pause,
        };
        self.fd = std::fs::File::open("/dev/null").ok();
        if self.fd.is_none() {
            return Accepted::Pause;
        }
        r
    }

    /// An accept worked: the episode, if any, is over.
    pub(super) fn recovered(&mut self) {
        if self.fd.is_none() {
            self.fd = std::fs::File::open("/dev/null").ok();
        }
        if self.warned && self.fd.is_some() {
            self.warned = false;
            log::info!("accept: descriptors available again");
        }
    }
}

/// Answers 503 without waiting for the request, and closes. Nothing
/// here blocks: whatever does not fit at once is dropped.
pub(super) fn refuse(conn: OwnedFd) {
    use std::os::fd::AsRawFd;
    let fd = conn.as_raw_fd();
    let mut sink = [0u8; 1024];
    // Unread input makes close send RST, which may destroy the answer.
    while let Ok(n) = socket::recv(fd, &mut sink, MsgFlags::MSG_DONTWAIT) {
        if n == 0 {
            break;
        }
    }
    let body = "503 Service Unavailable\n";
    let msg = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; \
         charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = socket::send(
        fd,
        msg.as_bytes(),
        MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
    );
    let _ = socket::shutdown(fd, socket::Shutdown::Write);
}
