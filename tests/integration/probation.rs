//! SPEC 13: probation and automatic rollback. A release that passes
//! readiness and crashes within `--probation` never takes the service
//! down: a HUP reload rolls back to the previous generation, a USR2
//! upgrade to the old master; the first generation halts (exit 3)
//! instead of a respawn loop. `--crash-loop-limit` halts outside
//! probation.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::harness::*;

fn s(dir: &Path, args: &[&str]) -> (i32, String) {
    let mut v = vec!["-s"];
    v.extend_from_slice(args);
    let (st, out) = run_to_end(&v, dir);
    (st.code().unwrap_or(-1), out)
}

/// A config file for `workers` Python app workers on a kernel-chosen
/// port; `crash` = `Some("2:1")` makes the release crash (exit 1) 2 s
/// after each worker starts.
fn release(path: &Path, workers: u32, probation: &str, crash: Option<&str>) {
    let mut exec = String::from("exec = [");
    if let Some(c) = crash {
        exec.push_str(&format!("\"env\", \"APP_CRASH_AFTER={c}\", "));
    }
    exec.push_str(&format!("\"python3\", \"{PYTHON_APP}\"]\n"));
    std::fs::write(
        path,
        format!(
            "bind = [\"127.0.0.1:0\"]\npid = \"u.pid\"\nworkers = \
             {workers}\nprobation = {probation}\n{exec}"
        ),
    )
    .unwrap();
}

/// The generation that answers, from the Python app's JSON.
fn generation(addr: &str) -> u64 {
    get_ok(addr, "/").num("generation")
}

/// The master whose worker answered: the Python app's parent is its
/// keeper, whose parent is the master.
fn master_of(addr: &str) -> i32 {
    let keeper = get_ok(addr, "/").json()["ppid"].as_u64().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{keeper}/status"))
        .unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// HUP to a release whose workers exit `code` 2 s after start, with
/// `--probation 5`, under a continuous 4-thread client.
fn reload_rolls_back(code: i32) {
    let b = upgrader();
    let cfg = b.dir().join("u.toml");
    release(&cfg, 2, "5", None);
    let mut u = b.args(["-c", "u.toml"]).start();
    u.ready();
    let a = u.addr(0);
    let dir = u.dir.0.clone();
    u.log
        .wait_from(0, &["first generation passed its probation"], LONG);
    assert_eq!(generation(&a), 1);

    let load = Load::start(&a, 4, Duration::from_secs(30));
    release(&cfg, 2, "5", Some(&format!("2:{code}")));
    let t = Instant::now();
    let (rc, out) = s(&dir, &["reload", "--pid", "u.pid"]);
    let took = t.elapsed();
    assert_eq!(rc, 1, "{out}");
    assert!(out.contains("reload rolled back: worker["), "{out}");
    assert!(out.contains("gen=2"), "{out}");
    assert!(out.contains(&format!("exited with status {code}")), "{out}");
    assert!(out.contains("of probation 5s"), "{out}");
    assert!(out.contains("crashing with status"), "stderr tail: {out}");
    // The workers crash 2 s after their spawn: the answer follows the
    // crash, not the end of the 5 s window.
    assert!(
        took >= Duration::from_millis(1500)
            && took < Duration::from_millis(4500),
        "-s reload took {took:?}: {out}"
    );
    // The previous generation serves on, with the previous config.
    for _ in 0..20 {
        assert_eq!(generation(&a), 1, "after the rollback");
    }
    let report = load.finish();
    // Only a request a crashing worker held can fail: at most one per
    // crashed worker (2); everything else was served.
    assert!(
        report.failures.len() <= 2,
        "{} failed requests (more than the 2 crashing workers held): {:?}",
        report.failures.len(),
        report.failures
    );
    eprintln!(
        "rollback under load: {} ok, {} failed (held by the crashing workers)",
        report.ok,
        report.failures.len()
    );
    assert!(report.ok > 0);
    assert!(report.served_by.iter().any(|(_, g)| *g == 1));
    // Generation 1 was never retired: both its workers still serve.
    assert_eq!(u.log.count(&["gen=1", "retiring"]), 0, "{}", u.log.text());
    // The next HUP is accepted, and a good release goes through.
    release(&cfg, 2, "1", None);
    let (rc, out) = s(&dir, &["reload", "--pid", "u.pid"]);
    assert_eq!(rc, 0, "{out}");
    assert_eq!(generation(&a), 3);
}

#[test]
fn a_reload_whose_workers_exit_1_on_probation_rolls_back_under_load() {
    reload_rolls_back(1);
}

#[test]
fn a_reload_whose_workers_exit_3_on_probation_rolls_back_under_load() {
    reload_rolls_back(3);
}

/// A good release with `--probation 2`: `-s reload` returns after the
/// window with success, and the old generation is retired only then.
#[test]
fn a_good_reload_completes_after_its_probation() {
    let b = upgrader();
    let cfg = b.dir().join("u.toml");
    release(&cfg, 1, "2", None);
    let mut u = b.args(["-c", "u.toml"]).start();
    u.ready();
    let a = u.addr(0);
    let dir = u.dir.0.clone();
    u.log
        .wait_from(0, &["first generation passed its probation"], LONG);
    let from = u.log.len();
    let t = Instant::now();
    let (rc, out) = s(&dir, &["reload", "--pid", "u.pid"]);
    let took = t.elapsed();
    assert_eq!(
        (rc, out.trim()),
        (0, "reload complete: generation 2 serving")
    );
    // Ready after 1 s (--ready delay:1), then 2 s of probation.
    assert!(took >= Duration::from_millis(2900), "{took:?}");
    assert!(took < Duration::from_secs(8), "{took:?}");
    let (i, _, _) =
        u.log
            .wait_from(from, &["on probation for 2s"], Duration::ZERO);
    let (j, _, _) = u.log.wait_from(
        from,
        &["generation 2 passed its probation"],
        Duration::ZERO,
    );
    let (k, _, _) =
        u.log
            .wait_from(from, &["retiring", "gen=1"], Duration::ZERO);
    assert!(
        i < j && j < k,
        "retired before probation passed:\n{}",
        u.log.text()
    );
    assert_eq!(generation(&a), 2);
    // systemd hears READY=1 for the reload only after the window.
    let seen = u.systemd.seen();
    let reloading = seen.iter().rposition(|m| m.contains("RELOADING=1"));
    let on_probation = seen.iter().position(|m| {
        m.contains("STATUS=reloading: generation 2 on probation")
    });
    let ready = seen.iter().rposition(|m| m.contains("READY=1"));
    assert!(
        matches!((reloading, on_probation, ready), (Some(r), Some(p), Some(y)) if r <= p && p < y),
        "READY=1 before the probation window: {seen:?}"
    );
}

/// TERM during a reload's probation waits for its end; a second TERM
/// stops at once.
#[test]
fn term_during_a_reload_probation_is_held_and_a_second_term_stops() {
    let b = upgrader();
    let cfg = b.dir().join("u.toml");
    release(&cfg, 1, "30", None);
    let mut u = b.args(["-c", "u.toml"]).start();
    u.ready();
    let from = u.log.len();
    u.signal(nix::sys::signal::Signal::SIGHUP);
    u.log
        .wait_from(from, &["generation 2 ready", "on probation"], LONG);
    u.signal(nix::sys::signal::Signal::SIGTERM);
    u.log
        .wait_from(from, &["TERM held until the probation"], LONG);
    assert!(u.child.try_wait().unwrap().is_none(), "stopped at once");
    u.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(u.wait_exit(LONG).code(), Some(0));
}

/// The first generation crashing 1.5 s after start with `--probation 5`
/// halts with exit 3 and one line; no respawn loop.
#[test]
fn a_first_generation_crashing_on_probation_halts_with_3() {
    let b = upgrader();
    let cfg = b.dir().join("u.toml");
    release(&cfg, 1, "5", Some("1.5:1"));
    let (st, out) = run_to_end(&["-c", "u.toml"], b.dir());
    assert_eq!(st.code(), Some(3), "{out}");
    let last = out.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("upgrader: error: probation failed: worker["),
        "{out}"
    );
    assert!(last.contains("exited with status 1"), "{out}");
    assert!(last.contains("of probation 5s"), "{out}");
    assert_eq!(out.matches("spawned worker").count(), 1, "respawned: {out}");
}

/// Exit 4 in the window halts with 4 (the app cannot load).
#[test]
fn a_first_generation_exiting_4_on_probation_halts_with_4() {
    let b = upgrader();
    let cfg = b.dir().join("u.toml");
    release(&cfg, 1, "5", Some("1.5:4"));
    let (st, out) = run_to_end(&["-c", "u.toml"], b.dir());
    assert_eq!(st.code(), Some(4), "{out}");
}

/// Without probation the same crash is respawned with backoff, as
/// before; with `--crash-loop-limit 3` the third crash in a row halts.
#[test]
fn crash_loop_limit_halts_after_the_third_crash() {
    let b = upgrader();
    let cfg = b.dir().join("u.toml");
    release(&cfg, 1, "0", Some("1.2:1"));
    let mut u = b.args(["-c", "u.toml", "--crash-loop-limit", "3"]).start();
    u.ready();
    assert_eq!(u.wait_exit(Duration::from_secs(20)).code(), Some(3));
    let text = u.log.text();
    assert_eq!(text.matches("spawned worker").count(), 3, "{text}");
    assert!(
        text.contains("crash loop: 3 workers of generation 1"),
        "{text}"
    );
}

#[test]
fn without_probation_a_crash_after_ready_is_respawned_with_backoff() {
    let b = upgrader();
    let cfg = b.dir().join("u.toml");
    release(&cfg, 1, "0", Some("1.2:1"));
    let mut u = b.args(["-c", "u.toml"]).start();
    u.ready();
    u.log
        .wait_from(0, &["3 worker failures in a row: next spawn in"], LONG);
    assert!(u.child.try_wait().unwrap().is_none(), "halted");
    assert_eq!(u.log.count(&["spawned worker"]), 3, "{}", u.log.text());
}

/// USR2 to a release whose workers crash on probation: the new master
/// halts, the old one stays in charge (pidfile unchanged, no `.2`),
/// `-s upgrade` says why, and a later USR2 to a good release succeeds.
#[test]
fn an_upgrade_whose_workers_crash_on_probation_keeps_the_old_master() {
    let b = upgrader().env_remove_notify();
    let cfg = b.dir().join("u.toml");
    release(&cfg, 2, "3", None);
    let mut u = b.args(["-c", "u.toml"]).start();
    let dir = u.dir.0.clone();
    let old = wait_pidfile(&dir.join("u.pid"), None);
    assert_eq!(old, u.pid);
    let a = u.addr(0);
    let load = Load::start(&a, 4, Duration::from_secs(30));
    release(&cfg, 2, "3", Some("1.5:1"));
    let (rc, out) = s(&dir, &["upgrade", "--pid", "u.pid"]);
    assert_eq!(rc, 1, "{out}");
    assert!(out.contains("probation failed: worker["), "{out}");
    assert!(out.contains("exited with status 1"), "{out}");
    assert!(!dir.join("u.pid.2").exists(), "<pidfile>.2 left behind");
    assert_eq!(wait_pidfile(&dir.join("u.pid"), None), old);
    assert!(alive(u.pid));
    for _ in 0..10 {
        assert_eq!(master_of(&a), old.as_raw(), "served by the old master");
    }
    let report = load.finish();
    assert!(
        report.failures.len() <= 2,
        "{} failed: {:?}",
        report.failures.len(),
        report.failures
    );
    // A good release goes through, once its first generation passed
    // its probation: ready (1 s) plus the window (1 s) before the ready
    // byte that retires the old master.
    release(&cfg, 2, "1", None);
    let from = u.log.len();
    let (rc, out) = s(&dir, &["upgrade", "--pid", "u.pid"]);
    assert_eq!(rc, 0, "{out}");
    let (_, _, line) =
        u.log
            .wait_from(from, &["upgrade: new master", "ready in"], LONG);
    let ms: u64 = line
        .rsplit("ready in ")
        .next()
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(ms >= 2000, "ready before the probation passed: {line}");
    let new = wait_pidfile(&dir.join("u.pid"), Some(old));
    assert_eq!(u.wait_exit(LONG).code(), Some(0));
    assert!(alive(new));
    let (rc, _) = s(&dir, &["quit", "--pid", "u.pid"]);
    assert_eq!(rc, 0);
}

/// A `current` symlink swapped to a broken release, then HUP: the
/// rollback keeps the old generation, and a respawn in it (one of its
/// workers killed) still runs the old release.
#[test]
fn a_swapped_current_symlink_cannot_change_a_kept_generation() {
    use std::os::unix::fs::symlink;
    let b = upgrader();
    let d = b.dir().to_path_buf();
    for (name, body) in [
        ("v1", format!("exec python3 '{PYTHON_APP}'\n")),
        (
            "v2",
            format!("APP_CRASH_AFTER=1.5:1 exec python3 '{PYTHON_APP}'\n"),
        ),
    ] {
        std::fs::create_dir_all(d.join(name)).unwrap();
        std::fs::write(d.join(name).join("app.sh"), body).unwrap();
        std::fs::write(d.join(name).join("RELEASE"), name).unwrap();
    }
    symlink("v1", d.join("current")).unwrap();
    let mut u = b
        .args([
            "--bind",
            "127.0.0.1:0",
            "-p",
            "u.pid",
            "--probation",
            "3",
            "--chdir",
            "current",
            "--exec",
            "sh",
            "app.sh",
        ])
        .start();
    u.ready();
    let a = u.addr(0);
    let dir = u.dir.0.clone();
    let v1 = std::fs::canonicalize(d.join("v1")).unwrap();
    u.log.wait_from(0, &["generation 1 runs", "v1"], LONG);
    u.log
        .wait_from(0, &["first generation passed its probation"], LONG);
    // The deploy: current -> v2, atomically.
    symlink("v2", d.join("current.new")).unwrap();
    std::fs::rename(d.join("current.new"), d.join("current")).unwrap();
    let (rc, out) = s(&dir, &["reload", "--pid", "u.pid"]);
    assert_eq!(rc, 1, "{out}");
    assert!(out.contains("reload rolled back"), "{out}");
    // Kill a worker of the kept generation: its respawn runs v1 still.
    let app = get_ok(&a, "/").json()["pid"].as_u64().unwrap() as i32;
    let from = u.log.len();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(app),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    u.log.wait_from(from, &["spawned worker", "gen=1"], LONG);
    wait_until("a respawned worker of generation 1 serving", LONG, || {
        get(&a, "/").is_ok_and(|r| {
            r.status == 200 && r.json()["pid"].as_u64() != Some(app as u64)
        })
    });
    let pid = get_ok(&a, "/").json()["pid"].as_u64().unwrap();
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap();
    assert_eq!(cwd, v1, "the respawn runs in {}", cwd.display());
    assert_eq!(generation(&a), 1);
}
