//! The hand-off under faults (issue 11): USR2 of a master that serves
//! an inherited `fd:N` or renamed systemd sockets, who unlinks a unix
//! socket after an upgrade, garbage in the variables a master trusts at
//! start, a backlog above the kernel's limit, and the stale-socket probe
//! against a listener whose backlog is full.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::harness::*;

/// Waits for the outcome of the USR2 sent after log line `from`: the
/// new master's pid once it is ready, or a panic with the failure line.
fn upgrade_outcome(u: &Upgrader, from: usize) -> Pid {
    let mut outcome = None;
    wait_until("the upgrade's outcome (ready or failed)", LONG, || {
        outcome = u
            .log
            .find_from(from, &["upgrade: new master", "ready in"])
            .map(|(_, _, l)| Ok(l))
            .or_else(|| {
                u.log
                    .find_from(from, &["upgrade failed"])
                    .map(|(_, _, l)| Err(l))
            });
        outcome.is_some()
    });
    match outcome.unwrap() {
        Ok(line) => line
            .split("new master ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|p| p.parse().ok())
            .map(Pid::from_raw)
            .unwrap_or_else(|| panic!("no pid in {line:?}")),
        Err(line) => {
            panic!("the upgrade failed: {line}\nlog:\n{}", u.log.text())
        }
    }
}

/// `pid` (not a child of the test) is gone within `LONG`.
fn wait_gone(pid: Pid) {
    wait_until(&format!("process {pid} to exit"), LONG, || !alive(pid));
}

/// A listening TCP socket moved to a descriptor at or above 20 (far from
/// 3.., where a new master's listeners land), close-on-exec in the test.
fn listener_at_20() -> (OwnedFd, String) {
    use nix::fcntl::{FcntlArg, fcntl};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap().to_string();
    let raw = fcntl(&l, FcntlArg::F_DUPFD_CLOEXEC(20)).unwrap();
    use std::os::fd::FromRawFd;
    // SAFETY: F_DUPFD_CLOEXEC just returned this descriptor; nothing else
    // owns it.
    (unsafe { OwnedFd::from_raw_fd(raw) }, a)
}

/// `--bind fd:N` with N the number the supervisor passed: after USR2
/// the socket sits at descriptor 3 in the new master, which exited
/// "bind fd:N: descriptor is not open" (or took whatever N was there).
#[test]
fn usr2_keeps_serving_an_inherited_fd_with_no_failed_request() {
    let (sock, a) = listener_at_20();
    let n = sock.as_raw_fd();
    let b = upgrader()
        .args(["--bind", &format!("fd:{n}"), "-w", "2", "-p", "u.pid"])
        .args(["--auto-retire", "off"])
        .pass_fd(n);
    let pidfile = b.dir().join("u.pid");
    let mut u = b.start();
    // The master holds the only copy from here on.
    drop(sock);
    u.ready();
    let load = Load::start(&a, 4, Duration::from_secs(30));
    wait_until("the load to get answers", LONG, || {
        get_ok(&a, "/").num("master_pid") == u.pid.as_raw() as u64
    });
    let from = u.log.len();
    u.signal(Signal::SIGUSR2);
    let new = upgrade_outcome(&u, from);
    assert_eq!(wait_pidfile(&pidfile.with_extension("pid.2"), None), new);
    u.signal(Signal::SIGTERM);
    assert_eq!(u.wait_exit(LONG).code(), Some(0));
    u.log
        .wait_from(from, &[&format!("master[{new}]: promoted")], LONG);
    assert_eq!(get_ok(&a, "/").num("master_pid"), new.as_raw() as u64);
    let report = load.finish();
    assert!(
        report.failures.is_empty(),
        "{} failed of {}: {:?}",
        report.failures.len(),
        report.ok + report.failures.len() as u64,
        &report.failures[..report.failures.len().min(5)]
    );
    let masters: Vec<u64> = report.served_by.iter().map(|(m, _)| *m).collect();
    assert!(
        masters.contains(&(u.pid.as_raw() as u64))
            && masters.contains(&(new.as_raw() as u64)),
        "both masters served: {:?}",
        report.served_by
    );
    kill(new, Signal::SIGTERM).unwrap();
    wait_gone(new);
}

/// Socket activation through the real systemd-socket-activate: two unix
/// sockets named `web` and `admin` (fds 3 and 4), served under the
/// names `binds` give them, with the Python app (which reports the
/// descriptor and names it got). Returns the master and the socket
/// addresses.
fn activated(binds: &[&str]) -> (Upgrader, String, String) {
    let b = upgrader();
    let web = b.dir().join("web.sock");
    let admin = b.dir().join("admin.sock");
    let notify = b.dir().join("systemd-notify.sock");
    let mut b = b
        .program(socket_activate())
        .args(["-l", web.to_str().unwrap(), "-l", admin.to_str().unwrap()])
        .args(["--fdname=web:admin", "-E"])
        .arg(format!("NOTIFY_SOCKET={}", notify.display()))
        .args(["-E", "UPGRADER_TEST_HOOKS=1", BIN]);
    for spec in binds {
        b = b.args(["--bind", spec]);
    }
    let mut u = b.args(["--exec", PYTHON_APP]).start();
    wait_until("the sockets to exist", LONG, || {
        web.exists() && admin.exists()
    });
    let w = format!("unix:{}", web.display());
    let a = format!("unix:{}", admin.display());
    // The first connection makes systemd-socket-activate exec upgrader.
    get_ok(&w, "/");
    u.ready();
    (u, w, a)
}

/// The name the app got for the socket at `addr`.
fn name_served_at(addr: &str) -> String {
    let j = get_ok(addr, "/").json();
    let fd = j["fd"].as_u64().unwrap_or_else(|| panic!("no fd: {j}"));
    let names = j["listen_fdnames"].as_str().unwrap().to_string();
    names
        .split(':')
        .nth(fd as usize - 3)
        .unwrap_or_else(|| panic!("fd {fd} beyond {names}"))
        .to_string()
}

/// USR2 under socket activation (auto-retire: NOTIFY_SOCKET is set);
/// returns the new master once the old one has exited.
fn usr2_and_retire(u: &mut Upgrader) -> Pid {
    let from = u.log.len();
    u.signal(Signal::SIGUSR2);
    let new = upgrade_outcome(u, from);
    assert_eq!(u.wait_exit(LONG).code(), Some(0), "{}", u.log.text());
    u.log
        .wait_from(from, &[&format!("master[{new}]: promoted")], LONG);
    new
}

/// `--bind NAME=systemd:OTHER`: the new master looked for a passed
/// socket named OTHER among sockets the old one had renamed NAME, and
/// failed "no such socket was passed"; with the names swapped it
/// silently served each socket under the other's name.
#[test]
fn usr2_keeps_renamed_systemd_sockets_under_their_names() {
    let (mut u, web, admin) =
        activated(&["admin=systemd:web", "web=systemd:admin"]);
    assert_eq!(name_served_at(&web), "admin");
    assert_eq!(name_served_at(&admin), "web");
    let new = usr2_and_retire(&mut u);
    assert_eq!(name_served_at(&web), "admin", "{}", u.log.text());
    assert_eq!(name_served_at(&admin), "web");
    // master.2 until promoted: the pid is what names it.
    let listening = |what: &str| {
        u.log
            .find_from(0, &[&format!("[{new}]: listening on unix:"), what])
            .is_some()
    };
    assert!(
        listening("web.sock (admin)") && listening("admin.sock (web)"),
        "{}",
        u.log.text()
    );
    kill(new, Signal::SIGTERM).unwrap();
    wait_gone(new);
}

#[test]
fn usr2_keeps_a_systemd_socket_bound_under_another_name() {
    let (mut u, web, admin) = activated(&["front=systemd:web"]);
    assert_eq!(name_served_at(&web), "front");
    let new = usr2_and_retire(&mut u);
    assert_eq!(name_served_at(&web), "front", "{}", u.log.text());
    // Not asked for: not served, by either master.
    assert!(get(&admin, "/").is_err());
    kill(new, Signal::SIGTERM).unwrap();
    wait_gone(new);
    // Passed by systemd: never unlinked by a master.
    for s in [&web, &admin] {
        assert!(Path::new(s.strip_prefix("unix:").unwrap()).exists(), "{s}");
    }
}

/// The master that bound a unix socket owns its file; after USR2 the new
/// master does: the old one must not unlink it when it retires, and the
/// last one must when it stops (it never did: adopted as "inherited").
#[test]
fn the_last_master_unlinks_the_unix_socket_after_an_upgrade() {
    let b = upgrader();
    let path = b.dir().join("app.sock");
    let pidfile = b.dir().join("u.pid");
    let a = format!("unix:{}", path.display());
    let mut u = b
        .args(["--bind", &a, "-p", "u.pid", "--auto-retire", "off"])
        .start();
    u.ready();
    let from = u.log.len();
    u.signal(Signal::SIGUSR2);
    let new = upgrade_outcome(&u, from);
    assert_eq!(wait_pidfile(&pidfile.with_extension("pid.2"), None), new);
    u.signal(Signal::SIGTERM);
    assert_eq!(u.wait_exit(LONG).code(), Some(0));
    assert!(path.exists(), "the retired master unlinked {a}");
    u.log
        .wait_from(from, &[&format!("master[{new}]: promoted")], LONG);
    assert_eq!(get_ok(&a, "/").num("master_pid"), new.as_raw() as u64);
    kill(new, Signal::SIGTERM).unwrap();
    wait_gone(new);
    assert!(!path.exists(), "{a} left behind by the last master");
}

/// Runs `upgrader ARGS` with `LISTEN_PID` set to its own pid (a shell
/// that execs it in place) and the other variables given.
fn with_our_listen_pid(vars: &str, args: &[&str]) -> Upgrader {
    upgrader()
        .program("sh")
        .args([
            "-c",
            &format!("LISTEN_PID=$$ {vars} exec \"$0\" \"$@\""),
            BIN,
        ])
        .args(args.iter().copied())
        .start()
}

#[test]
fn garbage_listen_fds_for_this_process_exits_2_naming_it() {
    for (n, why) in [
        ("abc", "LISTEN_FDS=abc: not a number of descriptors"),
        ("-1", "LISTEN_FDS=-1: not a number of descriptors"),
        ("1e11", "LISTEN_FDS=1e11: not a number of descriptors"),
        ("999", "LISTEN_FDS=999: descriptor 3 is not open"),
    ] {
        let mut u = with_our_listen_pid(
            &format!("LISTEN_FDS={n}"),
            &["--bind", "127.0.0.1:0"],
        );
        let st = u.wait_exit(LONG);
        let text = u.log.text();
        assert_eq!(st.code(), Some(2), "LISTEN_FDS={n}: {text}");
        assert_eq!(text.lines().count(), 1, "one line: {text}");
        assert!(
            text.starts_with(&format!("upgrader: error: {why}")),
            "{text}"
        );
        assert!(!text.contains("os error"), "{text}");
    }
}

#[test]
fn version_and_help_never_read_the_environment() {
    // A count that, built before it is checked, is 10^11 entries.
    for vars in ["LISTEN_FDS=1e11", "LISTEN_FDS=100000000000"] {
        for (arg, want) in [("--version", "upgrader "), ("--help", "Usage")] {
            let mut u = with_our_listen_pid(vars, &[arg]);
            let st = u.wait_exit(LONG);
            let text = u.log.text();
            assert_eq!(st.code(), Some(0), "{vars} {arg}: {text}");
            assert!(text.contains(want), "{vars} {arg}: {text}");
        }
    }
}

#[test]
fn listen_fds_for_another_process_is_ignored() {
    let mut u = upgrader()
        .args(["--bind", "127.0.0.1:0"])
        .env("LISTEN_PID", "1")
        .env("LISTEN_FDS", "abc")
        .start();
    u.ready();
    get_ok(&u.addr(0), "/");
}

/// `UPGRADER_PID` naming the test (the master's parent, as an old master
/// is) with a ready "pipe" that is not one: the master closed its own
/// stderr once "ready" (fd 2), or failed to start, or stayed an
/// unpromoted master.2 that never says READY=1. Now the hand-off is
/// ignored with one warning and the master is an ordinary one.
#[test]
fn a_ready_fd_that_is_not_a_pipe_above_stderr_is_ignored() {
    let me = std::process::id().to_string();
    for (setup, fd, why) in [
        ("", "2", "is standard input, output or error"),
        ("", "1", "is standard input, output or error"),
        ("", "0", "is standard input, output or error"),
        ("", "7", "is not open"),
        ("exec 7</dev/null;", "7", "is not a pipe"),
    ] {
        let mut u = upgrader()
            .program("sh")
            .args(["-c", &format!("{setup} exec \"$0\" \"$@\""), BIN])
            .args(["--bind", "127.0.0.1:0"])
            .env("UPGRADER_PID", &me)
            .env("UPGRADER_READY_FD", fd)
            .start();
        u.ready();
        let warn = format!(
            "ignored UPGRADER_PID, UPGRADER_READY_FD: UPGRADER_READY_FD={fd} \
             {why}"
        );
        assert_eq!(u.log.count(&[&warn]), 1, "{}", u.log.text());
        assert_eq!(u.log.count(&["master.2["]), 0, "{}", u.log.text());
        get_ok(&u.addr(0), "/");
        // Its stderr (the log) still works to the end.
        u.signal(Signal::SIGTERM);
        assert_eq!(u.wait_exit(LONG).code(), Some(0));
        assert_eq!(u.log.count(&["master exiting"]), 1, "{}", u.log.text());
    }
}

/// `WATCHDOG_USEC=1` made the master ping every half microsecond: a
/// busy loop. It is raised to 100 ms with a warning.
#[test]
fn a_tiny_watchdog_interval_does_not_spin_the_master() {
    let mut u = upgrader()
        .args(["--bind", "127.0.0.1:0"])
        .env("WATCHDOG_USEC", "1")
        .start();
    u.ready();
    assert_eq!(
        u.log
            .count(&["WATCHDOG_USEC=1: below 100 ms, taken as 100 ms"]),
        1,
        "{}",
        u.log.text()
    );
    let m = &u.systemd.messages;
    let (mut i, mut t, _) = m.wait_from(0, &["WATCHDOG=1"], LONG);
    for _ in 0..3 {
        let (j, t2, _) = m.wait_from(i + 1, &["WATCHDOG=1"], LONG);
        let gap = t2 - t;
        assert!(gap >= Duration::from_millis(40), "pings {gap:?} apart");
        (i, t) = (j, t2);
    }
}

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
