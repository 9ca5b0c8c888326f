//! The allocation-free path from fork to execve for exec workers, and how its
//! failures come back through the errno pipe.

use super::*;

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

pub(super) const PID_DIGITS: usize = 20;

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
pub(super) fn fail(errors: RawFd, stage: ExecStage) -> ! {
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
pub(super) fn decimal(mut n: u64) -> ([u8; PID_DIGITS + 1], usize) {
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
