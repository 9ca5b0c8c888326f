use std::time::Duration;

use crate::harness::*;

#[test]
fn usage_errors_exit_2_with_one_line() {
    let dir = TempDir::new();
    for (args, needle) in [
        (&["--bind", "127.0.0.1:99999"][..], "99999"),
        (&["--workers", "0"][..], "--workers 0"),
        (&["--timeout-signal", "NOPE"][..], "NOPE"),
        (&["--ready", "later"][..], "later"),
        (
            &["--config", "/nonexistent/u.toml"][..],
            "/nonexistent/u.toml",
        ),
    ] {
        let (st, out) = run_to_end(args, &dir.0);
        assert_eq!(st.code(), Some(2), "{args:?}: {out}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: one line expected:\n{out}");
        assert!(lines[0].starts_with("upgrader: error: "), "{out}");
        assert!(lines[0].contains(needle), "{args:?}: {out}");
    }
    let (st, out) = run_to_end(&["--no-such-flag"], &dir.0);
    assert_eq!(st.code(), Some(2), "{out}");
}

#[test]
fn bad_config_file_names_file_and_line() {
    let dir = TempDir::new();
    let cfg = dir.path("u.toml");
    std::fs::write(&cfg, "workers = 2\ntimeout = \"soon\"\n").unwrap();
    let (st, out) = run_to_end(&["-c", cfg.to_str().unwrap()], &dir.0);
    assert_eq!(st.code(), Some(2), "{out}");
    assert!(out.contains("u.toml") && out.contains("line 2"), "{out}");
    assert_eq!(out.lines().count(), 1, "{out}");
}

#[test]
fn check_config_validates_and_exits() {
    let dir = TempDir::new();
    let cfg = dir.path("u.toml");
    std::fs::write(&cfg, "workers = 2\nbind = [\"127.0.0.1:0\"]\n").unwrap();
    let (st, out) =
        run_to_end(&["--check-config", "-c", cfg.to_str().unwrap()], &dir.0);
    assert_eq!(st.code(), Some(0), "{out}");
    std::fs::write(&cfg, "workers = 0\n").unwrap();
    let (st, out) =
        run_to_end(&["--check-config", "-c", cfg.to_str().unwrap()], &dir.0);
    assert_eq!(st.code(), Some(2), "{out}");
}

#[test]
fn bind_failure_exits_1_naming_address_and_reason() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    let dir = TempDir::new();
    let (st, out) = run_to_end(&["--bind", &addr], &dir.0);
    assert_eq!(st.code(), Some(1), "{out}");
    let line = out.lines().last().unwrap();
    assert_eq!(
        line,
        format!("upgrader: error: bind {addr}: Address already in use")
    );
}

#[test]
fn pidfile_written_when_serving_and_removed_at_exit() {
    let b = upgrader().args(["--bind", "127.0.0.1:0", "--pid", "u.pid"]);
    let pidfile = b.dir().join("u.pid");
    let mut u = b.start();
    u.ready();
    let text = std::fs::read_to_string(&pidfile).expect("pidfile after READY");
    assert_eq!(text.trim(), u.pid.to_string());

    // A second master with the same pidfile is refused.
    let (st, out) = run_to_end(
        &["--bind", "127.0.0.1:0", "--pid", pidfile.to_str().unwrap()],
        &u.dir.0,
    );
    assert_eq!(st.code(), Some(1), "{out}");
    assert!(out.contains("already running"), "{out}");
    assert!(out.contains(&u.pid.to_string()), "{out}");

    u.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(u.wait_exit(LONG).code(), Some(0));
    assert!(!pidfile.exists(), "pidfile must be removed at exit");
}

#[test]
fn stale_pidfile_does_not_block_start() {
    let b = upgrader().args(["--bind", "127.0.0.1:0", "--pid", "u.pid"]);
    // A pid that is surely not an upgrader master: our own test process.
    std::fs::write(b.dir().join("u.pid"), format!("{}\n", std::process::id()))
        .unwrap();
    let mut u = b.start();
    u.ready();
    u.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(u.wait_exit(LONG).code(), Some(0));
}

#[test]
fn help_and_version() {
    let dir = TempDir::new();
    let (st, out) = run_to_end(&["--version"], &dir.0);
    assert_eq!(st.code(), Some(0));
    assert!(out.contains(env!("CARGO_PKG_VERSION")), "{out}");
    let (st, out) = run_to_end(&["--help"], &dir.0);
    assert_eq!(st.code(), Some(0));
    assert!(out.contains("--graceful-timeout"), "{out}");
    let _ = Duration::ZERO;
}
