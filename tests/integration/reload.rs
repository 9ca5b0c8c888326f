//! HUP: reload with a new generation, bad configs, failing generations,
//! bind changes, coalescing.

use std::time::Duration;

use nix::sys::signal::Signal;

use crate::harness::*;

#[test]
fn hup_starts_a_new_generation_before_retiring_the_old() {
    let mut u = upgrader()
        .args(["--bind", "127.0.0.1:0", "-w", "2"])
        .start();
    u.ready();
    let a = u.addr(0);
    // A request held by generation 1 completes across the reload.
    let (s, head) = slow_in_flight(&a, 500);
    u.signal(Signal::SIGHUP);
    u.systemd.expect("RELOADING=1", LONG);
    let (i, _, _) = u.log.wait_from(0, &["generation 2 serving"], LONG);
    // Every gen-2 worker was ready before any gen-1 worker retired.
    let (first_retire, _, _) = u.log.wait_from(0, &["retiring worker["], LONG);
    assert!(first_retire > i, "{}", u.log.text());
    assert_eq!(u.log.count(&["gen=2", "ready in"]), 2);
    assert_eq!(finish(s, head).num("generation"), 1);
    wait_until("generation 2 answers", LONG, || {
        get_ok(&a, "/").num("generation") == 2
    });
    let m = u.systemd.expect("MONOTONIC_USEC=", LONG);
    assert!(m.contains("RELOADING=1"), "same datagram: {m}");
    // READY=1 again once the reload completed.
    let n = u
        .systemd
        .seen()
        .iter()
        .filter(|m| m.contains("READY=1"))
        .count();
    if n < 2 {
        u.systemd.expect("STATUS=serving: generation 2", LONG);
    }
}

#[test]
fn a_broken_config_is_rejected_and_nothing_changes() {
    let b = upgrader();
    let cfg = b.dir().join("u.toml");
    std::fs::write(&cfg, "workers = 2\nbind = [\"127.0.0.1:0\"]\n").unwrap();
    let mut u = b.args(["-c", "u.toml"]).start();
    u.ready();
    let a = u.addr(0);
    let load = Load::start(&a, 2, Duration::from_secs(20));
    std::fs::write(
        &cfg,
        "workers = 2\nbind = [\"127.0.0.1:0\"]\ntimeout = \"x\"\n",
    )
    .unwrap();
    u.signal(Signal::SIGHUP);
    let (_, _, line) = u.log.wait_from(0, &["reload rejected"], LONG);
    assert!(line.contains("u.toml") && line.contains("line 3"), "{line}");
    assert!(line.contains("generation 1 keeps serving"), "{line}");
    u.systemd.expect("STATUS=reload rejected", LONG);
    assert_eq!(get_ok(&a, "/").num("generation"), 1);
    let report = load.finish();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    // Fixed, the same HUP works.
    std::fs::write(&cfg, "workers = 3\nbind = [\"127.0.0.1:0\"]\n").unwrap();
    u.signal(Signal::SIGHUP);
    u.log.wait_from(0, &["generation 2 (3 workers)"], LONG);
    u.log.wait_from(0, &["generation 2 serving"], LONG);
}

#[test]
fn a_generation_that_cannot_boot_is_abandoned() {
    let b = upgrader();
    let app = Breakable::new(b.dir(), "app: bad release", 0.0, 1);
    let mut u = b
        .args(["--bind", "127.0.0.1:0", "-w", "2", "--ready", "notify"])
        .args(app.exec.clone())
        .start();
    u.ready();
    let a = u.addr(0);
    let load = Load::start(&a, 2, Duration::from_secs(20));
    app.break_it();
    u.signal(Signal::SIGHUP);
    let (_, _, line) =
        u.log.wait_from(0, &["reload to generation 2 failed"], LONG);
    assert!(line.contains("app: bad release"), "{line}");
    assert!(line.contains("generation 1 keeps serving"), "{line}");
    u.systemd
        .expect("STATUS=reload to generation 2 failed", LONG);
    assert_eq!(get_ok(&a, "/").json()["generation"].as_u64(), Some(1));
    let report = load.finish();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert!(alive(u.pid));
    // The next release is fine: generation 3.
    app.fix();
    u.signal(Signal::SIGHUP);
    u.log.wait_from(0, &["generation 3 serving"], LONG);
}

#[test]
fn bind_changes_open_new_and_close_removed_after_the_old_generation() {
    let b = upgrader();
    let cfg = b.dir().join("u.toml");
    let sock_a = b.dir().join("a.sock");
    let sock_b = b.dir().join("b.sock");
    let conf = |socks: &[&std::path::Path]| {
        let binds: Vec<String> = socks
            .iter()
            .map(|s| format!("\"unix:{}\"", s.display()))
            .collect();
        format!("bind = [{}]\n", binds.join(", "))
    };
    std::fs::write(&cfg, conf(&[&sock_a])).unwrap();
    let mut u = b.args(["-c", "u.toml"]).start();
    u.ready();
    let a = format!("unix:{}", sock_a.display());
    let bb = format!("unix:{}", sock_b.display());
    std::fs::write(&cfg, conf(&[&sock_a, &sock_b])).unwrap();
    u.signal(Signal::SIGHUP);
    u.log.wait_from(0, &["generation 2 serving"], LONG);
    assert_eq!(get_ok(&bb, "/").num("generation"), 2, "only gen 2 has b");
    // A gen-1 worker may take one last connection on a before its TERM.
    wait_until("generation 2 on a", LONG, || {
        get_ok(&a, "/").num("generation") == 2
    });
    std::fs::write(&cfg, conf(&[&sock_b])).unwrap();
    u.signal(Signal::SIGHUP);
    u.log.wait_from(0, &["closed unix:", "a.sock"], LONG);
    assert!(!sock_a.exists(), "the removed socket file is unlinked");
    assert!(get(&a, "/").is_err());
    assert_eq!(get_ok(&bb, "/").num("generation"), 3);
}

#[test]
fn a_hup_during_a_reload_is_queued_not_interleaved() {
    let mut u = upgrader()
        .args(["--bind", "127.0.0.1:0", "--ready", "delay:0.3"])
        .args(["--exec", PYTHON_APP])
        .start();
    u.ready();
    u.signal(Signal::SIGHUP);
    u.log.wait_from(0, &["reload: generation 2"], LONG);
    u.signal(Signal::SIGHUP);
    u.log.wait_from(0, &["a reload is in flight; queued"], LONG);
    let (i, _, _) = u.log.wait_from(0, &["generation 2 serving"], LONG);
    u.log.wait_from(i, &["reload: generation 3"], LONG);
    u.log.wait_from(i, &["generation 3 serving"], LONG);
    assert!(u.log.find_from(0, &["generation 4"]).is_none());
}
