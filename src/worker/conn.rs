//! One connection: read the request with a deadline, answer it, and the test
//! seams of debug builds.

use super::*;

/// Serves one connection; errors are the client's problem, logged at
/// debug.
pub(super) fn handle(
    conn: OwnedFd,
    info: &Info,
    p: &Params,
    buf: &mut [u8; http::MAX_HEAD],
) {
    let mut conn = Conn::new(conn, p.client_timeout);
    let r = match http::read_request(&mut conn, buf) {
        Ok(ReadOutcome::Request(req)) => {
            if let Some(r) = test_hook(&mut conn, &req, info, p) {
                r
            } else {
                let body = http::info_body(info);
                http::write_response(
                    &mut conn,
                    200,
                    "application/json",
                    body.as_bytes(),
                    req.head_only,
                )
            }
        }
        Ok(ReadOutcome::Rejected(r)) => {
            http::write_rejection(&mut conn, r).map(|()| conn.linger())
        }
        Ok(ReadOutcome::Closed) => Ok(()),
        Err(e) => Err(e),
    };
    if let Err(e) = r {
        log::debug!("connection: {e}");
    }
}

/// The test seams, when this build has them and they are switched on.
#[cfg(any(debug_assertions, feature = "test-hooks"))]
pub(super) fn test_hook(
    conn: &mut Conn,
    req: &http::Request,
    info: &Info,
    p: &Params,
) -> Option<io::Result<()>> {
    (p.hooks && req.path.starts_with("/_test/")).then(|| hook(conn, req, info))
}

/// A release build without the `test-hooks` feature has no test seams:
/// `/_test/` paths are ordinary paths whatever the environment says.
#[cfg(not(any(debug_assertions, feature = "test-hooks")))]
pub(super) fn test_hook(
    _: &mut Conn,
    _: &http::Request,
    _: &Info,
    p: &Params,
) -> Option<io::Result<()>> {
    if p.hooks {
        log::debug!(
            "UPGRADER_TEST_HOOKS ignored: this build has no test hooks"
        );
    }
    None
}

/// Test seams, compiled only into debug builds and builds with the
/// `test-hooks` feature, and reachable only with `UPGRADER_TEST_HOOKS=1`
/// in the master's environment (the integration tests set it):
/// * `/_test/slow?ms=N`: sends the head, waits N ms, sends the body (a
///   request verifiably in flight);
/// * `/_test/hang`: stops serving and beating; `/_test/hang?ignore`
///   also blocks every signal, so only SIGKILL ends it;
/// * `/_test/exit?code=N`: exits with status N (a crash).
#[cfg(any(debug_assertions, feature = "test-hooks"))]
pub(super) fn hook(
    conn: &mut Conn,
    req: &http::Request,
    info: &Info,
) -> io::Result<()> {
    let (path, query) = req.path.split_once('?').unwrap_or((&req.path, ""));
    let num = |key: &str| -> u64 {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    match path {
        "/_test/slow" => {
            let body = http::info_body(info);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            conn.write_all(head.as_bytes())?;
            std::thread::sleep(Duration::from_millis(num("ms")));
            conn.write_all(body.as_bytes())
        }
        "/_test/hang" => {
            if query.contains("ignore") {
                let _ = nix::sys::signal::SigSet::all().thread_block();
            }
            log::warn!("test hook: hanging");
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        "/_test/exit" => {
            log::warn!("test hook: exiting {}", num("code"));
            sys::exit_now(num("code") as i32)
        }
        _ => http::write_response(
            conn,
            200,
            "text/plain",
            b"no such hook\n",
            false,
        ),
    }
}

/// An accepted connection, non-blocking: read and send go straight to
/// the kernel, and only when one would block does the worker wait in
/// poll, up to the connection's deadline. The request is nearly always
/// there already and the response fits the socket buffer, so the common
/// case costs no timeout syscalls at all. Sends use MSG_NOSIGNAL so a
/// vanished client is an EPIPE, not a SIGPIPE.
pub(super) struct Conn {
    fd: OwnedFd,
    deadline: Instant,
}

impl Conn {
    pub(super) fn new(fd: OwnedFd, timeout: Duration) -> Conn {
        Conn {
            fd,
            deadline: Instant::now() + timeout,
        }
    }

    /// Waits until the socket is ready for `what`, or the deadline.
    pub(super) fn wait(&self, what: PollFlags) -> io::Result<()> {
        match sys::wait_for(self.fd.as_fd(), what, self.deadline) {
            Ok(true) => Ok(()),
            Ok(false) => Err(io::ErrorKind::TimedOut.into()),
            Err(e) => Err(e.into()),
        }
    }

    /// After a rejection the client may still be sending: closing with
    /// unread input makes the kernel send RST, and the client may lose
    /// our answer. So half-close, then drain briefly (bounded in bytes
    /// and time), as gunicorn's close_graceful and nginx's lingering
    /// close do.
    pub(super) fn linger(&mut self) {
        use std::os::fd::AsRawFd;
        let _ = socket::shutdown(self.fd.as_raw_fd(), socket::Shutdown::Write);
        self.deadline = Instant::now() + Duration::from_millis(200);
        let mut sink = [0u8; 4096];
        for _ in 0..64 {
            match self.read(&mut sink) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match nix::unistd::read(&self.fd, buf) {
                Err(Errno::EAGAIN) => self.wait(PollFlags::POLLIN)?,
                Err(Errno::EINTR) => {}
                r => return r.map_err(io::Error::from),
            }
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        loop {
            match socket::send(
                self.fd.as_raw_fd(),
                buf,
                MsgFlags::MSG_NOSIGNAL,
            ) {
                Err(Errno::EAGAIN) => self.wait(PollFlags::POLLOUT)?,
                Err(Errno::EINTR) => {}
                r => return r.map_err(io::Error::from),
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
