//! The validated configuration: options from the command line over the
//! config file, with defaults filled in and every value checked.
//!
//! `Config::load` is pure apart from reading the file and looking up
//! users, so HUP can call it again and keep the old configuration when
//! the new one is rejected.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use log::LevelFilter;
use nix::sys::signal::Signal;
use nix::sys::stat::Mode;
use nix::unistd::{Gid, Group, Uid, User};

use crate::cli::{Options, ReadyMode};
use crate::listeners::{BindOptions, BindSpec};

/// What runs as a worker.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkerKind {
    BuiltIn,
    Exec { program: PathBuf, args: Vec<String> },
}

/// Who workers run as, resolved at load time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub uid: Option<Uid>,
    pub gid: Option<Gid>,
    /// For initgroups: the user's name.
    pub user_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub binds: Vec<BindSpec>,
    pub bind_options: BindOptions,
    pub workers: usize,
    pub kind: WorkerKind,
    pub pidfile: Option<PathBuf>,
    pub config_file: Option<PathBuf>,
    /// The heartbeat a worker owes, if any (see `heartbeat`).
    pub timeout: Option<Duration>,
    pub timeout_signal: Signal,
    pub kill_after: Duration,
    pub graceful_timeout: Duration,
    pub ready: ReadyMode,
    pub boot_timeout: Duration,
    /// SPEC 13: how long a new generation must stay up before a reload
    /// or upgrade is complete; zero: off.
    pub probation: Duration,
    /// SPEC 13: halt after this many consecutive crashes; 0: off.
    pub crash_loop_limit: u32,
    /// SPEC 14: replace workers this many at a time on HUP; 0: all.
    pub reload_batch: usize,
    /// SPEC 15: a worker over this many bytes is replaced; and how often
    /// it is measured.
    pub max_worker_memory: Option<u64>,
    pub memory_check_interval: Duration,
    pub auto_retire: bool,
    pub max_requests: u64,
    pub max_requests_jitter: u64,
    pub client_timeout: Duration,
    pub credentials: Credentials,
    pub umask: Option<Mode>,
    pub chdir: Option<PathBuf>,
    pub log_level: LevelFilter,
    pub log_file: Option<PathBuf>,
    /// The real paths a generation runs, pinned when it starts
    /// (`spawn::pin_release`), so its respawns and a rollback to it run
    /// the release it started with whatever a deploy did to symlinks.
    pub release: Release,
}

/// SPEC 13: an exec generation's program and working directory, symlinks
/// resolved. `None` where the path could not be resolved at the start
/// (the spawn then reports the failure as it would without pinning).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Release {
    pub program: Option<PathBuf>,
    pub chdir: Option<PathBuf>,
}

/// Facts about the process environment that change defaults.
#[derive(Debug, Clone, Copy, Default)]
pub struct Facts {
    /// Started by systemd with `NOTIFY_SOCKET`.
    pub under_systemd: bool,
}

impl Config {
    /// Reads the `-c` file if any, puts the command line over it and
    /// validates the result.
    pub fn load(cli: &Options, ctx: Facts) -> Result<Config> {
        let opts = match &cli.config {
            Some(path) => cli.clone().over(read_file(path)?),
            None => cli.clone(),
        };
        Config::from_options(opts, ctx)
    }

    pub fn from_options(o: Options, ctx: Facts) -> Result<Config> {
        let kind = match o.exec {
            Some(v) if !v.is_empty() => WorkerKind::Exec {
                program: PathBuf::from(&v[0]),
                args: v[1..].to_vec(),
            },
            Some(_) => bail!("--exec: missing PROGRAM"),
            None => WorkerKind::BuiltIn,
        };
        let workers = o.workers.unwrap_or(1);
        if workers == 0 {
            bail!("--workers 0: at least one worker is needed");
        }
        if o.max_requests.is_some_and(|n| n > 0)
            && matches!(kind, WorkerKind::Exec { .. })
        {
            bail!(
                "--max-requests: exec workers do not report the requests \
                 they serve, so it applies to built-in workers only; use \
                 --max-worker-memory to replace a leaking app"
            );
        }
        let memory_check_interval = secs(o.memory_check_interval, 5.0);
        if memory_check_interval < Duration::from_millis(100) {
            bail!(
                "--memory-check-interval {}: at least 0.1 s",
                humantime::format_duration(memory_check_interval)
            );
        }
        let ready =
            o.ready.unwrap_or(ReadyMode::Delay(Duration::from_secs(1)));
        let timeout = heartbeat(&kind, ready, o.timeout.map(|s| s.0));
        let timeout_signal =
            o.timeout_signal.map(|s| s.0).unwrap_or(Signal::SIGABRT);
        if timeout_signal == crate::spawn::KILL_TREE
            && matches!(kind, WorkerKind::Exec { .. })
        {
            bail!(
                "--timeout-signal {}: exec workers' keepers take it as \
                 \"kill the whole tree now\"; choose another signal (ABRT, \
                 TERM, INT, QUIT, USR1)",
                timeout_signal.as_str().trim_start_matches("SIG")
            );
        }
        let backlog = o.backlog.unwrap_or(2048);
        if backlog < 1 {
            bail!("--backlog {backlog}: must be at least 1");
        }
        let log_level = match &o.log_level {
            Some(l) => l.parse::<LevelFilter>().map_err(|_| {
                anyhow::anyhow!(
                    "--log-level {l}: expected error, warn, info, debug or \
                     trace"
                )
            })?,
            None => LevelFilter::Info,
        };
        let umask = match &o.umask {
            Some(s) => Some(parse_umask(s)?),
            None => None,
        };
        let binds: Vec<BindSpec> = o
            .bind
            .into_iter()
            .map(|mut b| {
                if let crate::listeners::Addr::Unix(p) = &b.addr {
                    b.addr = crate::listeners::Addr::Unix(absolute(p.clone()));
                }
                b
            })
            .collect();
        // The same descriptor twice would have two owners (and a double
        // close); other duplicates fail at bind with "in use".
        for (i, b) in binds.iter().enumerate() {
            let fd = matches!(b.addr, crate::listeners::Addr::Fd(_));
            if fd && binds[..i].iter().any(|o: &BindSpec| o.addr == b.addr) {
                bail!("--bind {}: given twice", b.addr);
            }
        }
        Ok(Config {
            binds,
            bind_options: BindOptions {
                backlog,
                reuse_port: o.reuse_port,
                unix_mode: match &o.socket_mode {
                    Some(m) => Some(parse_octal("--socket-mode", m, 0o7777)?),
                    None => None,
                },
                unix_owner: match &o.socket_owner {
                    Some(s) => socket_owner(s)?,
                    None => (None, None),
                },
            },
            workers,
            kind,
            pidfile: o.pid.map(absolute),
            config_file: o.config.map(absolute),
            timeout,
            timeout_signal,
            kill_after: secs(o.kill_after, 2.0),
            graceful_timeout: secs(o.graceful_timeout, 30.0),
            ready,
            boot_timeout: secs(o.boot_timeout, 30.0),
            probation: secs(o.probation, 0.0),
            crash_loop_limit: o.crash_loop_limit.unwrap_or(0),
            reload_batch: o.reload_batch.unwrap_or(0),
            max_worker_memory: o.max_worker_memory.map(|s| s.0),
            memory_check_interval,
            auto_retire: o
                .auto_retire
                .map(|a| a.0)
                .unwrap_or(ctx.under_systemd),
            max_requests: o.max_requests.unwrap_or(0),
            max_requests_jitter: o.max_requests_jitter.unwrap_or(0),
            client_timeout: secs(o.client_timeout, 10.0),
            credentials: credentials(o.user.as_deref(), o.group.as_deref())?,
            umask,
            chdir: o.chdir,
            log_level,
            log_file: o.log_file.map(absolute),
            release: Release::default(),
        })
    }
}

/// Reads and parses a config file; errors name the file, and toml's
/// name the line and column.
pub fn read_file(path: &Path) -> Result<Options> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("config {}", path.display()))?;
    toml::from_str(&text).map_err(|e| {
        anyhow::anyhow!("config {}: {}", path.display(), toml_error(&text, &e))
    })
}

/// A TOML error as one line an operator reads: where (line, and the
/// line itself) and what, in words rather than Rust's type names.
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let mut what =
        e.message().split_whitespace().collect::<Vec<_>>().join(" ");
    for (rust, words) in [
        ("expected usize", "expected a whole number >= 0"),
        ("expected u64", "expected a whole number >= 0"),
        ("expected u32", "expected a whole number >= 0"),
        ("expected i32", "expected a whole number"),
    ] {
        what = what.replace(rust, words);
    }
    match e.span() {
        Some(span) => {
            let start = span.start.min(text.len());
            let line = text[..start].matches('\n').count() + 1;
            let source = text.lines().nth(line - 1).unwrap_or_default().trim();
            format!("line {line} ({source}): {what}")
        }
        None => what,
    }
}

/// The pidfile `upgrader -s` acts on: `--pid`, else the `pid` key of
/// the `-c` file. A file that does not parse (a typo while editing it)
/// still names its pidfile if a line says `pid = "..."`, so the running
/// master can be reached; only the pidfile is needed for that.
pub fn control_pidfile(cli: &Options) -> Result<PathBuf> {
    if let Some(p) = &cli.pid {
        return Ok(absolute(p.clone()));
    }
    let Some(path) = &cli.config else {
        bail!(
            "-s needs the master's pidfile: --pid FILE, or -c FILE with a pid \
             key"
        );
    };
    match read_file(path) {
        Ok(o) => o.pid.map(absolute).with_context(|| {
            format!(
                "config {}: no pid key, so -s cannot find the master; use \
                 --pid FILE",
                path.display()
            )
        }),
        Err(e) => {
            let found = std::fs::read_to_string(path)
                .ok()
                .and_then(|text| scan_pid(&text));
            match found {
                Some(p) => Ok(absolute(p)),
                None => Err(anyhow::anyhow!(
                    "{e:#}; no pid = \"...\" line in it either, so -s cannot \
                     find the master: use --pid FILE"
                )),
            }
        }
    }
}

/// A lenient look for a top-level `pid = "FILE"` (or `'FILE'`) line in
/// a config file that does not parse as a whole.
pub fn scan_pid(text: &str) -> Option<PathBuf> {
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with('[') {
            // A table: keys below it are not top-level options.
            return None;
        }
        let Some(rest) = l.strip_prefix("pid") else {
            continue;
        };
        let Some(value) = rest.trim_start().strip_prefix('=') else {
            continue;
        };
        let value = value.trim();
        for q in ['"', '\''] {
            if let Some(v) = value.strip_prefix(q)
                && let Some((inner, _)) = v.split_once(q)
                && !inner.is_empty()
            {
                return Some(PathBuf::from(inner));
            }
        }
    }
    None
}

fn secs(v: Option<crate::cli::Secs>, default: f64) -> Duration {
    v.map(|s| s.0).unwrap_or(Duration::from_secs_f64(default))
}

/// The heartbeat timeout a worker is held to. Built-in workers beat
/// (30 s unless told); an exec worker only when it was asked to speak
/// the notify protocol *and* given an explicit timeout, because most
/// apps (gunicorn included) never send WATCHDOG=1.
pub fn heartbeat(
    kind: &WorkerKind,
    ready: ReadyMode,
    timeout: Option<Duration>,
) -> Option<Duration> {
    let t = match kind {
        WorkerKind::BuiltIn => timeout.unwrap_or(Duration::from_secs(30)),
        WorkerKind::Exec { .. } => match (ready, timeout) {
            (ReadyMode::Notify, Some(t)) => t,
            _ => return None,
        },
    };
    (!t.is_zero()).then_some(t)
}

impl Config {
    /// The per-connection deadline a built-in worker uses:
    /// `--client-timeout`, capped at half the heartbeat timeout, since
    /// the worker beats only between connections and one slow client
    /// must not make it miss its heartbeat. The second value says
    /// whether the cap applied.
    pub fn worker_client_timeout(&self) -> (Duration, bool) {
        client_timeout_cap(self.client_timeout, self.timeout)
    }
}

/// min(client_timeout, timeout / 2) when a timeout is set; see
/// [`Config::worker_client_timeout`].
pub fn client_timeout_cap(
    client: Duration,
    timeout: Option<Duration>,
) -> (Duration, bool) {
    match timeout.map(|t| t / 2) {
        Some(half) if client > half => (half, true),
        _ => (client, false),
    }
}

fn parse_umask(s: &str) -> Result<Mode> {
    let b = parse_octal("--umask", s, 0o777)?;
    Ok(Mode::from_bits_truncate(b as nix::libc::mode_t))
}

fn parse_octal(what: &str, s: &str, max: u32) -> Result<u32> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|b| *b <= max)
        .with_context(|| {
            format!("{what} {s}: expected an octal mode such as 022")
        })
}

/// `USER`, `USER:GROUP` or `:GROUP`, by name or number.
fn socket_owner(s: &str) -> Result<(Option<u32>, Option<u32>)> {
    let (user, group) = match s.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (s, None),
    };
    let user = (!user.is_empty()).then_some(user);
    let c = credentials(user, group.filter(|g| !g.is_empty()))
        .with_context(|| format!("--socket-owner {s}"))?;
    Ok((
        c.uid.map(|u| u.as_raw()),
        // A group only if one was named (not the user's primary group).
        group.and(c.gid).map(|g| g.as_raw()),
    ))
}

fn credentials(
    user: Option<&str>,
    group: Option<&str>,
) -> Result<Credentials> {
    let mut c = Credentials {
        uid: None,
        gid: None,
        user_name: None,
    };
    if let Some(u) = user {
        let found = match u.parse::<u32>() {
            Ok(n) => User::from_uid(Uid::from_raw(n)),
            Err(_) => User::from_name(u),
        };
        let found = found
            .with_context(|| format!("--user {u}"))?
            .with_context(|| format!("--user {u}: no such user"))?;
        c.uid = Some(found.uid);
        c.gid = Some(found.gid);
        c.user_name = Some(found.name);
    }
    if let Some(g) = group {
        let found = match g.parse::<u32>() {
            Ok(n) => Group::from_gid(Gid::from_raw(n)),
            Err(_) => Group::from_name(g),
        };
        let found = found
            .with_context(|| format!("--group {g}"))?
            .with_context(|| format!("--group {g}: no such group"))?;
        c.gid = Some(found.gid);
    }
    Ok(c)
}

/// `p` against the current directory (where the command was run).
pub fn absolute(p: PathBuf) -> PathBuf {
    if p.is_absolute() {
        return p;
    }
    match std::env::current_dir() {
        Ok(cwd) => cwd.join(p),
        Err(_) => p,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn load(args: &[&str]) -> Result<Config> {
        let mut v = vec!["upgrader"];
        v.extend_from_slice(args);
        Config::from_options(Options::try_parse_from(v)?, Facts::default())
    }

    #[test]
    fn defaults() {
        let c = load(&[]).unwrap();
        assert_eq!(c.workers, 1);
        assert_eq!(c.kind, WorkerKind::BuiltIn);
        assert_eq!(c.timeout, Some(Duration::from_secs(30)));
        assert_eq!(c.timeout_signal, Signal::SIGABRT);
        assert_eq!(c.graceful_timeout, Duration::from_secs(30));
        assert!(!c.auto_retire);
        assert_eq!(c.bind_options.backlog, 2048);
    }

    #[test]
    fn exec_workers_owe_no_heartbeat_unless_asked_twice() {
        let c = load(&["--exec", "./app"]).unwrap();
        assert_eq!(c.timeout, None);
        let c = load(&["--timeout", "5", "--exec", "./app"]).unwrap();
        assert_eq!(c.timeout, None);
        let c = load(&["--ready", "notify", "--timeout", "5", "--exec", "a"])
            .unwrap();
        assert_eq!(c.timeout, Some(Duration::from_secs(5)));
    }

    #[test]
    fn exec_workers_refuse_the_keepers_signal_as_timeout_signal() {
        let e = load(&["--timeout-signal", "USR2", "--exec", "./app"])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--timeout-signal USR2: "), "{e}");
        assert!(load(&["--timeout-signal", "USR2"]).is_ok(), "built-in");
    }

    #[test]
    fn timeout_zero_is_off() {
        assert_eq!(load(&["--timeout", "0"]).unwrap().timeout, None);
    }

    #[test]
    fn auto_retire_defaults_on_under_systemd() {
        let o = Options::try_parse_from(["upgrader"]).unwrap();
        let c = Config::from_options(
            o,
            Facts {
                under_systemd: true,
            },
        );
        assert!(c.unwrap().auto_retire);
    }

    #[test]
    fn bad_values_are_named() {
        let e = load(&["-w", "0"]).unwrap_err().to_string();
        assert!(e.contains("--workers 0"), "{e}");
        let e = load(&["--umask", "999"]).unwrap_err().to_string();
        assert!(e.contains("999"), "{e}");
        let e = load(&["--user", "no-such-user-here"]).unwrap_err();
        assert!(format!("{e:#}").contains("no such user"), "{e:#}");
        let e = load(&["-b", "fd:7", "-b", "fd:7"]).unwrap_err().to_string();
        assert!(e.contains("fd:7: given twice"), "{e}");
        assert!(load(&["-b", "127.0.0.1:0", "-b", "127.0.0.1:0"]).is_ok());
        let e = load(&["--log-level", "loud"]).unwrap_err().to_string();
        assert!(e.contains("loud"), "{e}");
    }

    #[test]
    fn a_broken_config_still_names_its_pidfile() {
        let p = |t: &str| scan_pid(t).map(|p| p.display().to_string());
        assert_eq!(
            p("workers = \nbind = [\npid = \"/run/u.pid\"\n"),
            Some("/run/u.pid".into())
        );
        assert_eq!(p("  pid='u.pid' # here\n"), Some("u.pid".into()));
        assert_eq!(p("pidx = \"no\"\npid = \"\"\n"), None);
        assert_eq!(p("[table]\npid = \"/x\"\n"), None);
        assert_eq!(p("workers = 2\n"), None);
    }

    #[test]
    fn client_timeout_is_capped_below_the_heartbeat() {
        let s = Duration::from_secs;
        assert_eq!(client_timeout_cap(s(10), Some(s(1))), (s(1) / 2, true));
        assert_eq!(client_timeout_cap(s(10), Some(s(30))), (s(10), false));
        assert_eq!(client_timeout_cap(s(10), None), (s(10), false));
        assert_eq!(client_timeout_cap(s(15), Some(s(30))), (s(15), false));
    }
}
