//! Writes that never block and never die of SIGPIPE: the ready pipe and the
//! log.

use super::*;

/// Writes `bytes` to the descriptor number `raw` if it is open and a
/// pipe (a ready pipe that may already be closed: the number is only
/// examined, never owned).
///
/// # Safety
///
/// If `raw` is open, it must be the pipe the caller means: the bytes go
/// to whatever file the number refers to.
pub unsafe fn write_if_pipe(raw: RawFd, bytes: &[u8]) {
    use nix::libc;
    // SAFETY: fstat fills a local struct and fails with EBADF on a
    // number that is not open; write takes a local buffer of the length
    // given (the caller vouches for the descriptor). Neither takes
    // ownership of it.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(raw, &mut st) == 0
            && st.st_mode & libc::S_IFMT == libc::S_IFIFO
        {
            libc::write(raw, bytes.as_ptr().cast(), bytes.len());
        }
    }
}

/// Writes `bytes` to `fd` without ever blocking and without dying of
/// SIGPIPE: for the log, which must never stop the master (SPEC 2.7).
///
/// The file description is shared with workers and whoever else holds
/// stderr, so O_NONBLOCK (a flag of the description) is never set;
/// each call asks for a non-blocking write by itself instead:
/// `send(MSG_DONTWAIT | MSG_NOSIGNAL)` on a socket (journald's stream),
/// `pwritev2(RWF_NOWAIT)` on a pipe (Linux 6.4+), and where the kernel
/// refuses that flag (a tty, an older kernel) a zero-timeout poll for
/// POLLOUT first, then a write of at most PIPE_BUF bytes, which the
/// kernel takes whole once POLLOUT said there is room. Regular files
/// are written plainly (they do not block on a full disk: ENOSPC).
///
/// Returns what was written; `EAGAIN` means "would block", `EPIPE` "no
/// reader". A SIGPIPE this write raised is consumed before returning.
pub fn write_nowait(fd: BorrowedFd<'_>, bytes: &[u8]) -> nix::Result<usize> {
    use nix::libc;
    let raw = fd.as_raw_fd();
    // SAFETY: fstat fills a local struct; the descriptor is borrowed.
    let kind = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        Errno::result(libc::fstat(raw, &mut st))?;
        st.st_mode & libc::S_IFMT
    };
    without_sigpipe(|| match kind {
        // SAFETY: send and write take a buffer of the length given.
        libc::S_IFSOCK => Errno::result(unsafe {
            libc::send(
                raw,
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        })
        .map(|n| n as usize),
        libc::S_IFREG | libc::S_IFBLK => Errno::result(unsafe {
            libc::write(raw, bytes.as_ptr().cast(), bytes.len())
        })
        .map(|n| n as usize),
        _ => match pwrite_nowait(raw, bytes) {
            Err(Errno::EOPNOTSUPP | Errno::EINVAL | Errno::ENOSYS) => {
                poll_then_write(fd, bytes)
            }
            r => r,
        },
    })
}

/// pwritev2(fd, [bytes], -1, RWF_NOWAIT): a write at the current
/// position that fails with EAGAIN instead of blocking.
pub(super) fn pwrite_nowait(raw: RawFd, bytes: &[u8]) -> nix::Result<usize> {
    use nix::libc;
    let iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: one iovec over a live buffer of its length; offset -1
    // (both halves, for any word size) means "the current position",
    // as write(2) does on a pipe.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pwritev2,
            raw,
            &iov as *const libc::iovec,
            1,
            -1 as libc::c_long,
            -1 as libc::c_long,
            libc::RWF_NOWAIT,
        )
    };
    Errno::result(r).map(|n| n as usize)
}

pub(super) fn poll_then_write(
    fd: BorrowedFd<'_>,
    bytes: &[u8],
) -> nix::Result<usize> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut p = [PollFd::new(fd, PollFlags::POLLOUT)];
    if poll(&mut p, PollTimeout::ZERO)? == 0 {
        return Err(Errno::EAGAIN);
    }
    let got = p[0].revents().unwrap_or(PollFlags::empty());
    if got.intersects(PollFlags::POLLERR | PollFlags::POLLHUP) {
        return Err(Errno::EPIPE);
    }
    if !got.contains(PollFlags::POLLOUT) {
        return Err(Errno::EAGAIN);
    }
    let n = bytes.len().min(nix::libc::PIPE_BUF);
    // SAFETY: write takes a buffer of the length given.
    let r =
        unsafe { nix::libc::write(fd.as_raw_fd(), bytes.as_ptr().cast(), n) };
    Errno::result(r).map(|n| n as usize)
}

/// Runs `f` with SIGPIPE blocked in this thread and consumes the
/// SIGPIPE it raised, so an EPIPE is an error, not a death (a built-in
/// worker runs with SIGPIPE at its default action; the master blocks it
/// anyway and reads it from its signalfd).
pub(super) fn without_sigpipe(
    f: impl FnOnce() -> nix::Result<usize>,
) -> nix::Result<usize> {
    use nix::libc;
    // SAFETY: sigset and sigmask calls on local sets; sigtimedwait with a
    // zero timeout only takes a signal that is already pending.
    unsafe {
        let mut pipe: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut pipe);
        libc::sigaddset(&mut pipe, libc::SIGPIPE);
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, &pipe, &mut old);
        if libc::sigismember(&old, libc::SIGPIPE) == 1 {
            return f();
        }
        let pending_before = is_pending(Signal::SIGPIPE);
        let r = f();
        if r == Err(Errno::EPIPE) && !pending_before {
            let zero = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            libc::sigtimedwait(&pipe, std::ptr::null_mut(), &zero);
        }
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        r
    }
}
