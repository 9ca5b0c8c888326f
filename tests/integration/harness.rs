//! The test harness: runs the real `upgrader` binary in its own process
//! group, pretends to be systemd (a notify socket the test owns), and
//! collects the master's log lines with their arrival times. Every wait
//! is bounded and fails with a message that says what was awaited and
//! shows the log.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

pub const BIN: &str = env!("CARGO_BIN_EXE_upgrader");

/// A generous bound for things that take milliseconds when all is well.
pub const LONG: Duration = Duration::from_secs(10);

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A per-test directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let p = std::env::temp_dir()
            .join(format!("upgrader-it-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Log lines as they arrive.
#[derive(Default)]
pub struct Lines {
    lines: Mutex<Vec<(Instant, String)>>,
    cond: Condvar,
    closed: Mutex<bool>,
}

impl Lines {
    fn push(&self, l: String) {
        self.lines.lock().unwrap().push((Instant::now(), l));
        self.cond.notify_all();
    }

    /// Every line (or datagram) so far, in order.
    pub fn all(&self) -> Vec<String> {
        let v = self.lines.lock().unwrap();
        v.iter().map(|(_, l)| l.clone()).collect()
    }

    pub fn text(&self) -> String {
        let v = self.lines.lock().unwrap();
        v.iter()
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The first line after index `from` containing every pattern, and
    /// when it arrived.
    pub fn find_from(
        &self,
        from: usize,
        pats: &[&str],
    ) -> Option<(usize, Instant, String)> {
        let v = self.lines.lock().unwrap();
        v.iter().enumerate().skip(from).find_map(|(i, (t, l))| {
            pats.iter()
                .all(|p| l.contains(p))
                .then(|| (i, *t, l.clone()))
        })
    }

    pub fn count(&self, pats: &[&str]) -> usize {
        let v = self.lines.lock().unwrap();
        v.iter()
            .filter(|(_, l)| pats.iter().all(|p| l.contains(p)))
            .count()
    }

    pub fn len(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    /// Waits for a line (from index `from` on) containing every pattern.
    pub fn wait_from(
        &self,
        from: usize,
        pats: &[&str],
        limit: Duration,
    ) -> (usize, Instant, String) {
        self.try_wait_from(from, pats, limit).unwrap_or_else(|| {
            panic!(
                "no line with {pats:?} within {limit:?}; got:\n{}",
                self.text()
            )
        })
    }

    /// Like `wait_from`, but `None` when it did not come in time.
    pub fn try_wait_from(
        &self,
        from: usize,
        pats: &[&str],
        limit: Duration,
    ) -> Option<(usize, Instant, String)> {
        let deadline = Instant::now() + limit;
        let mut guard = self.lines.lock().unwrap();
        loop {
            if let Some((i, (t, l))) = guard
                .iter()
                .enumerate()
                .skip(from)
                .find(|(_, (_, l))| pats.iter().all(|p| l.contains(p)))
            {
                return Some((i, *t, l.clone()));
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            guard = self.cond.wait_timeout(guard, deadline - now).unwrap().0;
        }
    }
}

/// A notify socket the test owns: what systemd would receive. A thread
/// reads it all the time, as systemd does (so a `BARRIER=1` is answered:
/// the passed descriptor is closed when the datagram is read).
pub struct FakeSystemd {
    pub path: PathBuf,
    pub messages: Arc<Lines>,
}

impl FakeSystemd {
    pub fn new(dir: &Path) -> FakeSystemd {
        let path = dir.join("systemd-notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        let messages = Arc::new(Lines::default());
        let m = messages.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Ends when the test's process exits; the socket file goes
            // with the test directory.
            while let Ok(n) = sock.recv(&mut buf) {
                m.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        });
        FakeSystemd { path, messages }
    }

    /// Waits for a datagram containing `pat`; returns it.
    pub fn expect(&mut self, pat: &str, limit: Duration) -> String {
        self.messages.wait_from(0, &[pat], limit).2
    }

    /// Like `expect`, but `None` when it did not come in time.
    pub fn try_expect(
        &mut self,
        pat: &str,
        limit: Duration,
    ) -> Option<String> {
        self.messages
            .try_wait_from(0, &[pat], limit)
            .map(|(_, _, m)| m)
    }

    /// Every datagram so far, in order.
    pub fn seen(&self) -> Vec<String> {
        self.messages.all()
    }
}

/// A running master. Dropping it SIGKILLs its process group and reaps
/// it; its workers follow (that is invariant 4).
pub struct Upgrader {
    pub child: Child,
    pub pid: Pid,
    pub dir: TempDir,
    pub log: Arc<Lines>,
    pub systemd: FakeSystemd,
    pub args: Vec<String>,
    status: Option<ExitStatus>,
}

pub struct Builder {
    no_notify: bool,
    program: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    pass: Vec<std::os::fd::RawFd>,
    dir: TempDir,
}

impl Builder {
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(
        mut self,
        a: I,
    ) -> Self {
        self.args.extend(a.into_iter().map(Into::into));
        self
    }

    /// Starts without NOTIFY_SOCKET, as outside systemd (the fake
    /// systemd still exists; nothing is sent to it).
    pub fn env_remove_notify(mut self) -> Self {
        self.no_notify = true;
        self
    }

    /// Runs this executable instead of the built one.
    pub fn program(mut self, p: &str) -> Self {
        self.program = p.into();
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    /// Leaves the test's descriptor `fd` open in the started process at
    /// the same number, as a supervisor passes a socket (`--bind
    /// fd:N`): its close-on-exec flag is cleared in the forked child
    /// only, so no other test's child inherits it.
    pub fn pass_fd(mut self, fd: std::os::fd::RawFd) -> Self {
        self.pass.push(fd);
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir.0
    }

    pub fn start(self) -> Upgrader {
        let systemd = FakeSystemd::new(&self.dir.0);
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .current_dir(&self.dir.0)
            .env("NOTIFY_SOCKET", &systemd.path)
            .env("UPGRADER_TEST_HOOKS", "1")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        if self.no_notify {
            cmd.env_remove("NOTIFY_SOCKET");
        }
        if !self.pass.is_empty() {
            let pass = self.pass.clone();
            // SAFETY: between fork and exec the closure only calls
            // fcntl(2), which is async-signal-safe, on plain numbers.
            unsafe {
                cmd.pre_exec(move || {
                    for &fd in &pass {
                        if nix::libc::fcntl(fd, nix::libc::F_SETFD, 0) < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().expect("spawn upgrader");
        let log = Arc::new(Lines::default());
        for stream in [
            Box::new(child.stderr.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stdout.take().unwrap()),
        ] {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    match line {
                        Ok(l) => log.push(l),
                        Err(_) => break,
                    }
                }
                *log.closed.lock().unwrap() = true;
                log.cond.notify_all();
            });
        }
        Upgrader {
            pid: Pid::from_raw(child.id() as i32),
            child,
            dir: self.dir,
            log,
            systemd,
            args: self.args,
            status: None,
        }
    }
}

/// A master on a kernel-chosen port with pidfile `u.pid`, retired by
/// hand (TERM) after a USR2, as outside systemd.
pub const MANUAL_UPGRADE: [&str; 6] = [
    "--bind",
    "127.0.0.1:0",
    "-p",
    "u.pid",
    "--auto-retire",
    "off",
];

pub fn upgrader() -> Builder {
    Builder {
        no_notify: false,
        program: BIN.into(),
        args: Vec::new(),
        env: Vec::new(),
        pass: Vec::new(),
        dir: TempDir::new(),
    }
}

impl Upgrader {
    /// Waits for `READY=1` on the fake systemd socket.
    pub fn ready(&mut self) -> &mut Self {
        if let Some(st) = self.child.try_wait().unwrap() {
            panic!("upgrader exited early ({st}); log:\n{}", self.log.text());
        }
        let deadline = Instant::now() + LONG;
        loop {
            // A master that died never sends READY=1: report that.
            let m = self
                .systemd
                .try_expect("READY=1", Duration::from_millis(200));
            if m.is_some() {
                // The log travels by another pipe: wait for the line the
                // master writes just before READY=1, so every earlier
                // line (spawns, listeners) is in.
                if !self.args.iter().any(|a| a.starts_with("--log-file")) {
                    self.log.wait_from(0, &["serving"], LONG);
                }
                return self;
            }
            if let Some(st) = self.child.try_wait().unwrap() {
                panic!(
                    "upgrader exited ({st}) before READY=1; log:\n{}",
                    self.log.text()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "no READY=1 within {LONG:?}; log:\n{}",
                    self.log.text()
                );
            }
        }
    }

    /// The address of the n-th listener, from the "listening on" lines.
    pub fn addr(&self, n: usize) -> String {
        self.log.wait_from(0, &["listening on"], LONG);
        let text = self.log.text();
        let line = text
            .lines()
            .filter(|l| l.contains("listening on "))
            .nth(n)
            .unwrap_or_else(|| panic!("no listener #{n}; log:\n{text}"));
        let rest = line.split("listening on ").nth(1).unwrap();
        rest.split(" (").next().unwrap().to_string()
    }

    pub fn signal(&self, sig: Signal) {
        kill(self.pid, sig).unwrap();
    }

    /// Waits for the master to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        if let Some(s) = self.status {
            return s;
        }
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                self.status = Some(s);
                // Let the readers drain the last lines.
                let closed_by = Instant::now() + Duration::from_secs(2);
                while !*self.log.closed.lock().unwrap()
                    && Instant::now() < closed_by
                {
                    poll_pause();
                }
                return s;
            }
            if Instant::now() >= deadline {
                panic!(
                    "upgrader still running after {limit:?}; log:\n{}",
                    self.log.text()
                );
            }
            poll_pause();
        }
    }

    /// Waits for USR2's "new master N spawned" line; returns N.
    pub fn new_master(&self) -> Pid {
        let (_, _, line) =
            self.log
                .wait_from(0, &["USR2: new master", "spawned"], LONG);
        line.split("new master ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|p| p.parse().ok())
            .map(Pid::from_raw)
            .unwrap_or_else(|| panic!("no pid in {line:?}"))
    }

    /// Pids of the workers spawned so far, from the log.
    pub fn spawned(&self) -> Vec<Pid> {
        self.log
            .text()
            .lines()
            .filter_map(|l| l.split("spawned worker[").nth(1))
            .filter_map(|r| r.split(']').next()?.parse().ok())
            .map(Pid::from_raw)
            .collect()
    }
}

impl Drop for Upgrader {
    fn drop(&mut self) {
        let _ = killpg(self.pid, Signal::SIGKILL);
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- upgrader {:?} log ---\n{}",
                self.args,
                self.log.text()
            );
        }
    }
}

/// One step of a bounded polling loop (never a wait for an event by
/// itself: every caller checks a condition and a deadline around it).
pub fn poll_pause() {
    std::thread::sleep(Duration::from_millis(5));
}

/// Polls `cond` until it holds or `limit` passes.
pub fn wait_until(
    what: &str,
    limit: Duration,
    mut cond: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + limit;
    while !cond() {
        if Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        poll_pause();
    }
}

/// Waits until `pid` sleeps in poll (the kernel's wait channel), the
/// state an idle master or worker must settle in.
pub fn wait_asleep_in_poll(pid: Pid) {
    wait_until(&format!("{pid} asleep in poll"), LONG, || {
        let wchan = std::fs::read_to_string(format!("/proc/{pid}/wchan"))
            .unwrap_or_default();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default();
        let state = stat.rsplit(')').next().unwrap_or("").trim_start();
        wchan.contains("poll") && state.starts_with('S')
    });
}

/// The CPU time `pid` has used (utime + stime, fields 14 and 15 of
/// /proc/PID/stat, counted after the ")" that ends the command name), in
/// clock ticks of 10 ms (USER_HZ = 100).
pub fn cpu_time(pid: Pid) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let ticks: u64 =
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

/// Asserts that `pid` uses less than `limit` of CPU in a 1 s window. A
/// sampling window, not a synchronisation: it measures how much CPU the
/// process burns while something waits.
pub fn assert_quiet_for_a_second(pid: Pid, limit: Duration) {
    let before = cpu_time(pid);
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_time(pid) - before;
    assert!(used < limit, "{pid} used {used:?} of 1s: spinning");
}

pub fn alive(pid: Pid) -> bool {
    // A zombie still answers kill(0); count it as dead.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

/// An HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    pub fn num(&self, key: &str) -> u64 {
        self.json()[key]
            .as_u64()
            .unwrap_or_else(|| panic!("no {key} in {}", self.body))
    }
}

/// A stream to `addr`: `HOST:PORT`, `[V6]:PORT` or `unix:PATH`.
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    pub fn connect(addr: &str) -> std::io::Result<Stream> {
        let s = match addr.strip_prefix("unix:") {
            Some(p) => Stream::Unix(UnixStream::connect(p)?),
            None => {
                let a: SocketAddr = addr.parse().expect("address");
                Stream::Tcp(TcpStream::connect_timeout(&a, LONG)?)
            }
        };
        s.set_timeout(LONG)?;
        Ok(s)
    }

    pub fn set_timeout(&self, t: Duration) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => {
                s.set_read_timeout(Some(t))?;
                s.set_write_timeout(Some(t))
            }
            Stream::Unix(s) => {
                s.set_read_timeout(Some(t))?;
                s.set_write_timeout(Some(t))
            }
        }
    }
}

impl Read for Stream {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(b),
            Stream::Unix(s) => s.read(b),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(b),
            Stream::Unix(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sends raw bytes, reads the whole response.
pub fn raw(addr: &str, request: &[u8]) -> std::io::Result<Response> {
    let mut s = Stream::connect(addr)?;
    s.write_all(request)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    parse_response(&out, request.starts_with(b"HEAD "))
}

/// Parses a whole response and checks it is complete: the body must be
/// exactly `Content-Length` bytes (a truncated body is a failed request,
/// not a 200), and a JSON body must parse.
pub fn parse(out: &[u8]) -> std::io::Result<Response> {
    parse_response(out, false)
}

/// `parse`, for the answer to a HEAD request when `head_only` (a
/// Content-Length with no body).
pub fn parse_response(
    out: &[u8],
    head_only: bool,
) -> std::io::Result<Response> {
    let text = String::from_utf8_lossy(out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| {
        std::io::Error::other(format!("no complete response: {text:?}"))
    })?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            std::io::Error::other(format!("bad status line: {head:?}"))
        })?;
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    if let Some(len) = header("content-length") {
        let len: usize = len.parse().map_err(|_| {
            std::io::Error::other(format!("bad Content-Length: {head:?}"))
        })?;
        if !head_only && body.len() != len {
            return Err(std::io::Error::other(format!(
                "body of {} bytes, Content-Length {len}: {text:?}",
                body.len()
            )));
        }
    }
    if !head_only
        && header("content-type").as_deref() == Some("application/json")
        && let Err(e) = serde_json::from_str::<serde_json::Value>(body)
    {
        return Err(std::io::Error::other(format!(
            "body is not JSON ({e}): {text:?}"
        )));
    }
    Ok(Response {
        status,
        head: head.to_string(),
        body: body.to_string(),
    })
}

pub fn get(addr: &str, path: &str) -> std::io::Result<Response> {
    raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
    )
}

/// GET that must succeed with 200.
pub fn get_ok(addr: &str, path: &str) -> Response {
    let r =
        get(addr, path).unwrap_or_else(|e| panic!("GET {addr}{path}: {e}"));
    assert_eq!(r.status, 200, "GET {addr}{path}: {r:?}");
    r
}

/// Starts a `/_test/slow` request and returns once its head has
/// arrived, i.e. once a worker has it in hand.
pub fn slow_in_flight(addr: &str, ms: u64) -> (Stream, String) {
    let mut s = Stream::connect(addr).unwrap();
    s.write_all(
        format!("GET /_test/slow?ms={ms} HTTP/1.1\r\nHost: t\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).expect("read head of slow response");
        assert_eq!(n, 1, "connection closed before the head: {head:?}");
        head.push(byte[0]);
    }
    (s, String::from_utf8_lossy(&head).into_owned())
}

/// Reads the rest of a response whose head was read by `slow_in_flight`.
pub fn finish(mut s: Stream, head: String) -> Response {
    let mut body = Vec::new();
    s.read_to_end(&mut body).expect("read body");
    parse(format!("{head}{}", String::from_utf8_lossy(&body)).as_bytes())
        .unwrap_or_else(|e| panic!("request in flight failed: {e}"))
}

/// Whether `pid` waits in epoll right now (an idle built-in worker), as
/// opposed to serving a request (`/_test/slow` sleeps in nanosleep).
pub fn idle_in_epoll(pid: Pid) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/wchan"))
        .is_ok_and(|w| w.contains("epoll"))
}

/// Whether a TCP port can be bound right now.
pub fn port_free(addr: &str) -> bool {
    std::net::TcpListener::bind(addr).is_ok()
}

/// What `ss` says about a port (for failure messages).
pub fn who_holds(addr: &str) -> String {
    let port = addr.rsplit(':').next().unwrap_or("");
    let out = Command::new("ss").args(["-tanp"]).output();
    match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| l.contains(&format!(":{port} ")))
            .collect::<Vec<_>>()
            .join("\n"),
        Err(e) => format!("ss: {e}"),
    }
}

/// Runs the binary to completion (for usage errors and the like).
pub fn run_to_end(args: &[&str], dir: &Path) -> (ExitStatus, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + LONG;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            let mut out = String::new();
            child
                .stdout
                .take()
                .unwrap()
                .read_to_string(&mut out)
                .unwrap();
            return (st, format!("{out}{err}"));
        }
        if Instant::now() > deadline {
            let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
            panic!("{args:?} did not finish within {LONG:?}");
        }
        poll_pause();
    }
}

/// A bounded load: `threads` clients looping GETs until stopped (or
/// until `limit` passes), recording every failed connect, reset or
/// non-200, and the (master_pid, generation) of every answer.
pub struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    handles: Vec<std::thread::JoinHandle<LoadReport>>,
}

#[derive(Default, Debug)]
pub struct LoadReport {
    pub ok: u64,
    pub failures: Vec<String>,
    /// (master_pid, generation) pairs seen, in order, deduplicated.
    pub served_by: Vec<(u64, u64)>,
}

impl Load {
    pub fn start(addr: &str, threads: usize, limit: Duration) -> Load {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let handles = (0..threads)
            .map(|_| {
                let stop = stop.clone();
                let addr = addr.to_string();
                std::thread::spawn(move || {
                    let deadline = Instant::now() + limit;
                    let mut r = LoadReport::default();
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed)
                        && Instant::now() < deadline
                        && n < 1_000_000
                    {
                        n += 1;
                        match get(&addr, "/") {
                            Ok(resp) if resp.status == 200 => {
                                r.ok += 1;
                                let j = resp.json();
                                let key = (
                                    j["master_pid"].as_u64().unwrap_or(0),
                                    j["generation"].as_u64().unwrap_or(0),
                                );
                                if r.served_by.last() != Some(&key) {
                                    r.served_by.push(key);
                                }
                            }
                            Ok(resp) => r.failures.push(format!("{resp:?}")),
                            Err(e) => r.failures.push(e.to_string()),
                        }
                    }
                    r
                })
            })
            .collect();
        Load { stop, handles }
    }

    /// Stops the clients and merges their reports.
    pub fn finish(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = LoadReport::default();
        for h in self.handles {
            let r = h.join().expect("load thread");
            all.ok += r.ok;
            all.failures.extend(r.failures);
            for k in r.served_by {
                if !all.served_by.contains(&k) {
                    all.served_by.push(k);
                }
            }
        }
        all
    }
}

/// The pid in a pidfile, once it names something other than `not`.
pub fn wait_pidfile(path: &Path, not: Option<Pid>) -> Pid {
    let mut pid = None;
    wait_until(&format!("pidfile {}", path.display()), LONG, || {
        pid = std::fs::read_to_string(path)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .map(Pid::from_raw)
            .filter(|p| Some(*p) != not);
        pid.is_some()
    });
    pid.unwrap()
}

/// The Python example app.
pub const PYTHON_APP: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/examples/python_app.py");

/// `--exec` arguments for the Python example app behind a switch: once
/// `flag` exists (`break_it`), a new worker prints `line` to stderr,
/// waits `delay` seconds and exits `code` at boot, as a broken release
/// would.
pub struct Breakable {
    pub flag: PathBuf,
    pub exec: Vec<String>,
}

impl Breakable {
    pub fn new(dir: &Path, line: &str, delay: f64, code: i32) -> Breakable {
        let flag = dir.join("broken");
        let script = format!(
            "test -e '{}' && {{ echo '{line}' >&2; sleep {delay}; exit {code}; }}; \
             exec python3 '{PYTHON_APP}'",
            flag.display()
        );
        let exec = ["--exec", "sh", "-c", &script].map(String::from).to_vec();
        Breakable { flag, exec }
    }

    pub fn break_it(&self) {
        std::fs::write(&self.flag, "").unwrap();
    }

    pub fn fix(&self) {
        std::fs::remove_file(&self.flag).unwrap();
    }
}

/// The real systemd-socket-activate (package systemd).
pub fn socket_activate() -> &'static str {
    [
        "/usr/bin/systemd-socket-activate",
        "/bin/systemd-socket-activate",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .expect("systemd-socket-activate is missing (install the systemd package)")
}
