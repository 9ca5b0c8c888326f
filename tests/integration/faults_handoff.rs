//! The hand-off under faults (issue 11): USR2 of a master that serves
//! an inherited `fd:N` or renamed systemd sockets, who unlinks a unix
//! socket after an upgrade, garbage in the variables a master trusts at
//! start, a backlog above the kernel's limit, and the stale-socket probe
//! against a listener whose backlog is full.

use std::os::fd::AsRawFd;
use std::time::Instant;

use crate::harness::*;

/// `--backlog 100000` exited 1 "bind ...: Invalid argument" (nix refuses
/// more than 4096); the kernel caps a backlog at somaxconn itself.
#[test]
fn a_backlog_above_the_kernels_limit_is_capped_with_a_warning() {
    let mut u = upgrader()
        .args(["--bind", "127.0.0.1:0", "--backlog", "100000"])
        .start();
    u.ready();
    let cap = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .unwrap()
        .trim()
        .to_string();
    let warn = format!(
        "--backlog 100000: the kernel caps it at {cap} (net.core.somaxconn)"
    );
    assert_eq!(u.log.count(&[&warn]), 1, "{}", u.log.text());
    get_ok(&u.addr(0), "/");
}

/// The stale-socket probe connected with a blocking connect: against a
/// server whose backlog is full it waited, so the master hung at start.
#[test]
fn the_stale_socket_probe_does_not_block_on_a_full_backlog() {
    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, UnixAddr, bind, connect,
        listen, socket,
    };
    let dir = TempDir::new();
    let path = dir.path("busy.sock");
    let addr = UnixAddr::new(&path).unwrap();
    let server = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    bind(server.as_raw_fd(), &addr).unwrap();
    listen(&server, Backlog::new(0).unwrap()).unwrap();
    // Fill the backlog (never accepted) until a connect would block.
    let mut clients = Vec::new();
    let deadline = Instant::now() + LONG;
    loop {
        let c = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .unwrap();
        match connect(c.as_raw_fd(), &addr) {
            Ok(()) => clients.push(c),
            Err(nix::errno::Errno::EAGAIN) => break,
            Err(e) => panic!("filling the backlog: {e}"),
        }
        assert!(Instant::now() < deadline, "backlog never filled");
    }
    let bind_arg = format!("unix:{}", path.display());
    let (st, out) = run_to_end(&["--bind", &bind_arg], &dir.0);
    assert_eq!(st.code(), Some(1), "{out}");
    assert!(
        out.contains(&format!(
            "upgrader: error: bind {bind_arg}: Address already in use (a \
             server is listening)"
        )),
        "{out}"
    );
    assert!(path.exists(), "a live server's socket was removed");
    drop(clients);
}
