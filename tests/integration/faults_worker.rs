//! Fault injection against the built-in worker: saturating load during
//! a stop or reload, a stopped master, descriptor exhaustion, slow and
//! malformed clients.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::harness::*;

/// What one short-lived connection of the saturating load saw.
// The strings are read through Debug, in failure messages.
#[allow(dead_code)]
#[derive(Debug)]
enum Outcome {
    Ok,
    /// connect() refused: the listener is closed.
    Refused,
    /// Connected, then closed or reset before a single byte came back:
    /// the connection was still in the accept queue when the last
    /// process holding the listener closed it.
    Unanswered(String),
    /// Anything else: a truncated, reset or wrong response.
    Failed(String),
}

fn one_request(addr: &str) -> Outcome {
    let a: std::net::SocketAddr = addr.parse().unwrap();
    let mut s = match TcpStream::connect_timeout(&a, LONG) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Outcome::Refused;
        }
        Err(e) => return Outcome::Failed(format!("connect: {e}")),
    };
    s.set_read_timeout(Some(LONG)).unwrap();
    s.set_write_timeout(Some(LONG)).unwrap();
    // Each request holds its worker a few milliseconds, so with many
    // clients the accept queue never runs dry: saturation by
    // construction, whatever the machine's speed.
    let req = b"GET /_test/slow?ms=5 HTTP/1.1\r\nHost: t\r\n\r\n";
    if let Err(e) = s.write_all(req) {
        return Outcome::Unanswered(format!("write: {e}"));
    }
    let mut out = Vec::new();
    let r = s.read_to_end(&mut out);
    match (r, out.is_empty()) {
        (Err(e), true) => Outcome::Unanswered(format!("read: {e}")),
        (Ok(_), true) => Outcome::Unanswered("EOF".into()),
        (Err(e), false) => {
            Outcome::Failed(format!("read after {} bytes: {e}", out.len()))
        }
        (Ok(_), false) => match parse(&out) {
            Ok(r) if r.status == 200 && r.body.ends_with("}\n") => Outcome::Ok,
            Ok(r) => Outcome::Failed(format!("{r:?}")),
            Err(e) => Outcome::Failed(e.to_string()),
        },
    }
}

/// A saturating load: many client threads, one short-lived connection
/// after another, bounded in time and count. Each thread stops at its
/// first refusal (the listener is gone).
struct Saturate {
    stop: Arc<AtomicBool>,
    handles: Vec<std::thread::JoinHandle<Vec<Outcome>>>,
}

impl Saturate {
    fn start(addr: &str, threads: usize, limit: Duration) -> Saturate {
        let stop = Arc::new(AtomicBool::new(false));
        let handles = (0..threads)
            .map(|_| {
                let (stop, addr) = (stop.clone(), addr.to_string());
                std::thread::spawn(move || {
                    let deadline = Instant::now() + limit;
                    let mut seen = Vec::new();
                    while !stop.load(Ordering::Relaxed)
                        && Instant::now() < deadline
                        && seen.len() < 100_000
                    {
                        let o = one_request(&addr);
                        let refused = matches!(o, Outcome::Refused);
                        seen.push(o);
                        if refused {
                            break;
                        }
                    }
                    seen
                })
            })
            .collect();
        Saturate { stop, handles }
    }

    fn finish(self) -> Vec<Vec<Outcome>> {
        self.stop.store(true, Ordering::Relaxed);
        self.handles
            .into_iter()
            .map(|h| h.join().expect("load thread"))
            .collect()
    }
}

fn ok_count(runs: &[Vec<Outcome>]) -> usize {
    runs.iter()
        .flatten()
        .filter(|o| matches!(o, Outcome::Ok))
        .count()
}

/// Waits until `n` requests have been answered by the load (the workers
/// are saturated), from the worker's `requests` counter.
fn wait_served(addr: &str, n: u64) {
    wait_until(&format!("{n} requests served"), LONG, || {
        get(addr, "/").is_ok_and(|r| r.status == 200 && r.num("requests") >= n)
    });
}

#[test]
fn term_under_saturating_load_drains_at_once_without_sigkill() {
    let mut u = upgrader()
        .args(["--bind", "127.0.0.1:0", "-w", "2"])
        .args(["--graceful-timeout", "20"])
        .start();
    u.ready();
    let a = u.addr(0);
    let load = Saturate::start(&a, 48, Duration::from_secs(12));
    wait_served(&a, 50);
    let t = Instant::now();
    u.signal(Signal::SIGTERM);
    let st = u.wait_exit(Duration::from_secs(25));
    let took = t.elapsed();
    let runs = load.finish();
    let text = u.log.text();
    assert_eq!(st.code(), Some(0), "{text}");
    assert!(took < Duration::from_secs(3), "stop took {took:?}: {text}");
    assert!(!text.contains("SIGKILL"), "{text}");
    for run in &runs {
        // The allowed shape: answers, at most one connection left in the
        // queue when the listener closed, then refusals.
        let first_bad = run
            .iter()
            .position(|o| !matches!(o, Outcome::Ok))
            .unwrap_or(run.len());
        let tail = &run[first_bad..];
        let unanswered = tail
            .iter()
            .filter(|o| matches!(o, Outcome::Unanswered(_)))
            .count();
        assert!(
            tail.iter().all(|o| matches!(
                o,
                Outcome::Refused | Outcome::Unanswered(_)
            )) && unanswered <= 1,
            "after {first_bad} answers: {tail:?}"
        );
    }
    assert!(ok_count(&runs) > 0);
}

#[test]
fn hup_under_saturating_load_fails_nothing() {
    let mut u = upgrader()
        .args(["--bind", "127.0.0.1:0", "-w", "2"])
        .args(["--graceful-timeout", "20"])
        .start();
    u.ready();
    let a = u.addr(0);
    let old = u.spawned();
    let load = Saturate::start(&a, 48, Duration::from_secs(12));
    wait_served(&a, 50);
    let from = u.log.len();
    u.signal(Signal::SIGHUP);
    u.log.wait_from(from, &["generation 2 serving"], LONG);
    // The old generation finishes its requests in hand and goes, while
    // the load goes on.
    for pid in &old {
        u.log.wait_from(
            from,
            &[&format!("worker[{pid}]"), "exited with status 0"],
            Duration::from_secs(3),
        );
    }
    let runs = load.finish();
    let failed: Vec<_> = runs
        .iter()
        .flatten()
        .filter(|o| !matches!(o, Outcome::Ok))
        .collect();
    assert!(failed.is_empty(), "{} failed: {failed:?}", failed.len());
    assert!(!u.log.text().contains("SIGKILL"), "{}", u.log.text());
    assert_eq!(get_ok(&a, "/").num("generation"), 2);
}

/// SIGCONTs the master whatever happens to the test.
struct Continue(Pid);

impl Drop for Continue {
    fn drop(&mut self) {
        let _ = kill(self.0, Signal::SIGCONT);
    }
}

/// GET with a short bound, so a stuck worker fails the test quickly.
fn get_within(addr: &str, t: Duration) -> std::io::Result<Response> {
    let mut s = Stream::connect(addr)?;
    s.set_timeout(t)?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    parse(&out)
}

#[test]
fn a_stopped_master_does_not_stop_the_workers() {
    let mut u = upgrader()
        .args(["--bind", "127.0.0.1:0", "-w", "2", "--timeout", "1"])
        .start();
    u.ready();
    let a = u.addr(0);
    let cont = Continue(u.pid);
    kill(u.pid, Signal::SIGSTOP).unwrap();
    // Beats every 250 ms from two workers fill the master's 10-deep
    // queue in about 1.25 s; serve well past that.
    let t = Instant::now();
    let mut n = 0;
    while t.elapsed() < Duration::from_secs(3) && n < 100_000 {
        n += 1;
        let r = get_within(&a, Duration::from_secs(2)).unwrap_or_else(|e| {
            panic!("request {n} after {:?}: {e}", t.elapsed())
        });
        assert_eq!(r.status, 200, "{r:?}");
    }
    drop(cont);
    let r = get_ok(&a, "/");
    assert_eq!(r.num("master_pid"), u.pid.as_raw() as u64);
    // The master reads its socket again: a TTIN is carried out.
    let from = u.log.len();
    u.signal(Signal::SIGTTIN);
    u.log.wait_from(from, &["ready in"], LONG);
    assert!(alive(u.pid));
}

fn open_fds(pid: Pid) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn set_nofile(pid: Pid, soft: usize) {
    let st = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--nofile={soft}:")])
        .status()
        .expect("prlimit (util-linux)");
    assert!(st.success(), "prlimit --nofile={soft}: {st}");
}

#[test]
fn out_of_descriptors_the_worker_refuses_without_spinning() {
    let mut u = upgrader()
        .args(["--bind", "127.0.0.1:0", "--timeout", "0"])
        .start();
    u.ready();
    let a = u.addr(0);
    let worker = Pid::from_raw(get_ok(&a, "/").num("worker_pid") as i32);
    let fds = open_fds(worker);
    // No room for one more descriptor: the spare one is all there is.
    set_nofile(worker, fds);
    for _ in 0..5 {
        let r = get_within(&a, Duration::from_secs(2))
            .expect("an answer, not a hang");
        assert_eq!(r.status, 503, "{r:?}");
    }
    u.log.wait_from(
        0,
        &["too many open files", &format!("limit {fds}")],
        LONG,
    );
    // Not even the spare is enough: a connection waits in the queue.
    set_nofile(worker, fds - 2);
    let (tx, rx) = std::sync::mpsc::channel();
    let a2 = a.clone();
    std::thread::spawn(move || {
        let _ = tx.send(get_within(&a2, LONG));
    });
    // At most 10 clock ticks of 10 ms.
    assert_quiet_for_a_second(worker, Duration::from_millis(110));
    set_nofile(worker, 1024);
    let r = rx.recv_timeout(LONG).unwrap().expect("the queued request");
    assert_eq!(r.status, 200, "{r:?}");
    let r = get_ok(&a, "/");
    assert_eq!(r.num("worker_pid"), worker.as_raw() as u64);
}

#[test]
fn a_silent_client_cannot_make_the_worker_miss_its_heartbeat() {
    let mut u = upgrader()
        .args(["--bind", "127.0.0.1:0", "--timeout", "1"])
        .args(["--client-timeout", "10"])
        .start();
    u.ready();
    let a = u.addr(0);
    let worker = get_ok(&a, "/").num("worker_pid");
    let t = Instant::now();
    let mut s = Stream::connect(&a).unwrap();
    let mut out = Vec::new();
    let r = s.read_to_end(&mut out);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "{:?} {r:?}",
        t.elapsed()
    );
    if !out.is_empty() {
        assert_eq!(parse(&out).unwrap().status, 408);
    }
    // Three seconds of silent clients, one after another.
    while t.elapsed() < Duration::from_secs(3) {
        let mut s = Stream::connect(&a).unwrap();
        let _ = s.read_to_end(&mut Vec::new());
    }
    assert_eq!(get_ok(&a, "/").num("worker_pid"), worker);
    assert!(!u.log.text().contains("timed out"), "{}", u.log.text());
    u.log
        .wait_from(0, &["--client-timeout 10s: capped at 500ms"], LONG);
}

/// The worker that answers `/` now.
fn worker_of(a: &str) -> u64 {
    get_ok(a, "/").num("worker_pid")
}

#[test]
fn a_slowloris_gets_408_while_another_worker_serves() {
    let mut u = upgrader()
        .args(["--bind", "127.0.0.1:0", "-w", "2"])
        .args(["--client-timeout", "1"])
        .start();
    u.ready();
    let a = u.addr(0);
    let mut s = Stream::connect(&a).unwrap();
    let t = Instant::now();
    let mut got = Vec::new();
    let request =
        b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaa";
    let mut served = 0;
    for b in request.iter() {
        if s.write_all(&[*b]).is_err() {
            break;
        }
        // The other worker serves meanwhile.
        get_ok(&a, "/");
        served += 1;
        // The trickle: one byte every 200 ms (the fault itself).
        std::thread::sleep(Duration::from_millis(200));
        if t.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    s.set_timeout(Duration::from_secs(3)).unwrap();
    let _ = s.read_to_end(&mut got);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(parse(&got).unwrap().status, 408);
    assert!(served > 0);
    assert!(!u.log.text().contains("exited"), "{}", u.log.text());
}

#[test]
fn malformed_and_hostile_clients_leave_the_worker_serving() {
    let mut u = upgrader()
        .args(["--bind", "127.0.0.1:0", "--client-timeout", "1"])
        .start();
    u.ready();
    let a = u.addr(0);
    let worker = worker_of(&a);
    // A 100 KB header: 431.
    let mut big = b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 100 * 1024));
    big.extend(b"\r\n\r\n");
    let mut s = Stream::connect(&a).unwrap();
    let _ = s.write_all(&big);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    assert_eq!(parse(&out).unwrap().status, 431);
    assert_eq!(worker_of(&a), worker);
    // Garbage bytes: 400.
    let r = raw(&a, b"\x00\xff\x13garbage\r\n\x7f\r\n\r\n").unwrap();
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(worker_of(&a), worker);
    // A reset in the middle of a request.
    let s = TcpStream::connect(&a).unwrap();
    (&s).write_all(b"GET / HTTP/1.1\r\nHo").unwrap();
    nix::sys::socket::setsockopt(
        &s,
        nix::sys::socket::sockopt::Linger,
        &nix::libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    )
    .unwrap();
    drop(s);
    assert_eq!(worker_of(&a), worker);
    assert!(!u.log.text().contains("exited"), "{}", u.log.text());
}

#[test]
fn a_listener_shut_down_under_the_worker_does_not_kill_it() {
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    use nix::sys::socket::{Backlog, Shutdown, listen, shutdown};
    use std::os::fd::AsRawFd;
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap().to_string();
    let fd = l.as_raw_fd();
    // Inherited by the master as `fd:N`: CLOEXEC off just for the spawn.
    fcntl(&l, FcntlArg::F_SETFD(FdFlag::empty())).unwrap();
    let b = upgrader().args(["--bind", &format!("fd:{fd}"), "--timeout", "0"]);
    let mut u = b.start();
    fcntl(&l, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).unwrap();
    u.ready();
    let worker = Pid::from_raw(get_ok(&a, "/").num("worker_pid") as i32);
    // What an exec'd app may do to the shared socket: it stops
    // listening for every process that holds it.
    shutdown(fd, Shutdown::Both).unwrap();
    wait_until("the listener refuses", LONG, || {
        TcpStream::connect(&a).is_err()
    });
    // At most 10 clock ticks of 10 ms.
    assert_quiet_for_a_second(worker, Duration::from_millis(110));
    assert!(alive(worker), "worker died: {}", u.log.text());
    // The master's part (not tested here): listening again.
    listen(&l, Backlog::new(128).unwrap()).unwrap();
    // The port was kernel-chosen, so shutdown() gave it up and listen()
    // chose another; the socket (the one the worker holds) is the same.
    let a = l.local_addr().unwrap().to_string();
    let r = get_ok(&a, "/");
    assert_eq!(r.num("worker_pid"), worker.as_raw() as u64);
    assert!(!u.log.text().contains("exited"), "{}", u.log.text());
}
