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

#[test]
fn a_stale_unix_socket_is_replaced_a_live_one_is_not() {
    let dir = TempDir::new();
    let path = dir.path("s.sock");
    // A socket file nobody listens on (a master that died).
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let mut u = upgrader()
        .arg(format!("--bind=unix:{}", path.display()))
        .start();
    u.ready();
    get_ok(&format!("unix:{}", path.display()), "/");
    // While it serves, a second master must not steal the path.
    let (st, out) =
        run_to_end(&[&format!("--bind=unix:{}", path.display())], &dir.0);
    assert_eq!(st.code(), Some(1), "{out}");
    assert!(
        out.contains("Address already in use (a server is listening)"),
        "{out}"
    );
}

#[test]
fn workers_get_user_umask_and_directory() {
    let mut u = upgrader()
        .args(["--bind", "127.0.0.1:0", "--umask", "027", "--chdir", "/tmp"])
        .args(if nix::unistd::geteuid().is_root() {
            vec!["--user", "nobody"]
        } else {
            vec![]
        })
        .start();
    u.ready();
    let w = u.spawned()[0];
    let status = std::fs::read_to_string(format!("/proc/{w}/status")).unwrap();
    assert!(status.contains("Umask:\t0027"), "{status}");
    assert_eq!(
        std::fs::read_link(format!("/proc/{w}/cwd")).unwrap(),
        std::path::Path::new("/tmp")
    );
    if nix::unistd::geteuid().is_root() {
        let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
        let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        assert!(
            uid_line
                .split_whitespace()
                .skip(1)
                .all(|u| u == nobody.uid.to_string()),
            "{uid_line}"
        );
        // Dropped privileges, and still serving (and still reachable by
        // the master's signals).
        get_ok(&u.addr(0), "/");
    }
    u.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(u.wait_exit(LONG).code(), Some(0));
}

#[test]
fn under_journald_lines_carry_no_timestamp() {
    let mut u = upgrader()
        .args(["--bind", "127.0.0.1:0"])
        .env("JOURNAL_STREAM", "8:12345")
        .start();
    u.ready();
    let text = u.log.text();
    let first = text.lines().next().unwrap();
    assert!(first.starts_with("info  master["), "{first}");
}

#[test]
fn the_master_does_not_grow_with_reloads_and_respawns() {
    let mut u = upgrader()
        .args(["--bind", "127.0.0.1:0", "-w", "2"])
        .start();
    u.ready();
    let rss = |pid: nix::unistd::Pid| -> u64 {
        let s =
            std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap()
    };
    let cycle = |u: &Upgrader, n: u64| {
        for generation in n..n + 10 {
            u.signal(nix::sys::signal::Signal::SIGHUP);
            u.log.wait_from(
                0,
                &[&format!("generation {generation} serving")],
                LONG,
            );
        }
    };
    // Warm up (allocator pools, first-use growth), then measure.
    cycle(&u, 2);
    let before = rss(u.pid);
    cycle(&u, 12);
    cycle(&u, 22);
    let after = rss(u.pid);
    assert!(
        after <= before + 64,
        "master RSS grew from {before} kB to {after} kB over 20 reloads (40 workers)"
    );
}

#[test]
fn socket_mode_and_owner_apply_to_unix_sockets() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let b = upgrader();
    let path = b.dir().join("m.sock");
    let owner = if nix::unistd::geteuid().is_root() {
        "nobody"
    } else {
        ""
    };
    let mut u = b
        .arg(format!("--bind=unix:{}", path.display()))
        .args(["--socket-mode", "600"])
        .args(if owner.is_empty() {
            vec![]
        } else {
            vec!["--socket-owner", owner]
        })
        .start();
    u.ready();
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
    if !owner.is_empty() {
        let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
        assert_eq!(meta.uid(), nobody.uid.as_raw());
    }
    let dir = TempDir::new();
    let (st, out) = run_to_end(&["--socket-mode", "999"], &dir.0);
    assert_eq!(st.code(), Some(2), "{out}");
    assert!(out.contains("--socket-mode 999"), "{out}");
}

#[test]
fn an_unwritable_log_file_is_a_usage_error() {
    let dir = TempDir::new();
    let (st, out) =
        run_to_end(&["--log-file", "/nonexistent/dir/u.log"], &dir.0);
    assert_eq!(st.code(), Some(2), "{out}");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.contains("/nonexistent/dir/u.log"), "{out}");
}
