use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};

use crate::harness::*;

#[test]
fn term_finishes_the_request_in_flight_then_frees_port_and_pidfile() {
    let mut u = upgrader()
        .args([
            "--bind",
            "127.0.0.1:0",
            "--pid",
            "u.pid",
            "--graceful-timeout",
            "5",
        ])
        .start();
    u.ready();
    let a = u.addr(0);
    let pidfile = u.dir.path("u.pid");
    let (s, head) = slow_in_flight(&a, 500);
    u.signal(Signal::SIGTERM);
    let r = finish(s, head);
    assert_eq!(r.status, 200);
    assert_eq!(r.num("master_pid"), u.pid.as_raw() as u64);
    let st = u.wait_exit(Duration::from_secs(6));
    assert_eq!(st.code(), Some(0));
    assert!(port_free(&a), "port {a} still held after exit");
    assert!(!pidfile.exists());
    u.systemd.expect("STOPPING=1", LONG);
}

#[test]
fn graceful_timeout_is_honoured() {
    let mut u = upgrader()
        .args(["--bind", "127.0.0.1:0", "--graceful-timeout", "0.5"])
        .start();
    u.ready();
    let a = u.addr(0);
    let (_s, _head) = slow_in_flight(&a, 60_000);
    let t = Instant::now();
    u.signal(Signal::SIGTERM);
    assert_eq!(u.wait_exit(LONG).code(), Some(0));
    let took = t.elapsed();
    assert!(took < Duration::from_millis(1500), "stop took {took:?}");
    u.log.wait_from(0, &["still alive: SIGKILL"], LONG);
}

#[test]
fn quit_is_fast() {
    let mut u = upgrader()
        .args(["--bind", "127.0.0.1:0", "-w", "2"])
        .start();
    u.ready();
    let a = u.addr(0);
    let (_s, _h) = slow_in_flight(&a, 60_000);
    let t = Instant::now();
    u.signal(Signal::SIGQUIT);
    assert_eq!(u.wait_exit(LONG).code(), Some(0));
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn kill_9_of_the_master_leaves_no_worker_and_frees_the_port() {
    let mut u = upgrader()
        .args(["--bind", "127.0.0.1:0", "-w", "3"])
        .start();
    u.ready();
    let a = u.addr(0);
    let workers = u.spawned();
    assert_eq!(workers.len(), 3);
    u.signal(Signal::SIGKILL);
    u.wait_exit(LONG);
    let t = Instant::now();
    wait_until("every worker gone", Duration::from_secs(1), || {
        workers.iter().all(|p| !alive(*p))
    });
    assert!(
        port_free(&a),
        "port {a} held {:?} after kill -9:\n{}",
        t.elapsed(),
        who_holds(&a)
    );
    // A new master binds the same port at once.
    let mut again = upgrader().args(["--bind", &a]).start();
    again.ready();
    get_ok(&a, "/");
}

#[test]
fn a_killed_worker_is_replaced_without_failing_other_requests() {
    let mut u = upgrader()
        .args(["--bind", "127.0.0.1:0", "-w", "2"])
        .start();
    u.ready();
    let a = u.addr(0);
    let (s, head) = slow_in_flight(&a, 400);
    // The victim is the worker that is *not* serving the slow request:
    // the idle one, asleep in epoll (the busy one sleeps in the hook).
    let workers = u.spawned();
    let mut victim = None;
    wait_until("an idle worker to kill", LONG, || {
        victim = workers
            .iter()
            .copied()
            .find(|p| alive(*p) && idle_in_epoll(*p));
        victim.is_some()
    });
    let victim = victim.unwrap();
    let from = u.log.len();
    kill(victim, Signal::SIGKILL).unwrap();
    u.log.wait_from(
        from,
        &[&format!("worker[{victim}]"), "killed by SIGKILL"],
        LONG,
    );
    u.log.wait_from(from, &["spawned worker["], LONG);
    // The request held by the other worker (or queued) completes.
    let r = finish(s, head);
    assert_eq!(r.status, 200);
    assert_ne!(
        r.num("worker_pid"),
        victim.as_raw() as u64,
        "the killed worker cannot have answered"
    );
    for _ in 0..20 {
        get_ok(&a, "/");
    }
    assert!(u.log.find_from(from, &["out of memory?"]).is_some());
}

#[test]
fn ttin_ttou_change_the_pool() {
    let mut u = upgrader()
        .args(["--bind", "127.0.0.1:0", "-w", "1"])
        .start();
    u.ready();
    let from = u.log.len();
    u.signal(Signal::SIGTTIN);
    u.log.wait_from(from, &["workers: 1 -> 2"], LONG);
    u.log.wait_from(from, &["age=2 ready"], LONG);
    let from = u.log.len();
    u.signal(Signal::SIGTTOU);
    u.log.wait_from(from, &["workers: 2 -> 1"], LONG);
    // The oldest goes first.
    u.log.wait_from(from, &["retiring worker[", "age=1"], LONG);
    u.log.wait_from(from, &["age=1 exited with status 0"], LONG);
    let from = u.log.len();
    u.signal(Signal::SIGTTOU);
    u.log.wait_from(from, &["workers: 1 -> 1"], LONG);
    get_ok(&u.addr(0), "/");
}

#[test]
fn winch_drains_workers_keeps_the_port_and_hup_restores() {
    let mut u = upgrader()
        .args(["--bind", "127.0.0.1:0", "-w", "2"])
        .start();
    u.ready();
    let a = u.addr(0);
    let workers = u.spawned();
    u.signal(Signal::SIGWINCH);
    wait_until("workers drained", LONG, || {
        workers.iter().all(|p| !alive(*p))
    });
    assert!(alive(u.pid), "the master stays");
    assert!(!port_free(&a), "the master keeps the listener");
    // A client connecting now waits in the backlog and is served once
    // HUP brings workers back: nothing is refused.
    let waiting = std::thread::spawn({
        let a = a.clone();
        move || get(&a, "/")
    });
    let from = u.log.len();
    u.signal(Signal::SIGHUP);
    u.log.wait_from(from, &["ready"], LONG);
    let r = waiting.join().unwrap().expect("queued request served");
    assert_eq!(r.status, 200);
}

#[test]
fn usr1_reopens_the_log_file() {
    let b = upgrader().args(["--bind", "127.0.0.1:0", "--log-file", "u.log"]);
    let log = b.dir().join("u.log");
    let mut u = b.start();
    u.ready();
    let rotated = u.dir.path("u.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    u.signal(Signal::SIGUSR1);
    wait_until("a new log file", LONG, || {
        std::fs::read_to_string(&log)
            .is_ok_and(|t| t.contains("reopened log file"))
    });
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(old.contains("serving"), "{old}");
}

#[test]
fn idle_master_does_not_wake_up() {
    let mut u = upgrader()
        .args(["--bind", "127.0.0.1:0", "--timeout", "0"])
        .start();
    u.ready();
    let switches = |pid: nix::unistd::Pid| -> u64 {
        let s =
            std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let worker = u.spawned()[0];
    wait_asleep_in_poll(u.pid);
    wait_asleep_in_poll(worker);
    let before = switches(u.pid);
    // A measurement window, not a synchronisation: the master must not
    // wake at all while nothing happens.
    std::thread::sleep(Duration::from_millis(1500));
    let after = switches(u.pid);
    assert_eq!(after, before, "idle master woke {} times", after - before);
    let wb = switches(worker);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(switches(worker), wb, "idle worker woke up");
}
