use std::time::{Duration, Instant};

use crate::harness::*;

#[test]
fn worker_exiting_at_boot_halts_with_3_every_time() {
    for _ in 0..3 {
        let b = upgrader().args([
            "--bind",
            "127.0.0.1:0",
            "-w",
            "2",
            "--pid",
            "u.pid",
            "--exec",
            "sh",
            "-c",
            "echo 'app: cannot start: no config' >&2; exit 1",
        ]);
        let pidfile = b.dir().join("u.pid");
        let t = Instant::now();
        let mut u = b.start();
        let st = u.wait_exit(LONG);
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        assert_eq!(st.code(), Some(3), "{}", u.log.text());
        let text = u.log.text();
        let last = text.lines().last().unwrap();
        assert!(
            last.starts_with("upgrader: error: workers failed to boot: "),
            "{text}"
        );
        assert!(
            last.contains("exited with status 1 before it was ready"),
            "{last}"
        );
        assert!(last.contains("app: cannot start: no config"), "{last}");
        assert_eq!(u.log.count(&["spawned worker["]), 2, "no respawn: {text}");
        assert!(!pidfile.exists());
        assert!(!text.contains("panicked"), "{text}");
    }
}

#[test]
fn app_load_error_exit_4_wins() {
    let mut u = upgrader()
        .args([
            "--bind",
            "127.0.0.1:0",
            "-w",
            "2",
            "--exec",
            "sh",
            "-c",
            "exit 4",
        ])
        .start();
    assert_eq!(u.wait_exit(LONG).code(), Some(4), "{}", u.log.text());
}

#[test]
fn crashing_workers_are_respawned_with_backoff() {
    let mut u = upgrader().args(["--bind", "127.0.0.1:0"]).start();
    u.ready();
    let a = u.addr(0);
    for n in 0..3 {
        let from = u.log.len();
        let _ = get(&a, "/_test/exit?code=1");
        u.log.wait_from(from, &["exited with status 1"], LONG);
        if n >= 1 {
            u.log.wait_from(
                from,
                &["worker failures in a row: next spawn in"],
                LONG,
            );
        }
        u.log.wait_from(from, &["ready in"], LONG);
    }
    let text = u.log.text();
    assert!(
        text.contains("2 worker failures in a row: next spawn in 100 ms"),
        "{text}"
    );
    assert!(
        text.contains("3 worker failures in a row: next spawn in 200 ms"),
        "{text}"
    );
    assert!(alive(u.pid));
}

#[test]
fn a_hung_worker_gets_the_timeout_signal_then_sigkill_on_time() {
    let mut u = upgrader()
        .args([
            "--bind",
            "127.0.0.1:0",
            "--timeout",
            "1",
            "--kill-after",
            "0.5",
        ])
        .start();
    u.ready();
    let a = u.addr(0);
    let worker = u.spawned()[0];
    // The worker blocks every signal but SIGKILL and stops beating.
    let hang = std::thread::spawn({
        let a = a.clone();
        move || get(&a, "/_test/hang?ignore")
    });
    let (i, t_hang, _) = u.log.wait_from(0, &["test hook: hanging"], LONG);
    let (j, t_abrt, line) =
        u.log.wait_from(i, &["timed out", "SIGABRT"], LONG);
    assert!(line.contains(&format!("worker[{worker}]")), "{line}");
    let (_, t_kill, _) = u.log.wait_from(j, &["still alive: SIGKILL"], LONG);
    u.log.wait_from(
        j,
        &[&format!("worker[{worker}]"), "killed by SIGKILL"],
        LONG,
    );
    // The last heartbeat was at most timeout/4 before the hang began.
    let to_abrt = t_abrt - t_hang;
    assert!(
        to_abrt >= Duration::from_millis(700)
            && to_abrt <= Duration::from_millis(1100),
        "timeout signal after {to_abrt:?}"
    );
    let to_kill = t_kill - t_abrt;
    assert!(
        to_kill >= Duration::from_millis(480)
            && to_kill <= Duration::from_millis(600),
        "SIGKILL {to_kill:?} after the timeout signal"
    );
    let _ = hang.join();
    // A replacement serves.
    wait_until("a replacement", LONG, || {
        get(&a, "/")
            .is_ok_and(|r| r.num("worker_pid") != worker.as_raw() as u64)
    });
}

#[test]
fn a_late_worker_dies_of_the_timeout_signal() {
    for (args, sig) in [
        (&[][..], "SIGABRT"),
        (&["--timeout-signal", "USR2"][..], "SIGUSR2"),
    ] {
        let mut u = upgrader()
            .args(["--bind", "127.0.0.1:0", "--timeout", "0.5"])
            .args(args.iter().copied())
            .start();
        u.ready();
        let a = u.addr(0);
        let worker = u.spawned()[0];
        std::thread::spawn(move || get(&a, "/_test/hang"));
        u.log.wait_from(0, &["timed out", sig], LONG);
        u.log.wait_from(
            0,
            &[&format!("worker[{worker}]"), &format!("killed by {sig}")],
            LONG,
        );
        assert!(u.log.find_from(0, &["still alive: SIGKILL"]).is_none());
    }
}
