use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::harness::*;

fn example(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
        .display()
        .to_string()
}

/// Builds examples/rust-app once (its own Cargo project).
fn rust_app() -> String {
    static BUILT: OnceLock<String> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let manifest = example("rust-app/Cargo.toml");
            let cargo =
                std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let st = std::process::Command::new(cargo)
                .args([
                    "build",
                    "--release",
                    "--quiet",
                    "--manifest-path",
                    &manifest,
                ])
                .status()
                .expect("run cargo");
            assert!(st.success(), "building {manifest} failed");
            example("rust-app/target/release/upgrader-example-app")
        })
        .clone()
}

fn environ(pid: u64) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    raw.split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

#[test]
fn python_app_gets_exactly_the_systemd_handover() {
    let mut u = upgrader()
        .args(["-w", "3", "--ready", "notify", "--bind", "a=127.0.0.1:0"])
        .args([
            "--bind",
            "b=127.0.0.1:0",
            "--exec",
            &example("python_app.py"),
        ])
        // The master's own hand-off variables must not reach the app.
        .env("WATCHDOG_USEC", "5000000")
        .env("WATCHDOG_PID", "1")
        .env("LISTEN_PIDFDID", "77")
        .start();
    u.ready();
    let keepers = u.spawned();
    assert_eq!(keepers.len(), 3);
    for (i, addr) in [u.addr(0), u.addr(1)].iter().enumerate() {
        let r = get_ok(addr, "/");
        let j = r.json();
        let pid = j["pid"].as_u64().unwrap();
        assert_eq!(j["fd"].as_u64(), Some(3 + i as u64), "{j}");
        assert_eq!(j["listen_pid"].as_str(), Some(pid.to_string().as_str()));
        assert_eq!(j["listen_fds"].as_str(), Some("2"));
        assert_eq!(j["listen_fdnames"].as_str(), Some("a:b"));
        assert_eq!(j["open_fds"], serde_json::json!([0, 1, 2, 3, 4]), "{j}");
        assert_eq!(j["sigblk"].as_str(), Some("0000000000000000"), "{j}");
        // CPython itself ignores SIGPIPE and SIGXFSZ; nothing else may
        // be inherited.
        assert_eq!(j["sigign"].as_str(), Some("0000000001001000"), "{j}");
        let keys: Vec<&str> = j["env_keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap())
            .collect();
        assert_eq!(
            keys,
            [
                "LISTEN_FDNAMES",
                "LISTEN_FDS",
                "LISTEN_PID",
                "NOTIFY_SOCKET",
                "UPGRADER_GENERATION",
                "UPGRADER_WORKER_AGE"
            ]
        );
        let keeper = j["pgid"].as_u64().unwrap();
        assert!(keepers.contains(&Pid::from_raw(keeper as i32)), "{j}");
        assert_eq!(
            j["ppid"].as_u64(),
            Some(keeper),
            "the keeper is the parent"
        );
        let env = environ(pid);
        let notify = env
            .iter()
            .find(|v| v.starts_with("NOTIFY_SOCKET="))
            .unwrap();
        assert!(
            !notify.contains("systemd-notify.sock"),
            "systemd's NOTIFY_SOCKET leaked: {notify}"
        );
    }
    u.signal(Signal::SIGTERM);
    assert_eq!(u.wait_exit(LONG).code(), Some(0));
}

#[test]
fn rust_app_with_listenfd_and_sd_notify() {
    let app = rust_app();
    let mut u = upgrader()
        .args(["-w", "3", "--ready", "notify", "--bind", "web=127.0.0.1:0"])
        .args(["--bind", "unix:app.sock", "--exec", &app])
        .start();
    u.ready();
    for addr in [u.addr(0), u.addr(1)] {
        for _ in 0..5 {
            let j = get_ok(&addr, "/").json();
            let pid = j["pid"].as_u64().unwrap();
            assert_eq!(
                j["listen_pid"].as_str(),
                Some(pid.to_string().as_str())
            );
            assert_eq!(j["listen_fds"].as_str(), Some("2"));
            assert_eq!(j["listen_fdnames"].as_str(), Some("web:unknown"));
        }
    }
    let status = std::fs::read_to_string(format!(
        "/proc/{}/status",
        get_ok(&u.addr(0), "/").num("pid")
    ))
    .unwrap();
    assert!(status.contains("SigBlk:\t0000000000000000"), "{status}");
}

#[test]
fn ready_notify_app_that_never_says_ready_fails_to_boot() {
    let mut u = upgrader()
        .args([
            "--ready",
            "notify",
            "--boot-timeout",
            "0.5",
            "--bind",
            "127.0.0.1:0",
        ])
        .args(["--exec", &example("python_app.py")])
        .env("APP_NO_READY", "1")
        .start();
    assert_eq!(u.wait_exit(LONG).code(), Some(3));
    let text = u.log.text();
    assert!(text.contains("not ready after 500ms: SIGKILL"), "{text}");
    let last = text.lines().last().unwrap();
    assert!(last.contains("was not ready within 500ms"), "{last}");
}

#[test]
fn exec_app_that_stops_its_heartbeat_is_killed() {
    let mut u = upgrader()
        .args([
            "--ready",
            "notify",
            "--timeout",
            "0.6",
            "--kill-after",
            "0.3",
        ])
        .args(["--bind", "127.0.0.1:0", "--exec", &example("python_app.py")])
        .env("APP_STOP_WATCHDOG", "1")
        .start();
    u.ready();
    let keeper = u.spawned()[0];
    let (i, t_abrt, _) = u.log.wait_from(
        0,
        &[&format!("worker[{keeper}]"), "timed out", "SIGABRT"],
        LONG,
    );
    let (_, t_kill, _) =
        u.log
            .wait_from(i, &[&format!("worker[{keeper}]"), "SIGKILL"], LONG);
    let gap = t_kill - t_abrt;
    assert!(
        gap >= Duration::from_millis(280) && gap < Duration::from_millis(450),
        "SIGKILL {gap:?} after SIGABRT"
    );
    u.log.wait_from(
        i,
        &[&format!("worker[{keeper}]"), "killed by SIGKILL"],
        LONG,
    );
}

#[test]
fn the_failing_app_halts_with_3_and_its_reason() {
    let t = Instant::now();
    let mut u = upgrader()
        .args([
            "-w",
            "2",
            "--bind",
            "127.0.0.1:0",
            "--exec",
            &example("failing_app.py"),
        ])
        .start();
    let st = u.wait_exit(LONG);
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(st.code(), Some(3));
    let text = u.log.text();
    // The app's own line is relayed with the worker's role...
    assert!(
        text.contains("worker[")
            && text.contains(": failing_app: error: DATABASE_URL is not set"),
        "{text}"
    );
    // ...and ends the one-line reason.
    let last = text.lines().last().unwrap();
    assert!(
        last.starts_with("upgrader: error: workers failed to boot: worker["),
        "{last}"
    );
    assert!(
        last.ends_with(
            "last output: failing_app: error: DATABASE_URL is not set"
        ),
        "{last}"
    );
    assert_eq!(
        u.log.count(&["spawned worker["]),
        2,
        "never respawned:\n{text}"
    );
}

#[test]
fn programs_that_cannot_run_are_boot_failures() {
    let dir = TempDir::new();
    let script = dir.path("not-executable");
    std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    let bad_interp = dir.path("bad-interpreter");
    std::fs::write(&bad_interp, "#!/nonexistent/interp\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        &bad_interp,
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    for (prog, why) in [
        ("/nonexistent/app".to_string(), "No such file or directory"),
        ("./not-executable".to_string(), "Permission denied"),
        (
            "./bad-interpreter".to_string(),
            "its interpreter /nonexistent/interp (from its #! line) does not \
             exist",
        ),
        (
            "no-such-program-in-path".to_string(),
            "No such file or directory",
        ),
    ] {
        let (st, out) =
            run_to_end(&["--bind", "127.0.0.1:0", "--exec", &prog], &dir.0);
        assert_eq!(st.code(), Some(3), "{prog}: {out}");
        let last = out.lines().last().unwrap();
        assert_eq!(last, format!("upgrader: error: exec {prog}: {why}"));
        assert_eq!(out.matches("spawned worker[").count(), 1, "{out}");
    }
}

fn forking_app(kill_master: bool) {
    let mut u = upgrader()
        .args(["--ready", "notify", "--bind", "127.0.0.1:0"])
        .args([
            "--graceful-timeout",
            "2",
            "--exec",
            &example("python_app.py"),
        ])
        .env("APP_FORK_CHILD", "1")
        .start();
    u.ready();
    let a = u.addr(0);
    let j = get_ok(&a, "/").json();
    let app = Pid::from_raw(j["pid"].as_u64().unwrap() as i32);
    let child = Pid::from_raw(j["child_pid"].as_u64().unwrap() as i32);
    let keeper = u.spawned()[0];
    assert!(alive(child), "the app's child runs");
    if kill_master {
        u.signal(Signal::SIGKILL);
    } else {
        u.signal(Signal::SIGTERM);
    }
    u.wait_exit(LONG);
    wait_until(
        "app, its child and the keeper gone",
        Duration::from_secs(1),
        || !alive(app) && !alive(child) && !alive(keeper),
    );
    assert!(port_free(&a), "{}", who_holds(&a));
}

#[test]
fn an_app_that_forks_leaves_nothing_after_term() {
    forking_app(false);
}

#[test]
fn an_app_that_forks_leaves_nothing_after_kill_9_of_the_master() {
    forking_app(true);
}
