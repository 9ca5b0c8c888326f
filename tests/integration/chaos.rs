//! Fault injection: the real binary attacked as a hostile operator
//! would (kill -9 of either master at each step of an upgrade, SIGKILL
//! of a keeper, SIGSTOP of a worker, a storm of signals, too few file
//! descriptors), each test asserting that nothing is lost and that no
//! process or file is left behind (SPEC 2, invariants 1 to 5).
//!
//! "Nothing is lost" has one exception the contract itself makes: a
//! master killed with SIGKILL takes its workers with it (invariant 4,
//! the parent-death signal), so a request in the hands of one of *its*
//! workers at that instant is cut; invariant 1 covers the crash of
//! another worker, not of the master. Where a test kills a master whose
//! workers serve the load, it asserts exactly that much: no connection
//! is ever refused (the listener stays open in the other master), at
//! most one request per killed sync worker fails, only among requests
//! begun before those workers were dead, and everything after is served.
//! Everywhere else no request may fail.
//!
//! Every test marks its processes with `CHAOS_MARK=<its temp dir>` in
//! the environment (masters, workers, keepers, apps and the apps'
//! children all inherit it) and points `XDG_RUNTIME_DIR` into its temp
//! dir, so "nothing left behind" is checked by scanning /proc for the
//! mark and by listing the temp dir (pidfiles, `.2`, the masters'
//! notify dirs), not by trusting pids that may be reused.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::harness::*;

// ---------------------------------------------------------------------
// Helpers

/// A master for a chaos test: its processes carry the test's mark, its
/// notify directories go under `run/` in the test's temp dir.
fn chaos() -> Builder {
    let b = upgrader();
    let dir = b.dir().to_path_buf();
    let run = dir.join("run");
    std::fs::create_dir(&run).unwrap();
    b.env("XDG_RUNTIME_DIR", run.to_str().unwrap())
        .env("CHAOS_MARK", dir.to_str().unwrap())
}

/// Live processes whose environment carries `CHAOS_MARK=<mark>`, as
/// "pid (comm)". A zombie's environment reads empty: it does not count.
fn marked(mark: &Path) -> Vec<(Pid, String)> {
    let want = format!("CHAOS_MARK={}", mark.display()).into_bytes();
    let me = std::process::id() as i32;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let pid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        if pid == me {
            return None;
        }
        let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
        if !env.split(|b| *b == 0).any(|v| v == want.as_slice()) {
            return None;
        }
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .unwrap_or_default();
        Some((Pid::from_raw(pid), comm.trim().to_string()))
    })
    .collect()
}

/// SIGKILLs, on drop, every process that still carries the test's mark:
/// the backstop for what a failing test leaves (the `Upgrader` guard
/// reaches only the first master's process group, and each worker leads
/// its own). Only processes this test started carry the mark.
struct Reaper(PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        for (p, _) in marked(&self.0) {
            let _ = kill(p, Signal::SIGKILL);
        }
    }
}

/// Requires every process of the test to be gone within `LONG`
/// (invariant 4: workers, keepers, apps and the apps' children go with
/// their master).
fn assert_no_process_left(u: &Upgrader, after: &str) {
    let deadline = Instant::now() + LONG;
    loop {
        let left = marked(&u.dir.0);
        if left.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            let _reap = Reaper(u.dir.0.clone());
            panic!(
                "left behind {LONG:?} after {after}: {left:?}\nlog:\n{}",
                u.log.text()
            );
        }
        poll_pause();
    }
}

/// The names in a directory.
fn files_in(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect()
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// `wait_until` with the files and the log in the failure message.
fn wait_until_or_log(
    u: &Upgrader,
    what: &str,
    mut cond: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + LONG;
    while !cond() {
        if Instant::now() >= deadline {
            panic!(
                "timed out after {LONG:?} waiting for {what}; files: {:?}\n\
                 log:\n{}",
                files_in(&u.dir.0),
                u.log.text()
            );
        }
        poll_pause();
    }
}

/// The test dir holds the fake systemd's socket, the runtime dir and
/// `u.pid` naming `live`, nothing else (no `u.pid.2`, no temporary
/// pidfile).
fn assert_only_the_pidfile_of(u: &Upgrader, live: Pid) {
    let pidfile = u.dir.path("u.pid");
    let expected = names(&["systemd-notify.sock", "run", "u.pid"]);
    wait_until_or_log(u, &format!("u.pid naming {live}, alone"), || {
        files_in(&u.dir.0) == expected
            && std::fs::read_to_string(&pidfile)
                .is_ok_and(|t| t.trim() == live.to_string())
    });
}

/// Stops `live` (the only master left) with TERM and requires a clean
/// end: it exits (status 0 when it is the test's child), no process of
/// the test is left, the port is free, and the temp dir holds nothing of
/// any master, dead or alive: no pidfile, no `.2`, no notify dir (a
/// SIGKILLed master's is removed by the next master that starts).
fn stop_and_assert_clean(u: &mut Upgrader, live: Pid, addr: &str) {
    // The scan below must see what it has to: the mark reached `live`.
    assert!(
        marked(&u.dir.0).iter().any(|(p, _)| *p == live),
        "master {live} does not carry the test's mark"
    );
    let from = u.log.len();
    kill(live, Signal::SIGTERM).unwrap();
    if live == u.pid {
        let st = u.wait_exit(LONG);
        assert_eq!(st.code(), Some(0), "TERM: {st}\nlog:\n{}", u.log.text());
    } else {
        u.log.wait_from(
            from,
            &[&format!("master[{live}]: master exiting")],
            LONG,
        );
        wait_until_or_log(u, &format!("{live} gone"), || !alive(live));
    }
    assert_no_process_left(u, &format!("TERM to {live}"));
    assert!(port_free(addr), "{addr} held: {}", who_holds(addr));
    let run = u.dir.path("run");
    wait_until_or_log(u, "nothing but the fake systemd in the dir", || {
        files_in(&u.dir.0) == names(&["systemd-notify.sock", "run"])
            && files_in(&run).is_empty()
    });
}

/// Waits for the test's child (the first master) to be reaped, without
/// waiting for its output pipes to close: a new master that outlives it
/// holds them.
fn reap_first_master(u: &mut Upgrader) -> std::process::ExitStatus {
    let deadline = Instant::now() + LONG;
    loop {
        if let Some(st) = u.child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() >= deadline {
            panic!(
                "master {} not reaped after {LONG:?}\nlog:\n{}",
                u.pid,
                u.log.text()
            );
        }
        poll_pause();
    }
}

/// `upgrader -s status --pid u.pid` in the test dir: (exit code, output).
fn status(u: &Upgrader) -> (i32, String) {
    let (st, out) = run_to_end(
        &["-s", "status", "--pid", "u.pid", "--wait", "5"],
        &u.dir.0,
    );
    (st.code().unwrap_or(-1), out)
}

/// `-s status` answers, from `master`.
fn assert_status_from(u: &Upgrader, master: Pid) {
    let (rc, out) = status(u);
    assert_eq!(rc, 0, "-s status: {out}\nlog:\n{}", u.log.text());
    assert!(
        out.contains(&format!("master {master} (master)")),
        "-s status is not from master {master}: {out}"
    );
}

/// The parent of `pid`, from /proc.
fn parent_of(pid: u64) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The master that served `r`: the built-in worker says so; the Python
/// app names its parent, the keeper, whose parent is the master.
fn master_of(r: &Response) -> Option<u64> {
    let j = r.json();
    j["master_pid"]
        .as_u64()
        .or_else(|| parent_of(j["ppid"].as_u64()?))
}

/// Waits until `want` answers on `addr`.
fn wait_served_by(u: &Upgrader, addr: &str, want: Pid) {
    wait_until_or_log(u, &format!("master {want} to answer"), || {
        get(addr, "/").is_ok_and(|r| {
            r.status == 200 && master_of(&r) == Some(want.as_raw() as u64)
        })
    });
}

/// Workers `master` logged as spawned (`master[M]: spawned worker[W]`,
/// or `master.2[M]: ...`).
fn workers_of(u: &Upgrader, master: Pid) -> Vec<Pid> {
    let tags = [format!("master[{master}]:"), format!("master.2[{master}]:")];
    u.log
        .all()
        .iter()
        .filter(|l| tags.iter().any(|t| l.contains(t.as_str())))
        .filter_map(|l| l.split("spawned worker[").nth(1))
        .filter_map(|r| r.split(']').next()?.parse().ok())
        .map(Pid::from_raw)
        .collect()
}

/// Waits until none of `pids` is alive; returns when that was seen.
fn wait_dead(u: &Upgrader, pids: &[Pid], what: &str) -> Instant {
    wait_until_or_log(u, what, || pids.iter().all(|p| !alive(*p)));
    Instant::now()
}

/// A copy of the binary, started by its path, that a test later swaps
/// for a gate: a script that waits (bounded, about 10 s) for the file
/// `go` before it execs the real binary, so a new master started by USR2
/// stays "booting" exactly as long as the test wants.
struct GatedBinary {
    dir: TempDir,
    exe: PathBuf,
    go: PathBuf,
}

impl GatedBinary {
    fn new() -> GatedBinary {
        let dir = TempDir::new();
        let exe = dir.path("upgrader");
        std::fs::copy(BIN, &exe).unwrap();
        let go = dir.path("go");
        GatedBinary { dir, exe, go }
    }

    fn path(&self) -> &str {
        self.exe.to_str().unwrap()
    }

    /// From now on, USR2 runs the gate (closed until `open`).
    fn install_gate(&self) {
        use std::os::unix::fs::PermissionsExt;
        let gate = self.dir.path("gate");
        std::fs::write(
            &gate,
            format!(
                "#!/bin/sh\ni=0\nwhile [ ! -e '{go}' ] && [ $i -lt 1000 ]; \
                 do sleep 0.01; i=$((i+1)); done\nexec '{BIN}' \"$@\"\n",
                go = self.go.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(
            &gate,
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::fs::rename(&gate, &self.exe).unwrap();
    }

    fn open(&self) {
        std::fs::write(&self.go, "").unwrap();
    }
}

/// The last "USR2: new master N spawned" at or after line `from`.
fn spawned_new_master(u: &Upgrader, from: usize) -> Pid {
    let (_, _, line) =
        u.log
            .wait_from(from, &["USR2: new master", "spawned"], LONG);
    pid_after(&line, "new master ")
}

fn pid_after(line: &str, pat: &str) -> Pid {
    line.split(pat)
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
        .map(Pid::from_raw)
        .unwrap_or_else(|| panic!("no pid after {pat:?} in {line:?}"))
}

/// One USR2 + TERM cycle of `master` by hand; returns the promoted new
/// master, once it is the one in the pidfile.
fn upgrade_cycle(u: &Upgrader, master: Pid) -> Pid {
    let from = u.log.len();
    kill(master, Signal::SIGUSR2).unwrap();
    let new = spawned_new_master(u, from);
    u.log
        .wait_from(from, &[&format!("new master {new} ready")], LONG);
    kill(master, Signal::SIGTERM).unwrap();
    u.log
        .wait_from(from, &[&format!("master[{new}]: promoted")], LONG);
    assert_eq!(wait_pidfile(&u.dir.path("u.pid"), Some(master)), new);
    new
}

/// A failed request of the load, and when it began.
struct Failure {
    began: Instant,
    what: String,
}

#[derive(Default)]
struct Report {
    ok: u64,
    failures: Vec<Failure>,
    /// When the last request that succeeded began.
    last_ok: Option<Instant>,
}

/// A bounded load (like `harness::Load`) that records when each failed
/// request began, and tells a refused connect from a cut request.
struct TimedLoad {
    stop: Arc<AtomicBool>,
    handles: Vec<std::thread::JoinHandle<Report>>,
}

/// One GET; a complete 200 with a JSON body, or why not.
fn one_request(addr: &str) -> Result<(), String> {
    let mut s = Stream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).map_err(|e| format!("read: {e}"))?;
    let r = parse(&out).map_err(|e| format!("response: {e}"))?;
    if r.status != 200 {
        return Err(format!("status: {r:?}"));
    }
    Ok(())
}

impl TimedLoad {
    fn start(addr: &str, threads: usize) -> TimedLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let handles = (0..threads)
            .map(|_| {
                let stop = stop.clone();
                let addr = addr.to_string();
                std::thread::spawn(move || {
                    // Bounded even if the test never stops it.
                    let deadline = Instant::now() + Duration::from_secs(60);
                    let mut r = Report::default();
                    while !stop.load(Ordering::Relaxed)
                        && Instant::now() < deadline
                        && r.ok < 1_000_000
                    {
                        let began = Instant::now();
                        match one_request(&addr) {
                            Ok(()) => {
                                r.ok += 1;
                                r.last_ok = Some(began);
                            }
                            Err(what) => {
                                r.failures.push(Failure { began, what })
                            }
                        }
                    }
                    r
                })
            })
            .collect();
        TimedLoad { stop, handles }
    }

    fn finish(self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Report::default();
        for h in self.handles {
            let r = h.join().expect("load thread");
            all.ok += r.ok;
            all.failures.extend(r.failures);
            all.last_ok = all.last_ok.max(r.last_ok);
        }
        all
    }
}

fn describe_failures(r: &Report, since: Instant) -> String {
    r.failures
        .iter()
        .take(5)
        .map(|f| format!("{:?} after the start: {}", f.began - since, f.what))
        .collect::<Vec<_>>()
        .join("\n")
}

/// No request failed, and the load made some.
fn assert_nothing_lost(r: &Report, u: &Upgrader, t0: Instant) {
    assert!(
        r.failures.is_empty(),
        "{} of {} requests failed:\n{}\nlog:\n{}",
        r.failures.len(),
        r.ok + r.failures.len() as u64,
        describe_failures(r, t0),
        u.log.text()
    );
    assert!(r.ok > 0, "the load made no request at all");
}

/// What a SIGKILL of a master whose `killed` sync workers served the
/// load may cost (see the module's header), and nothing more: at most
/// one request per killed worker, cut (closed or reset, never refused or
/// left unanswered), each begun before they were all seen dead
/// (`dead_at`), and requests begun after that served.
fn assert_lost_only_in_killed_hands(
    r: &Report,
    u: &Upgrader,
    t0: Instant,
    killed: usize,
    dead_at: Instant,
) {
    // Cut: the connection closed or reset under the request (a worker
    // died holding it). Not a refused connect, nor a timeout (a
    // connection nobody served).
    let cut = |w: &str| {
        w.starts_with("read: Connection reset")
            || w.starts_with("write: Connection reset")
            || w.starts_with("write: Broken pipe")
            || w.starts_with("response: no complete response")
            || w.starts_with("response: body of")
    };
    let other = r.failures.iter().any(|f| !cut(&f.what));
    let late = r.failures.iter().any(|f| f.began >= dead_at);
    assert!(
        !other && !late && r.failures.len() <= killed,
        "{} of {} requests failed ({} workers killed, dead {:?} after the \
         start):\n{}\nlog:\n{}",
        r.failures.len(),
        r.ok + r.failures.len() as u64,
        killed,
        dead_at - t0,
        describe_failures(r, t0),
        u.log.text()
    );
    assert!(
        r.last_ok.is_some_and(|t| t > dead_at),
        "no request served after the kill"
    );
}

// ---------------------------------------------------------------------
// 1. kill -9 of the old master at each step of an upgrade
//
// The contract (SPEC 7, upgrade.rs and successor.rs): the new master
// never needs the old one once it runs. It holds the listeners from its
// exec on, gets no parent-death signal, watches the old master with a
// pidfd and is promoted the moment the old one is gone (renaming
// `u.pid.2` over `u.pid`, or writing `u.pid` itself when it is promoted
// before it serves). So at every step the new master ends up promoted,
// serving, in the pidfile and upgradable; the old master's workers die
// with it (invariant 4); connections never see a closed port.

#[derive(Clone, Copy, Debug, PartialEq)]
enum Step {
    /// Right after USR2: the new master has not even exec'd the binary
    /// yet (held in the gate), so it starts with its predecessor gone.
    Booting,
    /// The new master runs, its first generation still booting (exec
    /// workers held until the test releases them): it is promoted
    /// before it serves, and then writes `u.pid` itself.
    WorkersBooting,
    /// The new master is ready (`u.pid.2` exists), no TERM yet: both
    /// generations serve.
    Ready,
    /// TERM sent, the old master drains a slow request.
    Draining,
}

fn kill_9_old_master(step: Step) {
    let bin = GatedBinary::new();
    // For WorkersBooting: once `hold` exists, a new exec worker waits
    // (bounded, about 10 s) for `release` before it starts the app.
    let hold = bin.dir.path("hold");
    let release = bin.dir.path("release");
    let script = format!(
        "if [ -e '{}' ]; then i=0; while [ ! -e '{}' ] && [ $i -lt 1000 ]; \
         do sleep 0.01; i=$((i+1)); done; fi; exec python3 '{PYTHON_APP}'",
        hold.display(),
        release.display()
    );
    let exec = ["--ready", "notify", "--exec", "sh", "-c", &script];
    let mut u = chaos()
        .program(bin.path())
        .args(MANUAL_UPGRADE)
        .args(["-w", "2"])
        .args(
            exec.iter()
                .copied()
                .filter(|_| step == Step::WorkersBooting),
        )
        .start();
    let _reaper = Reaper(u.dir.0.clone());
    u.ready();
    let a = u.addr(0);
    let old = u.pid;
    let old_workers = workers_of(&u, old);
    assert_eq!(old_workers.len(), 2, "{old_workers:?}");
    bin.install_gate();
    if step != Step::Booting {
        bin.open();
    }
    std::fs::write(&hold, "").unwrap();
    let t0 = Instant::now();
    // Held by an old worker from before the upgrade: the drain lasts.
    let slow = (step == Step::Draining).then(|| slow_in_flight(&a, 5000));
    let load = TimedLoad::start(&a, 2);
    u.signal(Signal::SIGUSR2);
    let new = spawned_new_master(&u, 0);
    let ready = format!("new master {new} ready");
    match step {
        Step::Booting => {
            assert!(u.log.find_from(0, &[&ready]).is_none());
        }
        Step::WorkersBooting => {
            wait_until_or_log(&u, "the new master's workers held", || {
                workers_of(&u, new).len() == 2
            });
            assert!(u.log.find_from(0, &[&ready]).is_none());
        }
        Step::Ready => {
            u.log.wait_from(0, &[&ready], LONG);
            assert!(u.dir.path("u.pid.2").exists());
        }
        Step::Draining => {
            u.log.wait_from(0, &[&ready], LONG);
            u.signal(Signal::SIGTERM);
            u.log.wait_from(
                0,
                &[&format!("retiring: new master {new} takes over")],
                LONG,
            );
            // The idle old worker finishes what it holds and goes; then
            // the slow request is all the old master's workers hold.
            wait_until_or_log(&u, "one old worker left", || {
                old_workers.iter().filter(|p| alive(**p)).count() == 1
            });
        }
    }
    let busy: Vec<Pid> =
        old_workers.iter().copied().filter(|p| alive(*p)).collect();
    let killed_at = Instant::now();
    kill(old, Signal::SIGKILL).unwrap();
    let st = reap_first_master(&mut u);
    assert_eq!(st.signal(), Some(9), "{st}");
    // Invariant 4: the old master's workers go with it, the draining
    // one too, without finishing its 5 s request.
    let dead_at = wait_dead(&u, &busy, "the old master's workers to die");
    assert!(
        dead_at - killed_at < Duration::from_secs(3),
        "the old workers outlived their master by {:?}",
        dead_at - killed_at
    );
    bin.open();
    u.log
        .wait_from(0, &[&format!("master[{new}]: promoted")], LONG);
    std::fs::write(&release, "").unwrap();
    wait_served_by(&u, &a, new);
    assert_only_the_pidfile_of(&u, new);
    assert_status_from(&u, new);
    // The promoted master can be upgraded again.
    let newer = upgrade_cycle(&u, new);
    wait_served_by(&u, &a, newer);
    assert_only_the_pidfile_of(&u, newer);
    let report = load.finish();
    match step {
        // After TERM only the new master's workers took connections;
        // the old ones held nothing but the slow request.
        Step::Draining => assert_nothing_lost(&report, &u, t0),
        _ => assert_lost_only_in_killed_hands(
            &report,
            &u,
            t0,
            old_workers.len(),
            dead_at,
        ),
    }
    if let Some((mut s, head)) = slow {
        // The price of invariant 4 (see the module's header): the
        // request a killed master's worker held is cut, not finished.
        let mut rest = Vec::new();
        let r = s.read_to_end(&mut rest);
        let text = format!("{head}{}", String::from_utf8_lossy(&rest));
        assert!(
            r.is_err() || parse(text.as_bytes()).is_err(),
            "a worker of the SIGKILLed master finished its request: {text:?}"
        );
    }
    stop_and_assert_clean(&mut u, newer, &a);
}

#[test]
fn kill_9_of_the_old_master_while_the_new_one_boots() {
    kill_9_old_master(Step::Booting);
}

#[test]
fn kill_9_of_the_old_master_while_the_new_ones_workers_boot() {
    kill_9_old_master(Step::WorkersBooting);
}

#[test]
fn kill_9_of_the_old_master_once_the_new_one_is_ready() {
    kill_9_old_master(Step::Ready);
}

#[test]
fn kill_9_of_the_old_master_while_it_drains() {
    kill_9_old_master(Step::Draining);
}

// ---------------------------------------------------------------------
// 2. kill -9 of the new master at each step of an upgrade
//
// The contract (SPEC 2.2 and 7.2): until retirement the old master
// serves untouched; a new master that dies (EOF on the ready pipe, or
// reaped) is an upgrade that failed, or a new master that died before
// retirement: logged with its pid and status, `u.pid.2` removed, and
// the next USR2 accepted. After its promotion the new master is the
// only master: killed, it takes its workers along and frees the port
// (invariant 4), and its stale pidfile does not block the next start.
// (Killed while the old one drains after TERM, the old one takes over
// again: regression.rs covers that step.)

#[derive(Clone, Copy, Debug, PartialEq)]
enum NewStep {
    /// Still in the gate, before it exec'd the binary.
    Booting,
    /// Ready, serving beside the old master, before TERM.
    Ready,
    /// Promoted: the old master retired and exited.
    Promoted,
}

fn kill_9_new_master(step: NewStep) {
    let bin = GatedBinary::new();
    let mut u = chaos()
        .program(bin.path())
        .args(MANUAL_UPGRADE)
        .args(["-w", "2"])
        .start();
    let _reaper = Reaper(u.dir.0.clone());
    u.ready();
    let a = u.addr(0);
    let old = u.pid;
    bin.install_gate();
    if step != NewStep::Booting {
        bin.open();
    }
    let t0 = Instant::now();
    let load = (step != NewStep::Promoted).then(|| TimedLoad::start(&a, 2));
    u.signal(Signal::SIGUSR2);
    let new = spawned_new_master(&u, 0);
    if step != NewStep::Booting {
        u.log
            .wait_from(0, &[&format!("new master {new} ready")], LONG);
    }
    if step == NewStep::Promoted {
        u.signal(Signal::SIGTERM);
        assert_eq!(reap_first_master(&mut u).code(), Some(0));
        u.log
            .wait_from(0, &[&format!("master[{new}]: promoted")], LONG);
        wait_served_by(&u, &a, new);
        assert_only_the_pidfile_of(&u, new);
        let workers = workers_of(&u, new);
        kill(new, Signal::SIGKILL).unwrap();
        wait_until_or_log(&u, "the new master gone", || !alive(new));
        wait_dead(&u, &workers, "its workers to die with it");
        assert_no_process_left(&u, "SIGKILL of the promoted master");
        // Nobody is left to serve: the port is free (invariant 4).
        assert!(port_free(&a), "{a} held: {}", who_holds(&a));
        // Its pidfile stays, naming a dead pid, and so does its notify
        // dir; neither blocks the next start on the same port, which
        // removes the stale notify dir.
        assert_only_the_pidfile_of(&u, new);
        let stale = files_in(&u.dir.path("run"));
        assert!(
            stale.len() == 1
                && stale
                    .iter()
                    .all(|d| d.starts_with(&format!("upgrader.{new}."))),
            "the killed master's notify dir alone: {stale:?}"
        );
        let pidfile = u.dir.path("u.pid");
        let mut next = upgrader()
            .args(["--bind", &a, "-p", pidfile.to_str().unwrap()])
            .env("XDG_RUNTIME_DIR", u.dir.path("run").to_str().unwrap())
            .env("CHAOS_MARK", u.dir.0.to_str().unwrap())
            .start();
        next.ready();
        get_ok(&a, "/");
        assert_only_the_pidfile_of(&u, next.pid);
        next.signal(Signal::SIGTERM);
        let st = next.wait_exit(LONG);
        assert_eq!(st.code(), Some(0), "{st}\nlog:\n{}", next.log.text());
        assert_no_process_left(&u, "TERM to the next master");
        assert!(port_free(&a), "{a} held: {}", who_holds(&a));
        assert!(files_in(&u.dir.path("run")).is_empty());
        assert_eq!(files_in(&u.dir.0), names(&["systemd-notify.sock", "run"]));
        return;
    }
    let workers = workers_of(&u, new);
    kill(new, Signal::SIGKILL).unwrap();
    let died = match step {
        NewStep::Booting => {
            format!("upgrade failed: new master {new} killed by SIGKILL")
        }
        _ => format!("new master {new} killed by SIGKILL before retirement"),
    };
    u.log.wait_from(0, &[&died, "this master carries on"], LONG);
    let dead_at = wait_dead(&u, &workers, "the new master's workers to die");
    assert_only_the_pidfile_of(&u, old);
    assert_status_from(&u, old);
    wait_served_by(&u, &a, old);
    // The next USR2 is accepted and completes.
    bin.open();
    let newer = upgrade_cycle(&u, old);
    wait_served_by(&u, &a, newer);
    assert_only_the_pidfile_of(&u, newer);
    let report = load.unwrap().finish();
    match step {
        // It served nothing.
        NewStep::Booting => assert_nothing_lost(&report, &u, t0),
        _ => assert_lost_only_in_killed_hands(
            &report,
            &u,
            t0,
            workers.len(),
            dead_at,
        ),
    }
    stop_and_assert_clean(&mut u, newer, &a);
}

#[test]
fn kill_9_of_the_new_master_while_it_boots() {
    kill_9_new_master(NewStep::Booting);
}

#[test]
fn kill_9_of_the_new_master_once_ready_before_term() {
    kill_9_new_master(NewStep::Ready);
}

#[test]
fn kill_9_of_the_new_master_after_its_promotion() {
    kill_9_new_master(NewStep::Promoted);
}

// ---------------------------------------------------------------------
// 3. SIGKILL of an exec worker's keeper

#[test]
fn sigkill_of_a_keeper_takes_the_app_and_its_child_and_is_respawned() {
    let mut u = chaos()
        .args(MANUAL_UPGRADE)
        .args(["-w", "2", "--ready", "notify", "--exec", PYTHON_APP])
        .env("APP_FORK_CHILD", "1")
        .start();
    let _reaper = Reaper(u.dir.0.clone());
    u.ready();
    let a = u.addr(0);
    let keepers = u.spawned();
    assert_eq!(keepers.len(), 2, "{keepers:?}");
    let j = get_ok(&a, "/").json();
    let app = Pid::from_raw(j["pid"].as_u64().unwrap() as i32);
    let child = Pid::from_raw(j["child_pid"].as_u64().unwrap() as i32);
    let keeper = Pid::from_raw(j["pgid"].as_u64().unwrap() as i32);
    assert!(keepers.contains(&keeper), "{j}");
    // The app is the keeper's child, as /proc says too.
    let children = std::fs::read_to_string(format!(
        "/proc/{keeper}/task/{keeper}/children"
    ))
    .unwrap();
    assert!(
        children.split_whitespace().any(|c| c == app.to_string()),
        "{children:?} {j}"
    );
    assert!(alive(child), "the app's child runs");
    let t0 = Instant::now();
    let load = TimedLoad::start(&a, 2);
    let from = u.log.len();
    kill(keeper, Signal::SIGKILL).unwrap();
    let t = Instant::now();
    let dead_at = wait_dead(&u, &[app, child], "the app and its child to die");
    assert!(
        dead_at - t < Duration::from_secs(2),
        "app and child died {:?} after the keeper",
        dead_at - t
    );
    u.log.wait_from(
        from,
        &[&format!("worker[{keeper}]"), "killed by SIGKILL"],
        LONG,
    );
    let (_, _, line) = u.log.wait_from(from, &["spawned worker["], LONG);
    let respawned = pid_after(&line, "spawned worker[");
    // Serving continues, and the respawned worker takes its share.
    wait_until_or_log(&u, "the respawned worker to answer", || {
        get(&a, "/").is_ok_and(|r| {
            r.status == 200
                && r.json()["pgid"].as_u64() == Some(respawned.as_raw() as u64)
        })
    });
    let report = load.finish();
    // The killed worker is the app: what it held is the one request a
    // crash may cost; the other worker served throughout.
    assert_lost_only_in_killed_hands(&report, &u, t0, 1, dead_at);
    assert_only_the_pidfile_of(&u, u.pid);
    let master = u.pid;
    stop_and_assert_clean(&mut u, master, &a);
}

// ---------------------------------------------------------------------
// 4. SIGSTOP of a built-in worker
//
// (SIGSTOP of the master, with workers serving meanwhile and the master
// carrying on after SIGCONT, is faults_worker.rs's
// a_stopped_master_does_not_stop_the_workers.)

/// When the master wrote a log line: its timestamp
/// (`2026-12-07T11:58:22.222Z`), as time since midnight.
fn logged_at(line: &str) -> Duration {
    let time = line
        .split_whitespace()
        .next()
        .and_then(|t| t.split_once('T'))
        .map(|(_, t)| t.trim_end_matches('Z'))
        .unwrap_or_else(|| panic!("no timestamp in {line:?}"));
    let f: Vec<f64> = time.split(':').map(|x| x.parse().unwrap()).collect();
    Duration::from_secs_f64(f[0] * 3600.0 + f[1] * 60.0 + f[2])
}

#[test]
fn a_stopped_worker_is_killed_and_replaced_while_the_other_serves() {
    let mut u = chaos()
        .args(MANUAL_UPGRADE)
        .args(["-w", "2", "--timeout", "1", "--kill-after", "0.5"])
        .start();
    let _reaper = Reaper(u.dir.0.clone());
    u.ready();
    let a = u.addr(0);
    let workers = u.spawned();
    assert_eq!(workers.len(), 2);
    let victim = workers[0];
    // Idle (nothing has connected yet): it holds no request when stopped.
    wait_until_or_log(&u, "the worker idle in epoll", || {
        idle_in_epoll(victim)
    });
    kill(victim, Signal::SIGSTOP).unwrap();
    let t0 = Instant::now();
    let load = TimedLoad::start(&a, 2);
    let w = format!("worker[{victim}]");
    let (i, _, abrt) = u.log.wait_from(0, &[&w, "timed out", "SIGABRT"], LONG);
    let (_, _, sigkill) = u.log.wait_from(i, &[&w, "SIGKILL"], LONG);
    // By the master's own clock (its log's timestamps), not by when the
    // lines reached the test on a busy machine.
    let (t_abrt, t_kill) = (logged_at(&abrt), logged_at(&sigkill));
    let day = Duration::from_secs(24 * 3600);
    // (Across midnight the clock of the day wraps.)
    let gap = if t_kill >= t_abrt {
        t_kill - t_abrt
    } else {
        t_kill + day - t_abrt
    };
    assert!(
        gap >= Duration::from_millis(450) && gap < Duration::from_millis(1500),
        "SIGKILL {gap:?} after SIGABRT (--kill-after 0.5):\n{abrt}\n{sigkill}"
    );
    u.log.wait_from(i, &[&w, "killed by SIGKILL"], LONG);
    let (_, _, line) = u.log.wait_from(i, &["spawned worker["], LONG);
    let replacement = pid_after(&line, "spawned worker[");
    wait_until_or_log(&u, "the replacement to answer", || {
        get(&a, "/").is_ok_and(|r| {
            r.status == 200
                && r.json()["worker_pid"].as_u64()
                    == Some(replacement.as_raw() as u64)
        })
    });
    let report = load.finish();
    assert!(!alive(victim));
    // The stopped worker held nothing; the other one served it all.
    assert_nothing_lost(&report, &u, t0);
    assert_only_the_pidfile_of(&u, u.pid);
    let master = u.pid;
    stop_and_assert_clean(&mut u, master, &a);
}

// ---------------------------------------------------------------------
// 5. A burst of signals

/// `upgrader -s status --json`.
fn status_json(u: &Upgrader) -> serde_json::Value {
    let (st, out) = run_to_end(
        &["-s", "status", "--pid", "u.pid", "--wait", "5", "--json"],
        &u.dir.0,
    );
    assert_eq!(st.code(), Some(0), "-s status --json: {out}");
    serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("-s status --json ({e}): {out}"))
}

/// The pids of `pid`'s children, sorted.
fn children_of(pid: Pid) -> Vec<i32> {
    let mut v: Vec<i32> =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|c| c.parse().ok())
            .collect();
    v.sort();
    v
}

#[test]
fn a_burst_of_1000_mixed_signals_leaves_a_sane_master() {
    let mut u = chaos()
        .args(MANUAL_UPGRADE)
        .args(["-w", "2", "--graceful-timeout", "3"])
        .start();
    let _reaper = Reaper(u.dir.0.clone());
    u.ready();
    let a = u.addr(0);
    let t0 = Instant::now();
    let load = TimedLoad::start(&a, 2);
    // Everything but the stops (TERM, INT, QUIT) and SIGSTOP.
    let kinds = [
        Signal::SIGHUP,
        Signal::SIGTTIN,
        Signal::SIGTTOU,
        Signal::SIGWINCH,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGCHLD,
    ];
    // In rounds of ten, each closed by a control round trip (the master
    // reads its signals before its control clients in each round of its
    // loop, so by the answer it has handled every signal sent before):
    // sent all at once, the kernel would coalesce the 1,000 into one of
    // each kind. A round whose USR2 finds no reload in flight starts a
    // new master, and every later USR2 is refused while it exists.
    for round in 0..100usize {
        for i in round * 10..round * 10 + 10 {
            // A fixed but irregular order (i * 3 + i / 7 mod 7).
            let sig = kinds[(i * 3 + i / 7) % kinds.len()];
            kill(u.pid, sig).unwrap();
        }
        let (rc, out) = status(&u);
        assert_eq!(rc, 0, "round {round}: {out}\nlog:\n{}", u.log.text());
    }
    assert!(u.child.try_wait().unwrap().is_none(), "the master died");
    // Settle: every new master that USR2 started is ready or failed; a
    // ready one is rolled back (TERM to the new master, SPEC 7.5) so the
    // first master stays the one to stop. Then a synchronous reload;
    // it is refused while a new master exists, so the round repeats
    // (bounded) until it is accepted and complete.
    let mut news: Vec<Pid> = Vec::new();
    let mut reloaded = None;
    for _round in 0..5 {
        // A control round trip: the master reads its signals before its
        // control clients in each round of its loop, so by the answer it
        // has read every signal sent before, and logged what they did.
        let (rc, out) = status(&u);
        assert_eq!(rc, 0, "{out}\nlog:\n{}", u.log.text());
        for l in u.log.all() {
            if l.contains("USR2: new master") && l.contains("spawned") {
                let p = pid_after(&l, "new master ");
                if !news.contains(&p) {
                    news.push(p);
                }
            }
        }
        for &new in &news {
            let ready = format!("new master {new} ready");
            let failed = format!("upgrade failed: new master {new}");
            wait_until_or_log(&u, &format!("an outcome for {new}"), || {
                u.log.find_from(0, &[&ready]).is_some()
                    || u.log.find_from(0, &[&failed]).is_some()
            });
            if u.log.find_from(0, &[&failed]).is_none() && alive(new) {
                kill(new, Signal::SIGTERM).unwrap();
                u.log.wait_from(
                    0,
                    &[&format!("new master {new} exited with status 0")],
                    LONG,
                );
            }
        }
        let (st, out) = run_to_end(
            &["-s", "reload", "--pid", "u.pid", "--wait", "10"],
            &u.dir.0,
        );
        if st.code() == Some(0) {
            reloaded = Some(out);
            break;
        }
    }
    let reloaded = reloaded.unwrap_or_else(|| {
        panic!("no reload accepted\nlog:\n{}", u.log.text())
    });
    // Invariant 3: a USR2 spawns nothing while a new master exists.
    let mut current: Option<Pid> = None;
    for l in &u.log.all() {
        if l.contains("USR2: new master") && l.contains("spawned") {
            assert!(
                current.is_none(),
                "second new master while {current:?} exists: {l}\nlog:\n{}",
                u.log.text()
            );
            current = Some(pid_after(l, "new master "));
        } else if let Some(c) = current
            && (l.contains(&format!("upgrade failed: new master {c}"))
                || l.contains(&format!("new master {c} exited"))
                || l.contains(&format!("new master {c} killed")))
        {
            current = None;
        }
    }
    let generation =
        pid_after(&reloaded, "reload complete: generation ").as_raw() as u64;
    // A reload sets the pool back to its configured size whatever TTIN,
    // TTOU and WINCH did before: two workers of the last generation, all
    // ready, and nothing else under the master once the old ones drained.
    let mut last = serde_json::Value::Null;
    wait_until_or_log(&u, "two ready workers of the last generation", || {
        last = status_json(&u);
        let workers = last["workers"].as_array().cloned().unwrap_or_default();
        let mut pids: Vec<i32> = workers
            .iter()
            .filter_map(|w| w["pid"].as_i64().map(|p| p as i32))
            .collect();
        pids.sort();
        last["generation"] == generation
            && last["desired"] == 2
            && last["ready"] == 2
            && last["upgrade"].is_null()
            && workers.len() == 2
            && workers.iter().all(|w| {
                w["generation"] == generation && w["state"] == "ready"
            })
            && children_of(u.pid) == pids
    });
    wait_until_or_log(&u, "the last generation to answer", || {
        get(&a, "/").is_ok_and(|r| {
            r.status == 200
                && r.json()["generation"].as_u64() == Some(generation)
        })
    });
    let report = load.finish();
    assert!(
        u.log.find_from(0, &["panicked"]).is_none(),
        "{}",
        u.log.text()
    );
    // WINCH may have drained every worker for a while: the listener
    // stayed open and the queued connections waited for the HUP.
    assert_nothing_lost(&report, &u, t0);
    let t = Instant::now();
    let master = u.pid;
    stop_and_assert_clean(&mut u, master, &a);
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "TERM took {:?} (graceful timeout 3 s)",
        t.elapsed()
    );
}

// ---------------------------------------------------------------------
// 6. Too few file descriptors

/// `n` silent connections to the master's control socket (as many as
/// its backlog takes), held until dropped.
fn hold_control_clients(
    u: &Upgrader,
    n: usize,
) -> Vec<std::os::unix::net::UnixStream> {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("upgrader-control-{}", u.pid);
    let addr =
        std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .unwrap();
    let mut held = Vec::new();
    for _ in 0..n {
        match std::os::unix::net::UnixStream::connect_addr(&addr) {
            Ok(c) => held.push(c),
            Err(_) => break,
        }
    }
    assert!(held.len() > 32, "only {} control connections", held.len());
    held
}

#[test]
fn with_64_descriptors_reloads_and_control_clients_do_not_spin_it() {
    let script = format!(
        "ulimit -n 64 && exec {BIN} --bind 127.0.0.1:0 -p u.pid -w 2 \
         --auto-retire off --client-timeout 0.5 --graceful-timeout 2"
    );
    let mut u = chaos().program("sh").args(["-c", &script]).start();
    let _reaper = Reaper(u.dir.0.clone());
    u.ready();
    let a = u.addr(0);
    let t0 = Instant::now();
    let load = TimedLoad::start(&a, 1);
    // Idle TCP connections: a sync worker reads each until its client
    // timeout (0.5 s), the rest wait in the backlog; few enough that the
    // load's requests behind them wait well under their 10 s.
    let mut idle = Vec::new();
    for _ in 0..10 {
        match std::net::TcpStream::connect(&a) {
            Ok(c) => idle.push(c),
            Err(e) => panic!("connect {a}: {e}"),
        }
    }
    // Control connections held open, more than the master takes at once.
    let held = hold_control_clients(&u, 100);
    let mut outcomes = Vec::new();
    for _ in 0..20 {
        let from = u.log.len();
        u.signal(Signal::SIGHUP);
        let done = ["reload complete"];
        let failed = ["reload to generation", "failed"];
        wait_until_or_log(&u, "the reload's outcome", || {
            u.log.find_from(from, &done).is_some()
                || u.log.find_from(from, &failed).is_some()
        });
        outcomes.push(u.log.find_from(from, &done).is_some());
    }
    assert_quiet_for_a_second(u.pid, Duration::from_millis(200));
    drop(held);
    drop(idle);
    // Control works again, bounded in count.
    let mut ok = false;
    for _ in 0..50 {
        if status(&u).0 == 0 {
            ok = true;
            break;
        }
    }
    assert!(ok, "-s status never answered\nlog:\n{}", u.log.text());
    // Many short control connections in a row.
    for _ in 0..30 {
        let (rc, out) = status(&u);
        assert_eq!(rc, 0, "{out}");
    }
    get_ok(&a, "/");
    let report = load.finish();
    assert!(
        outcomes.iter().all(|o| *o),
        "reloads that failed: {outcomes:?}\nlog:\n{}",
        u.log.text()
    );
    assert_nothing_lost(&report, &u, t0);
    let master = u.pid;
    stop_and_assert_clean(&mut u, master, &a);
}

/// Exec workers need pipes from the master at spawn: idle control
/// clients took every descriptor (`ulimit -n 64`), so each spawn of a
/// reload failed with EMFILE until they timed out (5 s). The master now
/// keeps half its descriptors from control clients.
#[test]
fn with_64_descriptors_held_control_clients_do_not_starve_exec_reloads() {
    let script = format!(
        "ulimit -n 64 && exec {BIN} --bind 127.0.0.1:0 -p u.pid -w 2 \
         --auto-retire off --graceful-timeout 2 --ready notify \
         --exec python3 {PYTHON_APP}"
    );
    let mut u = chaos().program("sh").args(["-c", &script]).start();
    let _reaper = Reaper(u.dir.0.clone());
    u.ready();
    let a = u.addr(0);
    let t0 = Instant::now();
    // (No idle TCP connections here: the example app has no client
    // timeout, and one would hold a sync app for ever.)
    let load = TimedLoad::start(&a, 1);
    let held = hold_control_clients(&u, 100);
    for _ in 0..3 {
        let from = u.log.len();
        let t = Instant::now();
        u.signal(Signal::SIGHUP);
        u.log.wait_from(from, &["reload complete"], LONG);
        // Python boots in about 0.3 s; the held clients time out at 5 s.
        assert!(
            t.elapsed() < Duration::from_secs(4),
            "reload took {:?} with control clients held\nlog:\n{}",
            t.elapsed(),
            u.log.text()
        );
    }
    assert!(
        u.log.find_from(0, &["EMFILE"]).is_none(),
        "out of descriptors:\n{}",
        u.log.text()
    );
    assert_quiet_for_a_second(u.pid, Duration::from_millis(200));
    drop(held);
    wait_until_or_log(&u, "-s status to answer again", || status(&u).0 == 0);
    let report = load.finish();
    assert_nothing_lost(&report, &u, t0);
    let master = u.pid;
    stop_and_assert_clean(&mut u, master, &a);
}
