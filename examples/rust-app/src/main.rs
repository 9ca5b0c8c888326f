//! Example upgrader worker in Rust: serves every listening socket it is handed
//! the systemd socket-activation way (fds 3.., `LISTEN_FDS`, `LISTEN_PID`,
//! `LISTEN_FDNAMES`), reports readiness and heartbeats over `NOTIFY_SOCKET`.
//!
//! Under upgrader:
//!
//! ```text
//! upgrader --workers 3 --bind 127.0.0.1:8000 \
//!     --exec examples/rust-app/target/release/upgrader-example-app
//! ```
//!
//! Alone (the same app without a master, for benchmarks):
//!
//! ```text
//! systemd-socket-activate -l 127.0.0.1:8000 target/release/upgrader-example-app
//! ```
//!
//! Every request gets the same small JSON document (fixed per listener, so the
//! whole response is precomputed): the worker's pid, the `LISTEN_*` values it
//! received and the fd of the listener that accepted the connection.
//!
//! Limitation: SIGTERM keeps its default action, so the process dies at once
//! (killed by the signal) instead of finishing the request in hand; a
//! graceful drain needs a signal-handling crate, which this example avoids
//! on purpose (its only dependencies are `listenfd` and `sd-notify`).

use std::env;
use std::io::{self, Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::process;
use std::thread;
use std::time::Duration;

use listenfd::ListenFd;

const PROG: &str = "upgrader-example-app";
/// Largest request head read; a longer one is answered all the same.
const HEAD_LIMIT: usize = 8192;
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after `WouldBlock`: the shared listener is non-blocking and another
/// worker took the connection (std offers no poll(2) to wait on it).
const WOULD_BLOCK_PAUSE: Duration = Duration::from_millis(1);
/// `listenfd` numbers the passed fds from 3, as systemd does.
const FIRST_FD: usize = 3;

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// Boot failures exit 3: "cannot boot" to the master (gunicorn's convention).
fn cannot_boot(msg: &str) -> ! {
    eprintln!("{PROG}: error: {msg}");
    process::exit(3);
}

fn json_string(value: Option<&str>) -> String {
    let Some(value) = value else {
        return "null".to_owned();
    };
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The complete HTTP response for connections accepted on `fd`.
fn response_for(fd: usize, prefix: &str) -> &'static [u8] {
    let body = format!("{prefix},\"fd\":{fd}}}\n");
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    Box::leak(response.into_bytes().into_boxed_slice())
}

/// Reads up to the end of the request head (or `HEAD_LIMIT` bytes), then
/// writes the canned response.  The connection closes when dropped.
fn serve<S: Read + Write>(mut stream: S, response: &[u8]) -> io::Result<()> {
    let mut buf = [0u8; HEAD_LIMIT];
    let mut len = 0;
    loop {
        let n = stream.read(&mut buf[len..])?;
        if n == 0 {
            return Ok(()); // client gave up before finishing its request
        }
        let scan_from = len.saturating_sub(3);
        len += n;
        if len == HEAD_LIMIT
            || buf[scan_from..len].windows(4).any(|w| w == b"\r\n\r\n")
        {
            break;
        }
    }
    stream.write_all(response)
}

/// What to do after a failed accept().
fn accept_failed(fd: usize, err: &io::Error) {
    match err.kind() {
        // Another worker took the connection from the shared, non-blocking
        // listener: wait a little and look again.
        io::ErrorKind::WouldBlock => thread::sleep(WOULD_BLOCK_PAUSE),
        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted => {}
        _ => {
            // EMFILE and friends: do not spin.
            eprintln!("{PROG}: accept on fd {fd}: {err}");
            thread::sleep(Duration::from_millis(10));
        }
    }
}

fn accept_loop(fd: usize, listener: Listener, response: &'static [u8]) {
    match listener {
        Listener::Tcp(listener) => loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(false).is_ok()
                        && stream.set_read_timeout(Some(IO_TIMEOUT)).is_ok()
                        && stream.set_write_timeout(Some(IO_TIMEOUT)).is_ok()
                    {
                        let _ = serve(stream, response);
                    }
                }
                Err(err) => accept_failed(fd, &err),
            }
        },
        Listener::Unix(listener) => loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(false).is_ok()
                        && stream.set_read_timeout(Some(IO_TIMEOUT)).is_ok()
                        && stream.set_write_timeout(Some(IO_TIMEOUT)).is_ok()
                    {
                        let _ = serve(stream, response);
                    }
                }
                Err(err) => accept_failed(fd, &err),
            }
        },
    }
}

fn main() {
    // Read these for reporting first: ListenFd::from_env() removes
    // LISTEN_PID and LISTEN_FDS from the environment.
    let listen_pid = env::var("LISTEN_PID").ok();
    let listen_fds = env::var("LISTEN_FDS").ok();
    let listen_fdnames = env::var("LISTEN_FDNAMES").ok();
    let pid = process::id();

    if let Some(want) = listen_pid.as_deref()
        && !want.is_empty()
        && want != pid.to_string()
    {
        cannot_boot(&format!(
            "LISTEN_PID={want} is not my pid {pid}; these sockets are not meant for me"
        ));
    }

    let mut passed = ListenFd::from_env();
    if passed.len() == 0 {
        cannot_boot(&format!(
            "no listening sockets passed (LISTEN_FDS={})",
            listen_fds.as_deref().unwrap_or("unset")
        ));
    }

    let mut listeners = Vec::with_capacity(passed.len());
    for idx in 0..passed.len() {
        let fd = FIRST_FD + idx;
        let listener = match passed.take_tcp_listener(idx) {
            Ok(Some(l)) => Listener::Tcp(l),
            Err(tcp_err) if tcp_err.kind() == io::ErrorKind::InvalidInput => {
                match passed.take_unix_listener(idx) {
                    Ok(Some(l)) => Listener::Unix(l),
                    Ok(None) => {
                        cannot_boot(&format!("fd {fd} was already taken"))
                    }
                    Err(unix_err) => {
                        let (tcp, unix) =
                            (tcp_err.to_string(), unix_err.to_string());
                        if tcp == unix {
                            cannot_boot(&tcp)
                        }
                        cannot_boot(&format!("{tcp}; {unix}"))
                    }
                }
            }
            Ok(None) => cannot_boot(&format!("fd {fd} was already taken")),
            Err(err) => cannot_boot(&format!("fd {fd}: {err}")),
        };
        listeners.push((fd, listener));
    }

    let prefix = format!(
        "{{\"pid\":{pid},\"listen_pid\":{},\"listen_fds\":{},\"listen_fdnames\":{}",
        json_string(listen_pid.as_deref()),
        json_string(listen_fds.as_deref()),
        json_string(listen_fdnames.as_deref()),
    );
    let fds: Vec<usize> = listeners.iter().map(|(fd, _)| *fd).collect();
    eprintln!(
        "{PROG}: pid {pid} serving fds {fds:?} names {}",
        listen_fdnames.as_deref().unwrap_or("")
    );

    let mut threads = Vec::with_capacity(listeners.len());
    for (fd, listener) in listeners {
        let response = response_for(fd, &prefix);
        let spawned = thread::Builder::new()
            .name(format!("accept-fd{fd}"))
            .spawn(move || accept_loop(fd, listener, response));
        match spawned {
            Ok(handle) => threads.push(handle),
            Err(err) => cannot_boot(&format!("cannot start a thread: {err}")),
        }
    }

    if let Err(err) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        eprintln!("{PROG}: cannot send READY=1: {err}");
    }

    if let Some(timeout) = sd_notify::watchdog_enabled() {
        let interval = (timeout / 4).max(Duration::from_millis(1));
        loop {
            if let Err(err) =
                sd_notify::notify(&[sd_notify::NotifyState::Watchdog])
            {
                eprintln!("{PROG}: cannot send WATCHDOG=1: {err}");
            }
            thread::sleep(interval);
        }
    }

    for handle in threads {
        let _ = handle.join();
    }
}
