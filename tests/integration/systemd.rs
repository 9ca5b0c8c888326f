//! The systemd protocols with a fake systemd (a notify socket the test
//! owns) and the real `systemd-socket-activate`: the exact notify
//! sequence for start, HUP, USR2 and stop, and socket activation.

use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::harness::*;

/// The datagrams seen, in order, each with its lines joined by `|`.
fn seen(u: &Upgrader) -> Vec<String> {
    u.systemd
        .seen()
        .iter()
        .map(|m| m.replace('\n', "|"))
        .collect()
}

#[test]
fn notify_sequence_start_reload_stop() {
    let mut u = upgrader()
        .args(["--bind", "127.0.0.1:0", "-w", "2"])
        .start();
    u.ready();
    u.signal(Signal::SIGHUP);
    u.log.wait_from(0, &["generation 2 serving"], LONG);
    u.systemd.expect("generation 2", LONG);
    u.signal(Signal::SIGTERM);
    assert_eq!(u.wait_exit(LONG).code(), Some(0));
    let s = seen(&u);
    let kinds: Vec<&str> = s
        .iter()
        .map(|m| {
            if m.starts_with("READY=1") {
                "READY"
            } else if m.starts_with("RELOADING=1|MONOTONIC_USEC=") {
                "RELOADING"
            } else if m.starts_with("STOPPING=1") {
                "STOPPING"
            } else {
                "other"
            }
        })
        .collect();
    assert_eq!(kinds, ["READY", "RELOADING", "READY", "STOPPING"], "{s:?}");
    assert!(
        s[0].contains("STATUS=serving: generation 1, 2/2 workers ready"),
        "{s:?}"
    );
}

#[test]
fn usr2_hands_over_mainpid_then_barrier_and_never_stopping() {
    let b = upgrader();
    let pidfile = b.dir().join("u.pid");
    let mut u = b.args(["--bind", "127.0.0.1:0", "-p", "u.pid"]).start();
    u.ready();
    // Under systemd (NOTIFY_SOCKET) --auto-retire is on by default.
    u.signal(Signal::SIGUSR2);
    assert_eq!(u.wait_exit(LONG).code(), Some(0));
    let new = wait_pidfile(&pidfile, Some(u.pid));
    u.log
        .wait_from(0, &[&format!("master[{new}]: promoted")], LONG);
    u.systemd.expect(&format!("MAINPID={new}"), LONG);
    let s = seen(&u);
    let main = s
        .iter()
        .position(|m| m.starts_with(&format!("MAINPID={new}")))
        .unwrap();
    assert_eq!(
        s[main + 1],
        "BARRIER=1",
        "barrier right after MAINPID: {s:?}"
    );
    assert!(!s.iter().any(|m| m.contains("STOPPING=1")), "{s:?}");
    // The promoted master (now the main pid) reports itself ready.
    u.systemd.messages.wait_from(main + 2, &["READY=1"], LONG);
    // The new master said nothing before the hand-off.
    assert_eq!(
        s[..main].iter().filter(|m| m.contains("READY=1")).count(),
        1,
        "{s:?}"
    );
}

/// upgrader started by the real systemd-socket-activate, with two unix
/// sockets named `web` and `admin`: it binds them, passes LISTEN_FDS
/// with LISTEN_FDNAMES, and execs upgrader (`args`) in place on the
/// first connection, keeping only the variables given with -E.
fn activated(args: &[&str]) -> (Upgrader, PathBuf, PathBuf) {
    let b = upgrader();
    let web = b.dir().join("web.sock");
    let admin = b.dir().join("admin.sock");
    let notify = b.dir().join("systemd-notify.sock");
    let u = b
        .program(socket_activate())
        .args(["-l", web.to_str().unwrap(), "-l", admin.to_str().unwrap()])
        .args(["--fdname=web:admin", "-E"])
        .arg(format!("NOTIFY_SOCKET={}", notify.display()))
        .args(["-E", "UPGRADER_TEST_HOOKS=1", BIN])
        .args(args.iter().copied())
        .start();
    (u, web, admin)
}

#[test]
fn socket_activation_through_systemd_socket_activate() {
    let (mut u, web, admin) = activated(&["-w", "2", "--exec", PYTHON_APP]);
    let w = format!("unix:{}", web.display());
    let a = format!("unix:{}", admin.display());
    wait_until("the socket to exist", LONG, || web.exists());
    // The first connection triggers the exec and is served once up.
    let first = get_ok(&w, "/").json();
    assert_eq!(
        first["listen_fdnames"].as_str(),
        Some("web:admin"),
        "{first}"
    );
    assert_eq!(first["listen_fds"].as_str(), Some("2"));
    assert_eq!(get_ok(&a, "/").json()["fd"].as_u64(), Some(4));
    u.ready();
    assert!(
        u.log
            .find_from(0, &["listening on unix:", "web.sock (web)"])
            .is_some()
    );
    // A passed socket is never unlinked by the master.
    u.signal(Signal::SIGTERM);
    assert_eq!(u.wait_exit(LONG).code(), Some(0));
    assert!(web.exists() && admin.exists());
}

#[test]
fn systemd_name_selects_a_passed_socket() {
    let (mut u, _web, admin) = activated(&["--bind", "systemd:admin"]);
    wait_until("the socket to exist", LONG, || admin.exists());
    get_ok(&format!("unix:{}", admin.display()), "/");
    u.ready();
    let text = u.log.text();
    assert!(text.contains("admin.sock (admin)"), "{text}");
    assert!(text.contains("matches no --bind: not served"), "{text}");
}

#[test]
fn the_master_pings_systemds_watchdog() {
    let mut u = upgrader()
        .args(["--bind", "127.0.0.1:0", "--timeout", "0"])
        .env("WATCHDOG_USEC", "200000")
        .start();
    u.ready();
    // Every WATCHDOG_USEC/2: several within a second.
    let (i, t1, _) = u.systemd.messages.wait_from(0, &["WATCHDOG=1"], LONG);
    let (_, t2, _) =
        u.systemd.messages.wait_from(i + 1, &["WATCHDOG=1"], LONG);
    let gap = t2 - t1;
    assert!(
        gap >= Duration::from_millis(80) && gap <= Duration::from_millis(200),
        "{gap:?}"
    );
    // Not for us: no pings.
    let mut v = upgrader()
        .args(["--bind", "127.0.0.1:0", "--timeout", "0"])
        .env("WATCHDOG_USEC", "200000")
        .env("WATCHDOG_PID", "1")
        .start();
    v.ready();
    assert!(
        v.systemd
            .try_expect("WATCHDOG=1", Duration::from_millis(400))
            .is_none()
    );
}

#[test]
fn an_unpromoted_new_master_never_talks_to_systemd() {
    let b = upgrader();
    let pidfile = b.dir().join("u.pid");
    let mut u = b.args(MANUAL_UPGRADE).start();
    u.ready();
    u.signal(Signal::SIGUSR2);
    let new = wait_pidfile(&pidfile.with_extension("pid.2"), None);
    u.log
        .wait_from(0, &[&format!("new master {new} ready")], LONG);
    // Rollback: TERM to the new master. Under NotifyAccess=all its
    // STOPPING=1 would stop the whole unit.
    nix::sys::signal::kill(new, Signal::SIGTERM).unwrap();
    u.log.wait_from(
        0,
        &[&format!("new master {new} exited with status 0")],
        LONG,
    );
    let s = seen(&u);
    assert!(!s.iter().any(|m| m.contains("STOPPING=1")), "{s:?}");
    assert_eq!(
        s.iter().filter(|m| m.contains("READY=1")).count(),
        1,
        "{s:?}"
    );
}

/// `systemd:web` and `fd:3` are the same passed socket: adopting it for
/// both made two owners of one descriptor (closed twice, the second
/// close hitting whatever took the number next). The second is refused.
#[test]
fn a_passed_socket_bound_by_name_and_number_is_refused() {
    let (mut u, web, _admin) =
        activated(&["--bind", "systemd:web", "--bind", "fd:3"]);
    wait_until("the socket to exist", LONG, || web.exists());
    // The first connection makes systemd-socket-activate exec the master.
    let _trigger = std::os::unix::net::UnixStream::connect(&web);
    let st = u.wait_exit(LONG);
    let log = u.log.text();
    assert_eq!(st.code(), Some(1), "{log}");
    assert!(
        log.contains(
            "bind fd:3: that descriptor is already served by another --bind"
        ),
        "{log}"
    );
}
