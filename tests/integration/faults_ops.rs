//! The operator's side under faults: a master whose stderr is a dead or
//! stalled pipe or whose log file is on a full disk, pidfiles someone
//! tampered with or shares, a stray hand-off variable, and the `-s`
//! client's exit statuses, output and messages.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::harness::*;

fn s(dir: &Path, args: &[&str]) -> (i32, String) {
    let mut v = vec!["-s"];
    v.extend_from_slice(args);
    let (st, out) = run_to_end(&v, dir);
    (st.code().unwrap_or(-1), out)
}

/// A pipe whose ends are close-on-exec, so no child another test
/// spawns meanwhile holds one of them.
fn pipe() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap()
}

/// A master whose stderr the test chooses (the harness reads it; here
/// it is broken on purpose), found through its pidfile `u.pid` and the
/// fake systemd's READY=1. Its process group is killed on drop.
struct Bare {
    child: Child,
    pid: Pid,
    dir: TempDir,
    systemd: FakeSystemd,
}

impl Bare {
    fn start(args: &[&str], stderr: Stdio) -> Bare {
        let dir = TempDir::new();
        let systemd = FakeSystemd::new(&dir.0);
        let child = Command::new(BIN)
            .args(["-p", "u.pid"])
            .args(args)
            .current_dir(&dir.0)
            .env("NOTIFY_SOCKET", &systemd.path)
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .expect("spawn upgrader");
        Bare {
            pid: Pid::from_raw(child.id() as i32),
            child,
            dir,
            systemd,
        }
    }

    /// Waits for READY=1, failing at once if the master died.
    fn ready(&mut self) {
        let deadline = Instant::now() + LONG;
        loop {
            if self
                .systemd
                .try_expect("READY=1", Duration::from_millis(100))
                .is_some()
            {
                return;
            }
            if let Some(st) = self.child.try_wait().unwrap() {
                panic!("the master died before READY=1: {st}");
            }
            assert!(Instant::now() < deadline, "no READY=1 within {LONG:?}");
        }
    }

    fn s(&self, args: &[&str]) -> (i32, String) {
        let mut v = args.to_vec();
        v.extend_from_slice(&["--pid", "u.pid"]);
        s(&self.dir.0, &v)
    }

    /// The first listener's address, from `-s status --json`.
    fn addr(&self) -> String {
        let (rc, out) = self.s(&["status", "--json"]);
        assert_eq!(rc, 0, "-s status --json: {out}");
        let j: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        j["listeners"][0]["address"].as_str().unwrap().to_string()
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Serves, reloads (a burst of log lines in master and workers),
    /// answers `-s status`, serves the new generation, and stops on
    /// `-s stop` with status 0.
    fn serve_reload_and_stop(mut self) {
        let a = self.addr();
        for _ in 0..5 {
            get_ok(&a, "/");
        }
        let (rc, out) = self.s(&["reload"]);
        assert_eq!(rc, 0, "-s reload: {out}");
        let (rc, out) = self.s(&["reopen"]);
        assert_eq!(rc, 0, "-s reopen: {out}");
        let (rc, out) = self.s(&["status"]);
        assert_eq!(rc, 0, "-s status: {out}");
        assert!(out.contains("generation 2: 1/1 workers ready"), "{out}");
        for _ in 0..5 {
            assert_eq!(get_ok(&a, "/").num("generation"), 2);
        }
        assert!(self.alive(), "the master died");
        let (rc, out) = self.s(&["stop"]);
        assert_eq!(rc, 0, "-s stop: {out}");
        let deadline = Instant::now() + LONG;
        let st = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            assert!(Instant::now() < deadline, "still running after stop");
            poll_pause();
        };
        assert_eq!(st.code(), Some(0), "{st}");
    }
}

impl Drop for Bare {
    fn drop(&mut self) {
        let _ = killpg(self.pid, Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// With stderr a pipe whose reader is gone (`upgrader ... 2>&1 | head
/// -n 1` once head exited), the first log line was an EPIPE that fern
/// turned into a panic, and the master aborted. Log lines that cannot
/// be written are dropped now; the master serves, reloads and stops.
#[test]
fn a_master_whose_stderr_reader_is_gone_keeps_serving() {
    let (r, w) = pipe();
    drop(r);
    let mut m = Bare::start(&["--bind", "127.0.0.1:0"], Stdio::from(w));
    m.ready();
    m.serve_reload_and_stop();
}

/// A stderr pipe nobody reads (a stuck log collector) blocked the master
/// in its first write once the pipe was full: no READY=1, no answer to
/// anything. Lines are dropped and counted instead, and once the pipe
/// drains the next line is preceded by "N log lines lost".
#[test]
fn a_master_whose_stderr_nobody_reads_still_answers() {
    let (r, w) = pipe();
    // Fill the pipe through a description of our own, non-blocking: the
    // master's stderr stays an ordinary blocking pipe.
    let mut filler = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
        .open(format!("/proc/self/fd/{}", w.as_raw_fd()))
        .unwrap();
    let mut filled = 0;
    loop {
        match filler.write(b"filler line\n") {
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("fill the pipe: {e}"),
        }
    }
    assert!(filled > 0);
    drop(filler);
    let mut m = Bare::start(&["--bind", "127.0.0.1:0"], Stdio::from(w));
    m.ready();
    let a = m.addr();
    get_ok(&a, "/");
    let (rc, out) = m.s(&["reload"]);
    assert_eq!(rc, 0, "-s reload: {out}");
    let (rc, out) = m.s(&["status"]);
    assert_eq!(rc, 0, "-s status: {out}");

    // Drain the pipe; the next line the master writes says how many
    // were lost.
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let into = seen.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(std::fs::File::from(r)).lines() {
            match line {
                Ok(l) => into.lock().unwrap().push(l),
                Err(_) => break,
            }
        }
    });
    wait_until("the filler drained", LONG, || {
        seen.lock().unwrap().len() * "filler line\n".len() >= filled
    });
    let (rc, out) = m.s(&["status"]);
    assert_eq!(rc, 0, "-s status: {out}");
    wait_until("a \"log lines lost\" line", LONG, || {
        seen.lock().unwrap().iter().any(|l| {
            l.contains(&format!("master[{}]", m.pid))
                && l.contains("log lines lost")
        })
    });
    let lines = seen.lock().unwrap().clone();
    let note = lines
        .iter()
        .find(|l| l.contains("log lines lost"))
        .unwrap()
        .clone();
    let n: u64 = note
        .split(": ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {note:?}"));
    assert!(n >= 5, "the reload alone logs more than that: {note}");
    assert!(note.contains(" warn "), "{note}");
    assert!(m.alive());
}

/// `--log-file` on a full disk (/dev/full: every write is ENOSPC) with
/// stderr gone too: fern's fallback to stderr failed as well and
/// panicked. The master keeps serving.
#[test]
fn a_log_file_on_a_full_disk_with_stderr_gone_keeps_serving() {
    let (r, w) = pipe();
    drop(r);
    let mut m = Bare::start(
        &["--bind", "127.0.0.1:0", "--log-file", "/dev/full"],
        Stdio::from(w),
    );
    m.ready();
    m.serve_reload_and_stop();
}

/// An exec worker that is ready (READY=1) only once the test opens the
/// FIFO `gate` for writing: the master stays "booting" until then.
fn gated_app(dir: &Path) -> (PathBuf, Vec<String>) {
    let gate = dir.join("gate");
    nix::unistd::mkfifo(
        &gate,
        nix::sys::stat::Mode::from_bits(0o600).unwrap(),
    )
    .unwrap();
    let app = dir.join("gated.py");
    std::fs::write(
        &app,
        "import os, socket, sys, time\n\
         open(sys.argv[1]).close()\n\
         s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
         s.sendto(b'READY=1', os.environ['NOTIFY_SOCKET'])\n\
         while True:\n    time.sleep(3600)\n",
    )
    .unwrap();
    let exec = ["--ready", "notify", "--exec", "python3"]
        .into_iter()
        .map(String::from)
        .chain([app.display().to_string(), gate.display().to_string()])
        .collect();
    (gate, exec)
}

/// Opens the gate (see `gated_app`) once the app waits at it.
fn open_gate(gate: &Path) {
    let mut opened = None;
    wait_until("the app at its gate", LONG, || {
        opened = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open(gate)
            .ok();
        opened.is_some()
    });
}

/// A root master created `<pidfile>.tmp.<pid>` with a plain create,
/// following a symlink planted there and overwriting its target. The
/// temporary file is created with O_EXCL | O_NOFOLLOW now.
#[test]
fn a_symlink_planted_at_the_pidfile_tmp_name_is_not_followed() {
    let b = upgrader();
    let (gate, exec) = gated_app(b.dir());
    let mut u = b
        .args(["--bind", "127.0.0.1:0", "-p", "u.pid"])
        .args(exec)
        .start();
    let victim = u.dir.path("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    let tmp = u.dir.path(&format!("u.pid.tmp.{}", u.pid));
    std::os::unix::fs::symlink(&victim, &tmp).unwrap();
    open_gate(&gate);
    u.ready();
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "precious\n",
        "the symlink's target was overwritten"
    );
    let (_, _, line) = u.log.wait_from(0, &["not following it"], LONG);
    assert!(line.contains(&tmp.display().to_string()), "{line}");
    assert!(line.contains("a symlink"), "{line}");
    let md = std::fs::symlink_metadata(&tmp).unwrap();
    assert!(
        md.file_type().is_symlink(),
        "the planted link is left alone"
    );
    // The pid could not be written, so there is no pidfile (SPEC 5:
    // one exists only once written), and certainly no symlink there.
    if let Ok(md) = std::fs::symlink_metadata(u.dir.path("u.pid")) {
        assert!(md.file_type().is_file(), "the pidfile is no symlink");
    }
    assert!(u.child.try_wait().unwrap().is_none(), "still running");
}

/// A second master on the same pidfile was refused only once the first
/// had written its pid (at serving): one still booting was not seen,
/// and both ran. The pidfile is locked from the start now.
#[test]
fn two_masters_on_one_pidfile_the_second_exits_1_naming_the_holder() {
    let b = upgrader();
    let (gate, exec) = gated_app(b.dir());
    let mut u = b
        .args(["--bind", "127.0.0.1:0", "-p", "u.pid"])
        .args(exec)
        .start();
    u.log.wait_from(0, &["spawned worker["], LONG);
    let pidfile = u.dir.path("u.pid");
    let second = ["--bind", "127.0.0.1:0", "--pid", pidfile.to_str().unwrap()];
    let boot_lock = u.dir.path("u.pid.lock");
    for when in ["booting", "serving"] {
        if when == "booting" {
            // SPEC 5: "the pidfile exists" means "serving".
            assert!(!pidfile.exists(), "no pidfile while booting");
            assert!(
                boot_lock.exists(),
                "{} while booting",
                boot_lock.display()
            );
        } else {
            assert!(!boot_lock.exists(), "boot lock removed once serving");
        }
        let (st, out) = run_to_end(&second, &u.dir.0);
        assert_eq!(st.code(), Some(1), "{when}: {out}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1, "{when}: one line:\n{out}");
        assert!(lines[0].starts_with("upgrader: error: pidfile "), "{out}");
        assert!(lines[0].contains(pidfile.to_str().unwrap()), "{out}");
        assert!(lines[0].contains(&u.pid.to_string()), "{when}: {out}");
        if when == "booting" {
            open_gate(&gate);
            u.ready();
            assert_eq!(wait_pidfile(&pidfile, None), u.pid);
        }
    }
    u.signal(Signal::SIGTERM);
    assert_eq!(u.wait_exit(LONG).code(), Some(0));
    assert!(!pidfile.exists(), "removed at exit");
    assert!(!boot_lock.exists(), "no boot lock left at exit");
}

/// `UPGRADER_PID` alone in the environment (left over in a shell, a
/// unit file) made a master think it was a USR2 successor and skip the
/// pidfile check. Hand-off variables count only with their ready pipe.
#[test]
fn a_stray_upgrader_pid_does_not_skip_the_pidfile_check() {
    let mut first = upgrader()
        .args(["--bind", "127.0.0.1:0", "-p", "u.pid"])
        .start();
    first.ready();
    let pidfile = first.dir.path("u.pid");
    assert_eq!(wait_pidfile(&pidfile, None), first.pid);
    let mut second = upgrader()
        .args(["--bind", "127.0.0.1:0", "--pid", pidfile.to_str().unwrap()])
        .env("UPGRADER_PID", &first.pid.to_string())
        .env_remove_notify()
        .start();
    let st = second.wait_exit(LONG);
    assert_eq!(st.code(), Some(1), "{}", second.log.text());
    let text = second.log.text();
    let last = text.lines().last().unwrap_or_default();
    assert!(last.starts_with("upgrader: error: pidfile "), "{text}");
    assert!(last.contains(&first.pid.to_string()), "{text}");
    assert!(!first.dir.path("u.pid.2").exists());
    assert_eq!(wait_pidfile(&pidfile, None), first.pid);
}

/// A master whose reloads take a while: its config file, `u.toml`, gets
/// `ready = "delay:30"` and the exec workers of the next generation are
/// ready only after 30 s.
fn slow_reload() -> Upgrader {
    let b = upgrader();
    let conf = b.dir().join("u.toml");
    let cfg = |delay: &str| {
        format!(
            "bind = \"127.0.0.1:0\"\npid = \"u.pid\"\nready = \"delay:{delay}\"\n\
             exec = [\"python3\", \"{PYTHON_APP}\"]\n"
        )
    };
    std::fs::write(&conf, cfg("0.1")).unwrap();
    let mut u = b.args(["-c", "u.toml"]).start();
    u.ready();
    std::fs::write(&conf, cfg("30")).unwrap();
    u
}

/// When `--wait` ran out during a reload, `-s` exited 1 ("failed") with
/// "no answer from master N within 500ms", or "within 0ns" for
/// `--wait 0`. The reload goes on, so it is 75 (EX_TEMPFAIL): "still in
/// progress", with what to run next.
#[test]
fn wait_running_out_exits_75_still_in_progress() {
    let u = slow_reload();
    for (wait, shown) in [("0", "after 0s"), ("0.5", "after 500ms")] {
        let (rc, out) =
            s(&u.dir.0, &["reload", "-c", "u.toml", "--wait", wait]);
        assert_eq!(rc, 75, "--wait {wait}: {out}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1, "one line, no progress off a tty: {out}");
        assert!(lines[0].contains("reload still in progress"), "{out}");
        assert!(lines[0].contains(shown), "{out}");
        assert!(lines[0].contains("upgrader -s status"), "{out}");
        assert!(!out.contains("0ns") && !out.contains("within"), "{out}");
    }
    u.log.wait_from(0, &["gen=2", "spawned"], LONG);
}

/// On a terminal, `-s` says what it waits for (on stderr).
#[test]
fn on_a_terminal_s_says_what_it_waits_for() {
    let u = slow_reload();
    let pty = nix::pty::openpty(None, None).unwrap();
    for fd in [&pty.master, &pty.slave] {
        nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )
        .unwrap();
    }
    let mut child = Command::new(BIN)
        .args(["-s", "reload", "-c", "u.toml", "--wait", "0.3"])
        .current_dir(&u.dir.0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(pty.slave))
        .process_group(0)
        .spawn()
        .unwrap();
    let seen = Arc::new(Mutex::new(String::new()));
    let into = seen.clone();
    let mut master = std::fs::File::from(pty.master);
    std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let deadline = Instant::now() + LONG;
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "-s reload still running");
        poll_pause();
    };
    assert_eq!(st.code(), Some(75), "{}", seen.lock().unwrap());
    wait_until("the progress line on the terminal", LONG, || {
        let text = seen.lock().unwrap();
        text.contains("waiting for the new generation to be ready")
            && text.contains("still in progress")
    });
}

/// `upgrader -s status | head -c1`: println! panicked on EPIPE ("failed
/// printing to stdout: Broken pipe") and the client aborted. A reader
/// that went away is no error.
#[test]
fn status_into_a_closed_pipe_exits_quietly() {
    let mut u = upgrader()
        .args(["--bind", "127.0.0.1:0", "-p", "u.pid"])
        .start();
    u.ready();
    for json in [false, true] {
        let (r, w) = pipe();
        drop(r);
        let mut args = vec!["-s", "status", "--pid", "u.pid"];
        if json {
            args.push("--json");
        }
        let out = Command::new(BIN)
            .args(&args)
            .current_dir(&u.dir.0)
            .stdin(Stdio::null())
            .stdout(Stdio::from(w))
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}: {err}",
            out.status
        );
        assert_eq!(err, "", "{args:?}: quiet");
    }
}

/// `-c FILE -s ...` with a syntax error in FILE (someone is editing it)
/// was a usage error even though the file still says where the pidfile
/// is. A `pid = "..."` line is enough; without one, the line says to
/// use --pid.
#[test]
fn a_config_with_a_syntax_error_still_names_the_pidfile_for_s() {
    let b = upgrader();
    let conf = b.dir().join("u.toml");
    std::fs::write(&conf, "bind = [\"127.0.0.1:0\"]\npid = \"u.pid\"\n")
        .unwrap();
    let mut u = b.args(["-c", "u.toml"]).start();
    u.ready();
    std::fs::write(
        &conf,
        "bind = [\"127.0.0.1:0\"\npid = \"u.pid\"\nworkers =\n",
    )
    .unwrap();
    let (rc, out) = s(&u.dir.0, &["status", "-c", "u.toml"]);
    assert_eq!(rc, 0, "{out}");
    assert!(out.contains(&format!("master {} (master)", u.pid)), "{out}");
    std::fs::write(&conf, "bind = [\"127.0.0.1:0\"\nworkers =\n").unwrap();
    let (rc, out) = s(&u.dir.0, &["status", "-c", "u.toml"]);
    assert_eq!(rc, 2, "{out}");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.starts_with("upgrader: error: config "), "{out}");
    assert!(out.contains("use --pid FILE"), "{out}");
}

/// Error text: every message starts with "upgrader: error:", a bad
/// number is an invalid value (not "unexpected argument"), the OS reason
/// is said once (no "(os error 2)", no "ENOENT: No such file or
/// directory"), and a pidfile holding garbage is "not a pid".
#[test]
fn error_messages_say_the_reason_once_in_plain_words() {
    let dir = TempDir::new();
    let (st, out) = run_to_end(&["--no-such-flag"], &dir.0);
    assert_eq!(st.code(), Some(2), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "the error and a hint: {out}");
    assert!(lines[0].starts_with("upgrader: error: "), "{out}");
    assert!(lines[1].starts_with("upgrader: hint: "), "{out}");
    let (st, out) = run_to_end(&["--wrokers", "2"], &dir.0);
    assert_eq!(st.code(), Some(2), "{out}");
    assert!(out.contains("'--workers'"), "clap's tip: {out}");

    let (st, out) = run_to_end(&["--workers", "-1"], &dir.0);
    assert_eq!(st.code(), Some(2), "{out}");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(
        out.starts_with("upgrader: error: invalid value '-1'"),
        "{out}"
    );

    let (st, out) = run_to_end(&["--log-file", "/nonexistent/u.log"], &dir.0);
    assert_eq!(st.code(), Some(2), "{out}");
    assert_eq!(
        out.trim(),
        "upgrader: error: log file /nonexistent/u.log: No such file or \
         directory"
    );

    let (st, out) = run_to_end(
        &[
            "--bind",
            "127.0.0.1:0",
            "--chdir",
            "/nonexistent",
            "-w",
            "1",
        ],
        &dir.0,
    );
    assert_eq!(st.code(), Some(3), "{out}");
    assert!(out.contains("chdir /nonexistent: No such file"), "{out}");
    assert!(!out.contains("ENOENT"), "{out}");
    assert!(!out.contains("(os error"), "{out}");

    std::fs::write(dir.path("g.pid"), "garbage\n").unwrap();
    let (rc, out) = s(&dir.0, &["status", "--pid", "g.pid"]);
    assert_eq!(rc, 1, "{out}");
    assert!(out.contains("\"garbage\", which is not a pid"), "{out}");
    std::fs::write(dir.path("e.pid"), "").unwrap();
    let (rc, out) = s(&dir.0, &["status", "--pid", "e.pid"]);
    assert_eq!(rc, 1, "{out}");
    assert!(out.contains("is empty"), "{out}");
}

/// Error text in a config file: where (the line and its text) and what,
/// in words, not Rust's type names ("expected usize") or serde's
/// "did not match any variant of untagged enum".
#[test]
fn config_file_errors_name_the_line_in_plain_words() {
    let dir = TempDir::new();
    for (text, want) in [
        (
            "workers = -1\n",
            "line 1 (workers = -1): invalid value: integer `-1`, expected a whole number >= 0",
        ),
        (
            "pid = \"u.pid\"\nbacklog = 1.5\n",
            "line 2 (backlog = 1.5): invalid type: floating point `1.5`, expected a whole number",
        ),
        (
            "bind = [\"x:99999\"]\n",
            "line 1 (bind = [\"x:99999\"]): x:99999: port \"99999\" is not in 0-65535",
        ),
        (
            "exec = 3\n",
            "line 1 (exec = 3): expected a string or a list of strings",
        ),
    ] {
        std::fs::write(dir.path("u.toml"), text).unwrap();
        let (st, out) =
            run_to_end(&["-c", "u.toml", "--check-config"], &dir.0);
        assert_eq!(st.code(), Some(2), "{text}: {out}");
        assert_eq!(
            out.trim(),
            format!("upgrader: error: config u.toml: {want}"),
            "{text}"
        );
        for rust in ["usize", "u64", "untagged", "TOML parse error"] {
            assert!(!out.contains(rust), "{text}: {out}");
        }
    }
}
