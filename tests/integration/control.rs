//! `upgrader -s`: synchronous control with honest exit statuses.

use std::time::{Duration, Instant};

use crate::harness::*;

fn s(dir: &std::path::Path, args: &[&str]) -> (i32, String) {
    let mut v = vec!["-s"];
    v.extend_from_slice(args);
    let (st, out) = run_to_end(&v, dir);
    (st.code().unwrap_or(-1), out)
}

#[test]
fn status_reload_reopen_and_stop() {
    let mut u = upgrader()
        .args(["--bind", "127.0.0.1:0", "-w", "2", "-p", "u.pid"])
        .start();
    u.ready();
    let dir = u.dir.0.clone();
    let (rc, out) = s(&dir, &["status", "--pid", "u.pid"]);
    assert_eq!(rc, 0, "{out}");
    assert!(out.contains(&format!("master {} (master)", u.pid)), "{out}");
    assert!(out.contains("generation 1: 2/2 workers ready"), "{out}");
    assert_eq!(out.matches("  worker ").count(), 2, "{out}");
    let (rc, out) = s(&dir, &["status", "--pid", "u.pid", "--json"]);
    assert_eq!(rc, 0, "{out}");
    let j: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(j["pid"].as_i64(), Some(u.pid.as_raw() as i64));
    assert_eq!(j["workers"].as_array().unwrap().len(), 2);
    assert_eq!(j["workers"][0]["requests"].as_u64(), Some(0), "{j}");

    let (rc, out) = s(&dir, &["reload", "--pid", "u.pid"]);
    assert_eq!(
        (rc, out.trim()),
        (0, "reload complete: generation 2 serving")
    );
    // "Complete" means the old generation is gone, not just asked.
    assert_eq!(u.log.count(&["gen=1", "exited with status 0"]), 2);
    let (rc, out) = s(&dir, &["reopen", "--pid", "u.pid"]);
    assert_eq!(rc, 0, "{out}");

    // stop returns once the master is gone, after the request in hand.
    let a = u.addr(0);
    let (stream, head) = slow_in_flight(&a, 400);
    let t = Instant::now();
    let (rc, out) = s(&dir, &["stop", "--pid", "u.pid"]);
    assert_eq!(rc, 0, "{out}");
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    assert!(!alive(u.pid) || u.child.try_wait().unwrap().is_some());
    assert_eq!(finish(stream, head).status, 200);
    assert_eq!(u.wait_exit(LONG).code(), Some(0));
}

#[test]
fn upgrade_returns_once_promoted() {
    let mut u = upgrader().args(MANUAL_UPGRADE).start();
    u.ready();
    let dir = u.dir.0.clone();
    let (rc, out) = s(&dir, &["upgrade", "--pid", "u.pid"]);
    assert_eq!(rc, 0, "{out}");
    let new = wait_pidfile(&dir.join("u.pid"), Some(u.pid));
    assert_eq!(
        out.trim(),
        format!("upgrade complete: master {new} promoted")
    );
    assert!(!dir.join("u.pid.2").exists());
    assert_eq!(u.wait_exit(LONG).code(), Some(0));
    assert_eq!(
        get_ok(&u.addr(0), "/").num("master_pid"),
        new.as_raw() as u64
    );
    // Again, from the promoted master.
    let (rc, out) = s(&dir, &["upgrade", "--pid", "u.pid"]);
    assert_eq!(rc, 0, "{out}");
    let (rc, _) = s(&dir, &["quit", "--pid", "u.pid"]);
    assert_eq!(rc, 0);
}

#[test]
fn a_failed_upgrade_is_reported_at_once_with_its_reason() {
    let b = upgrader();
    let app = Breakable::new(b.dir(), "app: cannot load settings", 0.0, 3);
    let mut u = b
        .args(["--bind", "127.0.0.1:0", "-p", "u.pid", "--ready", "notify"])
        .args(app.exec.clone())
        .start();
    u.ready();
    let dir = u.dir.0.clone();
    app.break_it();
    let t = Instant::now();
    let (rc, out) = s(&dir, &["upgrade", "--pid", "u.pid", "--wait", "60"]);
    assert_eq!(rc, 1, "{out}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let line = out.trim();
    assert_eq!(line.lines().count(), 1, "{out}");
    assert!(
        line.starts_with("upgrader: error: upgrade failed: new master"),
        "{line}"
    );
    assert!(line.contains("exited with status 3"), "{line}");
    assert!(line.contains("workers failed to boot"), "{line}");
    assert!(line.contains("app: cannot load settings"), "{line}");
    // The old master is untouched and accepts the next upgrade.
    assert!(alive(u.pid));
    get_ok(&u.addr(0), "/");
}

#[test]
fn a_rejected_reload_fails_with_the_reason() {
    let b = upgrader();
    let cfg = b.dir().join("u.toml");
    std::fs::write(&cfg, "bind = [\"127.0.0.1:0\"]\npid = \"u.pid\"\n")
        .unwrap();
    let mut u = b.args(["-c", "u.toml"]).start();
    u.ready();
    let dir = u.dir.0.clone();
    std::fs::write(
        &cfg,
        "bind = [\"127.0.0.1:0\"]\npid = \"u.pid\"\nworkers = 0\n",
    )
    .unwrap();
    // -c FILE finds the pidfile through its pid key.
    // The client reads only the pidfile from it; the master rejects the
    // reload and says why.
    let (rc, out) = s(&dir, &["reload", "-c", "u.toml"]);
    assert_eq!(rc, 1, "{out}");
    assert!(out.contains("--workers 0"), "{out}");
    assert_eq!(out.lines().count(), 1, "{out}");
    std::fs::write(&cfg, "bind = [\"127.0.0.1:0\"]\npid = \"u.pid\"\n")
        .unwrap();
    let (rc, out) = s(&dir, &["reload", "-c", "u.toml"]);
    assert_eq!(rc, 0, "{out}");
}

#[test]
fn no_master_and_usage_errors() {
    let dir = TempDir::new();
    let (rc, out) = s(&dir.0, &["stop", "--pid", "nope.pid"]);
    assert_eq!(rc, 1, "{out}");
    assert!(out.contains("nope.pid"), "{out}");
    std::fs::write(dir.path("stale.pid"), format!("{}\n", std::process::id()))
        .unwrap();
    let (rc, out) = s(&dir.0, &["stop", "--pid", "stale.pid"]);
    assert_eq!(rc, 1, "{out}");
    assert!(out.contains("not a running upgrader"), "{out}");
    let (rc, out) = s(&dir.0, &["stop"]);
    assert_eq!(rc, 2, "{out}");
    let (rc, out) = s(&dir.0, &["restart", "--pid", "x"]);
    assert_eq!(rc, 2, "{out}");
}

#[test]
fn a_silent_control_client_is_dropped() {
    use std::io::Read;
    use std::os::linux::net::SocketAddrExt;
    let mut u = upgrader().args(["--bind", "127.0.0.1:0"]).start();
    u.ready();
    let name = format!("upgrader-control-{}", u.pid);
    let addr =
        std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .unwrap();
    let mut c = std::os::unix::net::UnixStream::connect_addr(&addr).unwrap();
    c.set_read_timeout(Some(LONG)).unwrap();
    let t = Instant::now();
    let mut answer = String::new();
    c.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, "error no request in time\n");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(7),
        "{took:?}"
    );
    // The master is fine and still answers.
    get_ok(&u.addr(0), "/");
}

/// SPEC 8: for exec workers `status` shows the app's pid first, the
/// keeper's beside it; the JSON has both.
#[test]
fn status_shows_an_exec_workers_app_and_keeper() {
    let mut u = upgrader()
        .args([
            "--bind",
            "127.0.0.1:0",
            "-p",
            "u.pid",
            "--ready",
            "delay:0.2",
        ])
        .args(["--exec", PYTHON_APP])
        .start();
    u.ready();
    let keeper = u.spawned()[0];
    let (_, _, line) = u.log.wait_from(0, &["python_app: pid"], LONG);
    let app: i32 = line
        .split("python_app: pid ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line:?}"));
    let dir = u.dir.0.clone();
    let (rc, out) = s(&dir, &["status", "--pid", "u.pid"]);
    assert_eq!(rc, 0, "{out}");
    assert!(
        out.contains(&format!("  worker {app} (keeper {keeper}) gen=1")),
        "{out}"
    );
    let (rc, out) = s(&dir, &["status", "--pid", "u.pid", "--json"]);
    assert_eq!(rc, 0, "{out}");
    let j: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(j["workers"][0]["app_pid"].as_i64(), Some(app as i64));
    assert_eq!(
        j["workers"][0]["pid"].as_i64(),
        Some(keeper.as_raw() as i64)
    );
}

/// A `-s reload` client that hangs up while it waits for the outcome
/// costs nothing: the reload completes, the master (which then writes
/// to a closed connection) lives on, and its control slot is free.
#[test]
fn a_client_that_hangs_up_while_waiting_leaves_the_reload_intact() {
    use std::io::Write;
    use std::os::linux::net::SocketAddrExt;
    let mut u = upgrader()
        .args(["--bind", "127.0.0.1:0", "-p", "u.pid"])
        .start();
    u.ready();
    let a = u.addr(0);
    // A request in hand keeps generation 1 draining, so the client is
    // still waiting when it goes.
    let (stream, head) = slow_in_flight(&a, 1500);
    let name = format!("upgrader-control-{}", u.pid);
    let addr =
        std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .unwrap();
    let mut c = std::os::unix::net::UnixStream::connect_addr(&addr).unwrap();
    let from = u.log.len();
    c.write_all(b"reload\n").unwrap();
    u.log
        .wait_from(from, &["reload ready in", "retiring generation 1"], LONG);
    drop(c);
    assert_eq!(finish(stream, head).num("generation"), 1);
    u.log
        .wait_from(from, &["reload complete: generation 2 serving"], LONG);
    assert!(alive(u.pid), "the master died answering a closed client");
    assert_eq!(get_ok(&a, "/").num("generation"), 2);
    let (rc, out) = s(&u.dir.0, &["status", "--pid", "u.pid"]);
    assert_eq!(rc, 0, "{out}");
    assert!(out.contains("generation 2: 1/1 workers ready"), "{out}");
}
