use std::collections::HashSet;

use crate::harness::*;

#[test]
fn serves_ipv4_ipv6_and_unix_with_distinct_workers() {
    let b = upgrader();
    let sock = b.dir().join("u.sock");
    let mut u = b
        .args(["-w", "3", "--bind", "127.0.0.1:0", "--bind", "[::1]:0"])
        .arg(format!("--bind=unix:{}", sock.display()))
        .start();
    u.ready();
    let addrs = [u.addr(0), u.addr(1), u.addr(2)];
    assert!(addrs[1].starts_with("[::1]:"), "{addrs:?}");
    assert_eq!(addrs[2], format!("unix:{}", sock.display()));
    for a in &addrs {
        let r = get_ok(a, "/");
        let j = r.json();
        assert_eq!(j["master_pid"].as_u64(), Some(u.pid.as_raw() as u64));
        assert_eq!(j["generation"].as_u64(), Some(1));
        assert_eq!(j["version"].as_str(), Some(env!("CARGO_PKG_VERSION")));
        assert!(r.head.contains("Connection: close"), "{}", r.head);
    }
    // Three requests held in flight at once must be in three workers.
    let held: Vec<_> =
        (0..3).map(|_| slow_in_flight(&addrs[0], 300)).collect();
    let pids: HashSet<u64> = held
        .into_iter()
        .map(|(s, h)| finish(s, h).num("worker_pid"))
        .collect();
    assert_eq!(pids.len(), 3, "expected 3 distinct workers: {pids:?}");
    u.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(u.wait_exit(LONG).code(), Some(0));
    assert!(
        !sock.exists(),
        "the unix socket this master bound is unlinked"
    );
}

#[test]
fn head_and_counters() {
    let mut u = upgrader().args(["--bind", "127.0.0.1:0"]).start();
    u.ready();
    let a = u.addr(0);
    let first = get_ok(&a, "/").num("requests");
    let second = get_ok(&a, "/any/path?x=1").num("requests");
    assert_eq!(second, first + 1);
    let r = raw(&a, b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty(), "HEAD has no body: {r:?}");
}

#[test]
fn malformed_requests_get_4xx_and_the_worker_survives() {
    let mut u = upgrader()
        .args(["--bind", "127.0.0.1:0", "--client-timeout", "0.3"])
        .start();
    u.ready();
    let a = u.addr(0);
    let pid = get_ok(&a, "/").num("worker_pid");
    let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(9000));
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (b"\x00\x01garbage\r\n\r\n".to_vec(), 400),
        (big.into_bytes(), 431),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi".to_vec(),
            405,
        ),
        (
            b"GET / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n".to_vec(),
            413,
        ),
        (b"GET / HTTP/1.1\r\nHost: t\r\n".to_vec(), 408), // never finished
    ];
    for (req, status) in cases {
        let r = raw(&a, &req).unwrap();
        assert_eq!(r.status, status, "{:?}", String::from_utf8_lossy(&req));
    }
    assert_eq!(get_ok(&a, "/").num("worker_pid"), pid, "same worker");
}

#[test]
fn max_requests_restarts_the_worker() {
    let mut u = upgrader()
        .args(["--bind", "127.0.0.1:0", "--max-requests", "3"])
        .start();
    u.ready();
    let a = u.addr(0);
    let first = get_ok(&a, "/").num("worker_pid");
    get_ok(&a, "/");
    assert_eq!(get_ok(&a, "/").num("requests"), 3);
    u.log.wait_from(0, &["served 3 requests: restarting"], LONG);
    // Every request keeps succeeding; a new worker takes over.
    wait_until("a new worker to serve", LONG, || {
        get_ok(&a, "/").num("worker_pid") != first
    });
}
