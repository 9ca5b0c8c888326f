//! USR2: binary upgrade, retirement, promotion, failure, rollback.

use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::harness::*;

/// Runs one USR2 + TERM cycle by hand (the procedure with plain kill):
/// returns the new master's pid once it is promoted.
fn upgrade_cycle(u: &Upgrader, master: Pid, pidfile: &std::path::Path) -> Pid {
    let from = u.log.len();
    kill(master, Signal::SIGUSR2).unwrap();
    let p2 = pidfile.with_extension("pid.2");
    let new = wait_pidfile(&p2, None);
    u.log
        .wait_from(from, &[&format!("new master {new} ready")], LONG);
    kill(master, Signal::SIGTERM).unwrap();
    u.log
        .wait_from(from, &[&format!("master[{new}]: promoted")], LONG);
    assert_eq!(wait_pidfile(pidfile, Some(master)), new);
    assert!(!p2.exists(), "{} renamed on promotion", p2.display());
    new
}

#[test]
fn five_upgrades_and_five_reloads_under_load_fail_nothing() {
    let b = upgrader()
        .args(["--bind", "127.0.0.1:0", "-w", "2", "-p", "u.pid"])
        .args(["--auto-retire", "off"]);
    let pidfile = b.dir().join("u.pid");
    let mut u = b.start();
    u.ready();
    let a = u.addr(0);
    let load = Load::start(&a, 4, Duration::from_secs(30));
    let mut master = u.pid;
    for _ in 0..5 {
        master = upgrade_cycle(&u, master, &pidfile);
    }
    for generation in 2..=6 {
        let from = u.log.len();
        kill(master, Signal::SIGHUP).unwrap();
        u.log.wait_from(
            from,
            &[&format!("generation {generation} serving")],
            LONG,
        );
    }
    // Answers after the last reload come from the newest master and
    // generation.
    wait_until("the last generation to answer", LONG, || {
        let j = get_ok(&a, "/").json();
        j["master_pid"].as_u64() == Some(master.as_raw() as u64)
            && j["generation"].as_u64() == Some(6)
    });
    let report = load.finish();
    assert!(
        report.failures.is_empty(),
        "{} failed of {}: {:?}",
        report.failures.len(),
        report.ok + report.failures.len() as u64,
        &report.failures[..report.failures.len().min(5)]
    );
    let masters: std::collections::HashSet<u64> =
        report.served_by.iter().map(|(m, _)| *m).collect();
    assert_eq!(
        masters.len(),
        6,
        "every master served: {:?}",
        report.served_by
    );
    assert!(
        report.ok > 100,
        "load too small to mean anything: {}",
        report.ok
    );
}

#[test]
fn usr2_runs_the_executable_now_on_disk() {
    let dir = TempDir::new();
    let exe = dir.path("upgrader");
    std::fs::copy(BIN, &exe).unwrap();
    let b = upgrader();
    let pidfile = b.dir().join("u.pid");
    let marker = b.dir().join("new-binary-ran");
    // Started through a copy, by its path...
    let mut u = b
        .args(MANUAL_UPGRADE)
        .program(exe.to_str().unwrap())
        .start();
    u.ready();
    // ...which a package upgrade then replaces (a new inode at the same
    // path). The new file proves it ran by leaving a marker.
    let replacement = dir.path("upgrader.new");
    std::fs::write(
        &replacement,
        format!(
            "#!/bin/sh\ntouch '{}'\nexec '{BIN}' \"$@\"\n",
            marker.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        &replacement,
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::rename(&replacement, &exe).unwrap();
    let new = upgrade_cycle(&u, u.pid, &pidfile);
    assert!(marker.exists(), "USR2 must exec the file now at the path");
    // The new master keeps the old one's process group (the shipped
    // unit's ExecStop signals that group).
    assert_eq!(
        nix::unistd::getpgid(Some(new)).unwrap(),
        u.pid,
        "process group of the new master"
    );
    let r = get_ok(&u.addr(0), "/");
    assert_eq!(r.num("master_pid"), new.as_raw() as u64);
}

#[test]
fn a_new_master_whose_workers_cannot_boot_leaves_the_old_serving() {
    let b = upgrader();
    let app = Breakable::new(b.dir(), "app: config broken", 0.0, 3);
    let pidfile = b.dir().join("u.pid");
    let mut u = b
        .args(["--bind", "127.0.0.1:0", "-p", "u.pid", "--ready", "notify"])
        .args(["--auto-retire", "off"])
        .args(app.exec.clone())
        .start();
    u.ready();
    let a = u.addr(0);
    let load = Load::start(&a, 2, Duration::from_secs(20));
    app.break_it();
    let from = u.log.len();
    u.signal(Signal::SIGUSR2);
    let (_, _, line) =
        u.log.wait_from(from, &["upgrade failed: new master"], LONG);
    assert!(line.contains("exited with status 3"), "{line}");
    assert!(line.contains("this master carries on"), "{line}");
    assert!(!pidfile.with_extension("pid.2").exists());
    // The new master said why, in the shared log.
    assert!(u.log.find_from(from, &["app: config broken"]).is_some());
    app.fix();
    // Still the old master, and a later USR2 is accepted again.
    assert!(get_ok(&a, "/").json()["pid"].as_u64().is_some());
    let new = upgrade_cycle(&u, u.pid, &pidfile);
    let report = load.finish();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert!(alive(new));
}

#[test]
fn a_second_usr2_is_refused_while_a_new_master_exists() {
    let mut u = upgrader().args(MANUAL_UPGRADE).start();
    u.ready();
    u.signal(Signal::SIGUSR2);
    let new = u.new_master();
    u.signal(Signal::SIGUSR2);
    u.log.wait_from(
        0,
        &[&format!("USR2 ignored: new master {new} exists")],
        LONG,
    );
    // The unpromoted new master refuses too.
    u.log
        .wait_from(0, &[&format!("upgrade: new master {new} ready")], LONG);
    kill(new, Signal::SIGUSR2).unwrap();
    u.log
        .wait_from(0, &["USR2 ignored: not promoted yet"], LONG);
}

#[test]
fn term_during_the_new_masters_boot_is_held_until_it_is_ready() {
    let b = upgrader();
    let pidfile = b.dir().join("u.pid");
    let mut u = b
        .args([
            "--bind",
            "127.0.0.1:0",
            "-p",
            "u.pid",
            "--ready",
            "delay:0.5",
        ])
        .args(["--auto-retire", "off"])
        .args(["--exec", PYTHON_APP])
        .start();
    u.ready();
    u.signal(Signal::SIGUSR2);
    u.log.wait_from(0, &["USR2: new master", "spawned"], LONG);
    u.signal(Signal::SIGTERM);
    u.log.wait_from(0, &["TERM held until new master"], LONG);
    assert_eq!(u.wait_exit(LONG).code(), Some(0));
    let text = u.log.text();
    let ready = text.find("upgrade: new master").unwrap();
    let retire = text.find("retiring: new master").unwrap();
    assert!(ready < retire, "{text}");
    let new = wait_pidfile(&pidfile, Some(u.pid));
    u.log
        .wait_from(0, &[&format!("master[{new}]: promoted")], LONG);
    get_ok(&u.addr(0), "/");
}

#[test]
fn auto_retire_hands_over_without_a_term() {
    let b = upgrader();
    let pidfile = b.dir().join("u.pid");
    let mut u = b
        .args([
            "--bind",
            "127.0.0.1:0",
            "-p",
            "u.pid",
            "--auto-retire",
            "on",
        ])
        .start();
    u.ready();
    u.signal(Signal::SIGUSR2);
    assert_eq!(u.wait_exit(LONG).code(), Some(0));
    let new = wait_pidfile(&pidfile, Some(u.pid));
    u.log
        .wait_from(0, &[&format!("master[{new}]: promoted")], LONG);
    assert_eq!(
        get_ok(&u.addr(0), "/").num("master_pid"),
        new.as_raw() as u64
    );
    // And the promoted master can be upgraded again.
    kill(new, Signal::SIGUSR2).unwrap();
    let newer = wait_pidfile(&pidfile, Some(new));
    u.log
        .wait_from(0, &[&format!("master[{newer}]: promoted")], LONG);
}

#[test]
fn rollback_winch_old_hup_old_term_new() {
    let b = upgrader();
    let pidfile = b.dir().join("u.pid");
    let mut u = b
        .args(["--bind", "127.0.0.1:0", "-w", "2", "-p", "u.pid"])
        .args(["--auto-retire", "off"])
        .start();
    u.ready();
    let a = u.addr(0);
    let load = Load::start(&a, 2, Duration::from_secs(20));
    u.signal(Signal::SIGUSR2);
    let new = wait_pidfile(&pidfile.with_extension("pid.2"), None);
    u.log
        .wait_from(0, &[&format!("new master {new} ready")], LONG);
    // Only the new generation serves now...
    let from = u.log.len();
    u.signal(Signal::SIGWINCH);
    u.log.wait_from(from, &["age=2 exited with status 0"], LONG);
    // ...until the operator decides to roll back.
    u.signal(Signal::SIGHUP);
    u.log.wait_from(from, &["reload complete"], LONG);
    // TERM, the graceful way out: QUIT would cut the requests the new
    // master's workers have in hand ("exit now").
    kill(new, Signal::SIGTERM).unwrap();
    u.log.wait_from(
        from,
        &[&format!("new master {new} exited with status 0")],
        LONG,
    );
    wait_until("only the old master answers", LONG, || {
        get_ok(&a, "/").num("master_pid") == u.pid.as_raw() as u64
    });
    let report = load.finish();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    // The attempt is over: USR2 is accepted again.
    let from = u.log.len();
    u.signal(Signal::SIGUSR2);
    u.log
        .wait_from(from, &["USR2: new master", "spawned"], LONG);
}

#[test]
fn a_held_term_stops_the_old_master_when_the_upgrade_fails() {
    let b = upgrader();
    let app = Breakable::new(b.dir(), "app: still booting", 0.3, 3);
    let mut u = b
        .args([
            "--bind",
            "127.0.0.1:0",
            "--ready",
            "notify",
            "--auto-retire",
            "off",
        ])
        .args(app.exec.clone())
        .start();
    u.ready();
    app.break_it();
    u.signal(Signal::SIGUSR2);
    u.log.wait_from(0, &["USR2: new master", "spawned"], LONG);
    u.signal(Signal::SIGTERM);
    u.log.wait_from(0, &["TERM held until new master"], LONG);
    let (i, _, _) = u.log.wait_from(0, &["upgrade failed: new master"], LONG);
    u.log.wait_from(i, &["graceful stop"], LONG);
    assert_eq!(u.wait_exit(LONG).code(), Some(0));
}
