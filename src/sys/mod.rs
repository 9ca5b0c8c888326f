//! The audited corner: every `unsafe` block of the program lives here.
//!
//! What it owns: `fork`, `_exit`, adopting inherited descriptors, the
//! worker's signal handlers, closing inherited descriptors, and the
//! allocation-free path from `fork` to `execve` for exec workers. The
//! rest of the crate is `forbid(unsafe_code)`-clean and calls these
//! small, documented wrappers.
//!
//! The standing assumption that makes `fork` sound here: the master is
//! single-threaded (no runtime, no helper thread; see DESIGN.md), so the
//! child of a fork holds no lock another thread could have taken.

use std::ffi::{CString, c_char, c_int};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::signal::{self, SigHandler, Signal};
use nix::unistd::{ForkResult, Pid};

mod exec;
pub use exec::*;
mod write;
pub use write::*;

/// The outcome of [`fork`] (nix's `ForkResult`, without the child's pid
/// field name).
pub enum Fork {
    Parent(Pid),
    Child,
}

/// fork(2).
///
/// # Safety
///
/// The calling process must be single-threaded (the master and the
/// keeper are: no runtime, no helper thread), so that the child holds no
/// lock another thread took and can run ordinary Rust code, allocate and
/// log. The child must leave through [`exit_now`] (or `execve`), never by
/// returning into the parent's code.
pub unsafe fn fork() -> nix::Result<Fork> {
    // SAFETY: the caller guarantees a single-threaded process.
    match unsafe { nix::unistd::fork() }? {
        ForkResult::Parent { child } => Ok(Fork::Parent(child)),
        ForkResult::Child => Ok(Fork::Child),
    }
}

/// _exit(2): leave at once, running no destructor and flushing nothing
/// that belongs to the parent.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit is async-signal-safe and takes no pointer.
    unsafe { nix::libc::_exit(code) }
}

/// accept4(2) with `SOCK_CLOEXEC | SOCK_NONBLOCK`, as an owned
/// descriptor.
pub fn accept(listener: BorrowedFd<'_>) -> nix::Result<OwnedFd> {
    use nix::sys::socket::SockFlag;
    let raw = nix::sys::socket::accept4(
        listener.as_raw_fd(),
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
    )?;
    // SAFETY: accept4 just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Takes ownership of a descriptor this process inherited (systemd's
/// `LISTEN_FDS`, a predecessor's `UPGRADER_FDS`).
///
/// Returns `None` unless `raw` is an open descriptor.
///
/// # Safety
///
/// `raw` must be a descriptor nothing else in this process owns or will
/// close (one handed over by the parent), and each number must be
/// adopted once: the returned `OwnedFd` closes it when dropped.
pub unsafe fn adopt_inherited(raw: RawFd) -> Option<OwnedFd> {
    // F_GETFD fails with EBADF on a closed descriptor.
    // SAFETY: fcntl(F_GETFD) only reads the descriptor's flags.
    if unsafe { nix::libc::fcntl(raw, nix::libc::F_GETFD) } < 0 {
        return None;
    }
    // SAFETY: open, and unowned by the caller's contract.
    Some(unsafe { OwnedFd::from_raw_fd(raw) })
}

extern "C" fn exit_zero(_: c_int) {
    // Only async-signal-safe calls in a handler: _exit is one.
    // SAFETY: _exit takes no pointer and never returns.
    unsafe { nix::libc::_exit(0) }
}

/// Makes each signal in `signals` end the process at once with status 0
/// (the built-in worker's QUIT and INT: "exit now", without the core
/// dump that SIGQUIT's default action would write).
pub fn exit_zero_on(signals: &[Signal]) -> nix::Result<()> {
    for &sig in signals {
        // SAFETY: the handler calls only _exit, which is
        // async-signal-safe.
        unsafe { signal::signal(sig, SigHandler::Handler(exit_zero)) }?;
    }
    Ok(())
}

/// Restores the default disposition of `sig` (SIGPIPE, which the Rust
/// runtime ignores and an ignored disposition survives execve).
pub fn default_disposition(sig: Signal) -> nix::Result<()> {
    // SAFETY: SIG_DFL installs no handler code.
    unsafe { signal::signal(sig, SigHandler::SigDfl) }.map(|_| ())
}

/// Resets every catchable signal to its default disposition, the
/// glibc-reserved real-time ones (32, 33) included, which the C library
/// refuses to touch and which may arrive ignored from the environment
/// (a Rust parent's `Command` leaves them so).
/// Raw rt_sigaction(2): async-signal-safe, usable right after fork.
pub fn reset_all_dispositions() {
    use nix::libc;
    // The kernel's struct sigaction (x86_64 and aarch64 layout); all
    // zero means SIG_DFL, no flags, empty mask.
    #[repr(C)]
    struct KernelSigaction {
        handler: usize,
        flags: u64,
        restorer: usize,
        mask: u64,
    }
    let dfl = KernelSigaction {
        handler: 0,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: rt_sigaction with a valid struct pointer and a NULL
        // old-action pointer; SIG_DFL installs no code.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                &dfl as *const KernelSigaction,
                std::ptr::null::<KernelSigaction>(),
                8usize,
            );
        }
    }
}

/// Closes every descriptor from 3 up that is not in `keep`
/// (close_range(2), Linux 5.9+). Used in forked workers so they do not
/// hold the master's private descriptors (signalfd, notify socket,
/// other workers' pipes).
///
/// # Safety
///
/// Every `OwnedFd`, `File` or socket of this process numbered 3 or more
/// and not in `keep` is closed under its owner, which must never use or
/// close it again: call it only in a freshly forked child, before it
/// execs or starts serving, and async-signal-safe (no allocation:
/// `keep` is sorted in place).
pub unsafe fn close_fds_except(keep: &mut [RawFd]) {
    keep.sort_unstable();
    let mut from: u32 = 3;
    for &mut fd in keep {
        if fd < 3 {
            continue;
        }
        let fd = fd as u32;
        if fd > from {
            close_range(from, fd - 1, 0);
        }
        from = from.max(fd + 1);
    }
    close_range(from, u32::MAX, 0);
}

fn close_range(first: u32, last: u32, flags: c_int) {
    // SAFETY: close_range takes plain integers; closing descriptors this
    // process does not want is its own business. Errors (an old kernel)
    // leave the descriptors open, which is harmless.
    unsafe {
        nix::libc::syscall(
            nix::libc::SYS_close_range,
            first,
            last,
            flags as nix::libc::c_uint,
        );
    }
}

/// dup3(2) of `src` onto the descriptor number `target`, close-on-exec,
/// which stays owned by whoever owns it now (the log file fern writes
/// to: reopening the log swaps the file under the same number,
/// atomically).
///
/// # Safety
///
/// `target` must be an open descriptor whose owner expects the file
/// under it to change (it must not rely on which file it refers to), or
/// a number nothing owns: dup3 silently closes what was there.
pub unsafe fn replace_fd(
    src: BorrowedFd<'_>,
    target: RawFd,
) -> nix::Result<()> {
    // SAFETY: dup3 with plain integers; by the contract, `target` stays
    // with its owner and only refers to a new file afterwards.
    let r = unsafe {
        nix::libc::dup3(src.as_raw_fd(), target, nix::libc::O_CLOEXEC)
    };
    Errno::result(r).map(|_| ())
}

/// pidfd_open(2): a descriptor that becomes readable when `pid` exits,
/// for any process, child or not (Linux 5.3+). The new master watches
/// its predecessor with it, so promotion is an event, not a tick.
pub fn pidfd_open(pid: Pid) -> nix::Result<OwnedFd> {
    // SAFETY: a plain system call on integers; the returned descriptor
    // is new and owned by no one else.
    let r = unsafe {
        nix::libc::syscall(nix::libc::SYS_pidfd_open, pid.as_raw(), 0)
    };
    let fd = Errno::result(r)? as RawFd;
    // SAFETY: pidfd_open just returned this descriptor (CLOEXEC by
    // default).
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Whether `sig` is pending (blocked and arrived) for this thread or
/// process (sigpending(2); nix has no wrapper).
pub fn is_pending(sig: Signal) -> bool {
    use nix::libc;
    // SAFETY: sigpending and sigismember fill and read a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigpending(&mut set) == 0
            && libc::sigismember(&set, sig as libc::c_int) == 1
    }
}

/// The file type bits (`S_IFMT` of `st_mode`) of the descriptor number
/// `raw`, or `None` if it is not open: how an inherited number is
/// examined before anything trusts it (a `UPGRADER_READY_FD` of 2 would
/// otherwise be the master's own stderr, closed once "ready").
pub fn file_type(raw: RawFd) -> Option<nix::libc::mode_t> {
    use nix::libc;
    // SAFETY: fstat fills a local struct and fails with EBADF on a number
    // that is not open; it takes no ownership of the descriptor.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        (libc::fstat(raw, &mut st) == 0).then_some(st.st_mode & libc::S_IFMT)
    }
}

/// listen(2) with any backlog: the kernel caps it at
/// `net.core.somaxconn` itself (nix's `Backlog::new` refuses anything
/// above the C library's SOMAXCONN, 4096, with EINVAL, even where the
/// sysctl allows more).
pub fn listen(fd: BorrowedFd<'_>, backlog: i32) -> nix::Result<()> {
    // SAFETY: a plain system call on a borrowed, open descriptor.
    let r = unsafe { nix::libc::listen(fd.as_raw_fd(), backlog) };
    Errno::result(r).map(|_| ())
}

/// Borrows a descriptor that stays open for the rest of the process's
/// life (a worker's inherited listeners, stderr).
///
/// # Safety
///
/// `fd` must be open and nothing in the process may close it before the
/// process exits (the borrow is `'static`).
pub unsafe fn borrow_forever(fd: RawFd) -> BorrowedFd<'static> {
    // SAFETY: open for the rest of the process, by the contract.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

/// Waits until `fd` is ready for `events` (or has an error or hang-up,
/// which poll reports whatever was asked) or `deadline` passes: the one
/// "wait for an fd until a deadline" of the program (the `-s` client,
/// the built-in worker's connections, the master's zero-time checks).
/// `Ok(false)` when the deadline passed first; EINTR is retried.
pub fn wait_for(
    fd: BorrowedFd<'_>,
    events: nix::poll::PollFlags,
    deadline: std::time::Instant,
) -> nix::Result<bool> {
    use nix::poll::{PollFd, PollTimeout, poll};
    loop {
        let left =
            deadline.saturating_duration_since(std::time::Instant::now());
        // Rounded up: a poll of 0 ms for 0.4 ms left would spin.
        let ms = left.as_micros().div_ceil(1000);
        let t = PollTimeout::try_from(ms.min(i32::MAX as u128) as i32)
            .unwrap_or(PollTimeout::MAX);
        let mut p = [PollFd::new(fd, events)];
        match poll(&mut p, t) {
            Ok(0) => return Ok(false),
            Ok(_) => return Ok(true),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}
