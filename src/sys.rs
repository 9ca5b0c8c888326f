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

/// Everything an exec worker needs between `fork` and `execve`, built
/// before the fork so the child allocates nothing (see
/// `shared/research/systemd-and-crates.md` section 5).
pub struct ExecImage {
    path: CString,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const c_char>,
    _env: Vec<Vec<u8>>,
    env_ptrs: Vec<*const c_char>,
    /// Entries such as `LISTEN_PID=`: the name, then fixed room for the
    /// digits the child fills in with its own pid; with a pointer to that
    /// room, taken once, through which alone it is written (no later
    /// reference to the buffers, whose addresses `env_ptrs` holds).
    _pid_vars: Vec<Vec<u8>>,
    pid_digits: Vec<*mut u8>,
    /// Working directory to change to before execve.
    cwd: Option<CString>,
    /// Die with the parent (workers yes; a new master never).
    pdeathsig: bool,
    /// Keep the signal mask (a new master: its predecessor's blocked
    /// set, so nothing arrives unhandled while it starts).
    keep_mask: bool,
}

const PID_DIGITS: usize = 20;

impl ExecImage {
    /// `pid_vars` names variables (`LISTEN_PID`, `WATCHDOG_PID`) whose
    /// value is the pid of the exec'd process itself, known only after
    /// the fork; `env` must not contain them.
    pub fn new(
        path: CString,
        argv: Vec<CString>,
        env: Vec<CString>,
        pid_vars: &[&str],
    ) -> ExecImage {
        let mut pid_vars: Vec<Vec<u8>> = pid_vars
            .iter()
            .map(|name| {
                let mut v = Vec::with_capacity(name.len() + PID_DIGITS + 2);
                v.extend_from_slice(name.as_bytes());
                v.push(b'=');
                v.resize(name.len() + 1 + PID_DIGITS + 1, 0);
                v
            })
            .collect();
        // Raw pointers only, from as_mut_ptr: the heap buffers never move
        // (the Vecs are not touched again), and the child writes the
        // digits through these, not through a new reference.
        let var_ptrs: Vec<*mut u8> =
            pid_vars.iter_mut().map(|v| v.as_mut_ptr()).collect();
        let pid_digits: Vec<*mut u8> = pid_vars
            .iter()
            .zip(&var_ptrs)
            .map(|(v, p)| p.wrapping_add(v.len() - PID_DIGITS - 1))
            .collect();
        let env: Vec<Vec<u8>> =
            env.into_iter().map(|c| c.into_bytes_with_nul()).collect();
        let mut argv_ptrs: Vec<*const c_char> =
            argv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let mut env_ptrs: Vec<*const c_char> =
            env.iter().map(|e| e.as_ptr().cast()).collect();
        env_ptrs.extend(var_ptrs.iter().map(|p| p.cast_const().cast()));
        env_ptrs.push(std::ptr::null());
        ExecImage {
            path,
            _argv: argv,
            argv_ptrs,
            _env: env,
            env_ptrs,
            _pid_vars: pid_vars,
            pid_digits,
            cwd: None,
            pdeathsig: true,
            keep_mask: false,
        }
    }

    /// For a new master (USR2): its predecessor's working directory, and
    /// no parent-death signal (it must outlive the old master).
    pub fn for_successor(mut self, cwd: CString) -> ExecImage {
        self.cwd = Some(cwd);
        self.pdeathsig = false;
        self.keep_mask = true;
        self
    }

    /// The exec worker's last steps, in the freshly forked child: an
    /// empty signal mask, SIGPIPE default, death with the keeper,
    /// listeners renumbered to 3.., every other descriptor marked
    /// close-on-exec, the pid variables set to our own pid, then
    /// execve(2). If execve fails, the errno goes to `errors` (a
    /// close-on-exec pipe whose read end the master holds) and the child
    /// exits 127, the shell's "cannot execute".
    ///
    /// Only async-signal-safe calls, no allocation: the image was built
    /// before the fork.
    ///
    /// # Safety
    ///
    /// Only in a freshly forked child that has not yet touched any state
    /// shared with its parent's other descriptors: it renumbers raw
    /// descriptors (`listeners`, `errors`, which must be open) under any
    /// owner that may hold them, and never returns.
    pub unsafe fn exec(&mut self, listeners: &[RawFd], errors: RawFd) -> ! {
        use nix::libc;
        let n = listeners.len().min(MAX_LISTENERS);
        // SAFETY (whole block): plain system calls on integers and on
        // buffers this struct owns; each is async-signal-safe
        // (signal-safety(7)); the pointer arrays are NUL-terminated and
        // point into buffers that live as long as `self`.
        unsafe {
            if !self.keep_mask {
                let mut empty: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut empty);
                libc::sigprocmask(
                    libc::SIG_SETMASK,
                    &empty,
                    std::ptr::null_mut(),
                );
            }
            reset_all_dispositions();
            if self.pdeathsig {
                libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                );
            }
            if let Some(cwd) = &self.cwd
                && libc::chdir(cwd.as_ptr()) < 0
            {
                fail(errors, ExecStage::Chdir);
            }

            // Renumber in two phases so overlapping source and target
            // ranges cannot clobber each other, and so no target is a
            // no-op dup2(fd, fd) that would leave FD_CLOEXEC set.
            let mut base = 3 + n as c_int;
            for &fd in &listeners[..n] {
                base = base.max(fd + 1);
            }
            base = base.max(errors + 1);
            let errors = libc::fcntl(errors, libc::F_DUPFD_CLOEXEC, base);
            let mut tmp = [0 as c_int; MAX_LISTENERS];
            for (i, &fd) in listeners[..n].iter().enumerate() {
                tmp[i] = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, base);
            }
            for (i, &t) in tmp[..n].iter().enumerate() {
                if libc::dup2(t, 3 + i as c_int) < 0 {
                    fail(errors, ExecStage::Descriptors);
                }
            }
            // Everything else (the temporaries included) goes at exec.
            libc::syscall(
                libc::SYS_close_range,
                (3 + n) as libc::c_uint,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC as libc::c_uint,
            );

            let pid = libc::getpid() as u64;
            let (digits, len) = decimal(pid);
            for &room in &self.pid_digits {
                // Room for PID_DIGITS digits and the NUL (see new()).
                std::ptr::copy_nonoverlapping(digits.as_ptr(), room, len);
            }

            libc::execve(
                self.path.as_ptr(),
                self.argv_ptrs.as_ptr(),
                self.env_ptrs.as_ptr(),
            );
            fail(errors, ExecStage::Execve)
        }
    }
}

/// The most listeners handed to an exec worker (the renumbering uses a
/// fixed array so the child allocates nothing).
pub const MAX_LISTENERS: usize = 64;

/// Ends this process the way `sig` ended another (the keeper mirrors
/// its app's death so the master sees the real cause), without a core
/// dump of the keeper itself.
pub fn die_like(sig: Signal) -> ! {
    use nix::sys::resource::{Resource, setrlimit};
    let _ = setrlimit(Resource::RLIMIT_CORE, 0, 0);
    let _ = default_disposition(sig);
    let mut set = nix::sys::signal::SigSet::empty();
    set.add(sig);
    let _ = set.thread_unblock();
    let _ = signal::raise(sig);
    exit_now(128 + sig as i32)
}

/// The step of [`ExecImage::exec`] that failed, reported with its errno
/// on the error pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecStage {
    /// chdir(2) to the recorded working directory (a new master).
    Chdir = 1,
    /// Renumbering the listeners.
    Descriptors = 2,
    /// execve(2) itself.
    Execve = 3,
}

/// What a failed [`ExecImage::exec`] left on its error pipe: the step and
/// the errno. `None` when the exec succeeded (the pipe closed empty).
pub fn exec_failure(errors: BorrowedFd<'_>) -> Option<(ExecStage, Errno)> {
    let mut buf = [0u8; 5];
    match nix::unistd::read(errors, &mut buf) {
        Ok(5) => {
            let stage = match buf[0] {
                1 => ExecStage::Chdir,
                2 => ExecStage::Descriptors,
                _ => ExecStage::Execve,
            };
            let errno = i32::from_ne_bytes([buf[1], buf[2], buf[3], buf[4]]);
            Some((stage, Errno::from_raw(errno)))
        }
        _ => None,
    }
}

/// Reports the stage and errno on the error pipe and exits 127 (the
/// shell's "cannot execute" status).
fn fail(errors: RawFd, stage: ExecStage) -> ! {
    let errno = Errno::last_raw().to_ne_bytes();
    let msg = [stage as u8, errno[0], errno[1], errno[2], errno[3]];
    // SAFETY: write and _exit are async-signal-safe; `msg` is a local
    // buffer of the length passed (one write: a pipe takes up to
    // PIPE_BUF bytes atomically).
    unsafe {
        nix::libc::write(errors, msg.as_ptr().cast(), msg.len());
        nix::libc::_exit(127)
    }
}

/// `n` in decimal, NUL-terminated, in a fixed buffer, without
/// allocating; with the length including the NUL.
fn decimal(mut n: u64) -> ([u8; PID_DIGITS + 1], usize) {
    let mut tmp = [0u8; PID_DIGITS];
    let mut len = 0;
    loop {
        tmp[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 || len == tmp.len() {
            break;
        }
    }
    let mut out = [0u8; PID_DIGITS + 1];
    for i in 0..len {
        out[i] = tmp[len - 1 - i];
    }
    (out, len + 1)
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
fn pwrite_nowait(raw: RawFd, bytes: &[u8]) -> nix::Result<usize> {
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

fn poll_then_write(fd: BorrowedFd<'_>, bytes: &[u8]) -> nix::Result<usize> {
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
fn without_sigpipe(
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

// The image holds raw pointers into its own buffers; it is built and
// used in one thread only (the master's, then the child's copy).

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_is_nul_terminated() {
        let (buf, len) = decimal(40213);
        assert_eq!(&buf[..len], b"40213\0");
        let (buf, len) = decimal(0);
        assert_eq!(&buf[..len], b"0\0");
    }

    #[test]
    fn image_ends_env_with_listen_pid() {
        let img = ExecImage::new(
            CString::new("/bin/true").unwrap(),
            vec![CString::new("true").unwrap()],
            vec![CString::new("A=1").unwrap()],
            &["LISTEN_PID", "WATCHDOG_PID"],
        );
        assert_eq!(img.env_ptrs.len(), 4);
        assert!(img.env_ptrs[3].is_null());
        assert!(img._pid_vars[0].starts_with(b"LISTEN_PID="));
        assert_eq!(img.pid_digits.len(), 2);
    }
}
