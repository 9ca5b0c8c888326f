//! The command line, as clap parses it, and the same options as a TOML
//! config file spells them (keys are the long option names).
//!
//! Only raw values live here; `config` turns them into a validated
//! `Config` with defaults. Every field is optional so that the command
//! line can win over the file field by field.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;
use nix::sys::signal::Signal;
use serde::Deserialize;

use crate::listeners::BindSpec;

const ABOUT: &str = "A zero-downtime prefork master: owns the listening \
sockets, keeps a pool of workers serving them, and replaces workers (HUP) \
or itself (USR2) without closing the sockets.";

const AFTER: &str = "\
Signals to the master: HUP reload, USR2 binary upgrade, TERM graceful stop,
INT/QUIT fast stop, TTIN/TTOU one worker more/fewer, WINCH drain workers,
USR1 reopen log files. See upgrader(1).

Exit status: 0 stopped, 1 runtime failure, 2 usage or configuration error,
3 workers failed to boot, 4 the app reported it cannot load.";

#[derive(Parser, Deserialize, Debug, Default, Clone)]
#[command(
    name = "upgrader",
    version,
    about = ABOUT,
    after_help = AFTER,
    override_usage = "upgrader [OPTIONS] [--exec PROGRAM [ARGS]...]\n       \
                      upgrader -s SIGNAL [--pid FILE | -c FILE] [--wait SECS] \
                      [--json]"
)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Options {
    /// Listen on ADDR: HOST:PORT, [V6]:PORT, unix:PATH, fd:NUM or
    /// systemd:NAME; NAME= names the socket in LISTEN_FDNAMES
    /// (repeatable) [default: 127.0.0.1:8000, or every socket passed in]
    #[arg(short, long, value_name = "[NAME=]ADDR")]
    #[serde(default, deserialize_with = "one_or_many")]
    pub bind: Vec<BindSpec>,

    /// Number of worker processes [default: 1]
    #[arg(short, long, allow_negative_numbers = true, value_name = "N")]
    pub workers: Option<usize>,

    /// Write the master's pid to FILE once it serves
    #[arg(short, long, value_name = "FILE")]
    pub pid: Option<PathBuf>,

    /// Read options from a TOML file (keys are long option names); it is
    /// re-read on HUP and the command line wins over it
    #[arg(short, long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Seconds a worker may go without a heartbeat before it is signalled;
    /// 0 = off [default: 30 for built-in workers, off for exec workers]
    #[arg(long, allow_negative_numbers = true, value_name = "SECS")]
    pub timeout: Option<Secs>,

    /// First signal sent to a late worker [default: ABRT]
    #[arg(long, value_name = "SIG")]
    pub timeout_signal: Option<SignalName>,

    /// SIGKILL a late worker this long after the timeout signal
    /// [default: 2]
    #[arg(long, allow_negative_numbers = true, value_name = "SECS")]
    pub kill_after: Option<Secs>,

    /// Drain budget for stop, reload and upgrade, after which what is
    /// left is SIGKILLed [default: 30]
    #[arg(long, allow_negative_numbers = true, value_name = "SECS")]
    pub graceful_timeout: Option<Secs>,

    /// When an exec worker counts as ready: on READY=1 (notify) or once
    /// alive SECS (delay:SECS) [default: delay:1]
    #[arg(long, value_name = "notify|delay:SECS")]
    pub ready: Option<ReadyMode>,

    /// A worker not ready this long after its spawn failed to boot
    /// [default: 30]
    #[arg(long, allow_negative_numbers = true, value_name = "SECS")]
    pub boot_timeout: Option<Secs>,

    /// A reload or upgrade is complete only once the new workers have
    /// been ready this long with none exiting on its own; a crash in the
    /// window rolls back to the previous generation or master (the first
    /// generation halts, exit 3); 0 = off [default: 0]
    #[arg(long, allow_negative_numbers = true, value_name = "SECS")]
    pub probation: Option<Secs>,

    /// Halt (exit 3) after N consecutive crashes of the current
    /// generation, none of them living 10 s; 0 = off [default: 0]
    #[arg(long, allow_negative_numbers = true, value_name = "N")]
    pub crash_loop_limit: Option<u32>,

    /// Replace workers N at a time on HUP (spawn N, wait until ready,
    /// retire N old ones), so at most workers + N exist; 0 = the whole
    /// generation at once [default: 0]
    #[arg(long, allow_negative_numbers = true, value_name = "N")]
    pub reload_batch: Option<usize>,

    /// Replace a worker whose memory (PSS summed over its process group)
    /// is over SIZE: 512M, 2G, or bytes [default: off]
    #[arg(long, allow_negative_numbers = true, value_name = "SIZE")]
    pub max_worker_memory: Option<Size>,

    /// How often workers' memory is measured when --max-worker-memory is
    /// set [default: 5]
    #[arg(long, allow_negative_numbers = true, value_name = "SECS")]
    pub memory_check_interval: Option<Secs>,

    /// After a USR2 upgrade, retire the old master as soon as the new one
    /// is ready [default: on under systemd (NOTIFY_SOCKET set), else off]
    #[arg(long, value_name = "on|off")]
    pub auto_retire: Option<OnOff>,

    /// Listen backlog of sockets this master binds [default: 2048]
    #[arg(long, allow_negative_numbers = true, value_name = "N")]
    pub backlog: Option<i32>,

    /// Set SO_REUSEPORT on sockets this master binds
    #[arg(long)]
    #[serde(default)]
    pub reuse_port: bool,

    /// File mode of unix sockets this master binds, octal (e.g. 660)
    /// [default: as the umask leaves it]
    #[arg(long, value_name = "OCTAL")]
    pub socket_mode: Option<String>,

    /// Owner of unix sockets this master binds: USER, USER:GROUP or
    /// :GROUP [default: unchanged]
    #[arg(long, value_name = "USER[:GROUP]")]
    pub socket_owner: Option<String>,

    /// A built-in worker restarts after serving N requests (plus up to
    /// --max-requests-jitter more); 0 = never [default: 0]
    #[arg(long, allow_negative_numbers = true, value_name = "N")]
    pub max_requests: Option<u64>,

    /// Random extra requests added to --max-requests per worker, so
    /// workers do not restart together [default: 0]
    #[arg(long, allow_negative_numbers = true, value_name = "N")]
    pub max_requests_jitter: Option<u64>,

    /// Seconds a built-in worker waits on a client's request or on
    /// sending its response [default: 10]
    #[arg(long, allow_negative_numbers = true, value_name = "SECS")]
    pub client_timeout: Option<Secs>,

    /// Workers switch to this user (name or uid) after the sockets are
    /// bound
    #[arg(short, long, value_name = "USER")]
    pub user: Option<String>,

    /// Workers switch to this group (name or gid)
    #[arg(short, long, value_name = "GROUP")]
    pub group: Option<String>,

    /// File mode creation mask of workers, octal (e.g. 027)
    #[arg(long, value_name = "OCTAL")]
    pub umask: Option<String>,

    /// Workers change to this directory before they start
    #[arg(long, value_name = "DIR")]
    pub chdir: Option<PathBuf>,

    /// error, warn, info, debug or trace [default: info]
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,

    /// Append the log to FILE instead of stderr; reopened on USR1
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,

    /// Run PROGRAM [ARGS]... as each worker, handing it the sockets as
    /// systemd does (LISTEN_FDS); the rest of the line is its arguments
    #[arg(
        long,
        value_name = "PROGRAM",
        num_args = 1..,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    #[serde(default, deserialize_with = "one_or_many_opt")]
    pub exec: Option<Vec<String>>,

    /// Validate the configuration (command line and -c file) and exit:
    /// 0 if usable, 2 if not
    #[arg(long)]
    #[serde(skip)]
    pub check_config: bool,

    /// Control a running master found by its pidfile: upgrade, reload,
    /// stop, quit, reopen or status
    #[arg(short = 's', long = "signal", value_name = "SIGNAL")]
    #[serde(skip)]
    pub control: Option<String>,

    /// With -s: stop waiting after SECS, exit 75 while the act goes on
    /// [default: the master's graceful and boot timeouts plus its probation]
    #[arg(
        long,
        allow_negative_numbers = true,
        value_name = "SECS",
        requires = "control"
    )]
    #[serde(skip)]
    pub wait: Option<Secs>,

    /// With -s status: print JSON
    #[arg(long, requires = "control")]
    #[serde(skip)]
    pub json: bool,
}

impl Options {
    /// Field by field, `self` (the command line) over `file`.
    pub fn over(self, file: Options) -> Options {
        macro_rules! pick {
            ($($f:ident),*) => {
                Options {
                    $($f: self.$f.or(file.$f),)*
                    bind: if self.bind.is_empty() { file.bind } else { self.bind },
                    reuse_port: self.reuse_port || file.reuse_port,
                    config: self.config,
                    check_config: self.check_config,
                    control: self.control,
                    wait: self.wait,
                    json: self.json,
                }
            };
        }
        pick!(
            workers,
            pid,
            timeout,
            timeout_signal,
            kill_after,
            graceful_timeout,
            ready,
            boot_timeout,
            probation,
            crash_loop_limit,
            reload_batch,
            max_worker_memory,
            memory_check_interval,
            auto_retire,
            backlog,
            max_requests,
            max_requests_jitter,
            client_timeout,
            socket_mode,
            socket_owner,
            user,
            group,
            umask,
            chdir,
            log_level,
            log_file,
            exec
        )
    }
}

/// A list in the config file may also be a single string
/// (`bind = "127.0.0.1:8000"`).
#[derive(Deserialize)]
#[serde(untagged, expecting = "expected a string or a list of strings")]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// Strings, one or a list, each parsed as `T` (its error, not serde's
/// "did not match any variant", reaches the operator).
fn one_or_many<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: FromStr,
    T::Err: std::fmt::Display,
{
    let v = match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    };
    v.into_iter()
        .map(|s| {
            s.parse::<T>()
                .map_err(<D::Error as serde::de::Error>::custom)
        })
        .collect()
}

fn one_or_many_opt<'de, D, T>(d: D) -> Result<Option<Vec<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: FromStr,
    T::Err: std::fmt::Display,
{
    one_or_many(d).map(Some)
}

/// A size in bytes: a whole number with an optional K, M, G or T
/// suffix (powers of 1024; `512M`, `2G`, `1048576`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let (num, mult) = match t.char_indices().last() {
            Some((i, c)) if c.is_ascii_alphabetic() => {
                let m: u64 = match c.to_ascii_uppercase() {
                    'K' => 1 << 10,
                    'M' => 1 << 20,
                    'G' => 1 << 30,
                    'T' => 1 << 40,
                    _ => {
                        return Err(format!(
                            "{s:?} is not a size (e.g. 512M, 2G, or bytes)"
                        ));
                    }
                };
                (&t[..i], m)
            }
            _ => (t, 1),
        };
        num.parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(mult))
            .filter(|n| *n > 0)
            .map(Size)
            .ok_or_else(|| {
                format!("{s:?} is not a size (e.g. 512M, 2G, or bytes)")
            })
    }
}

/// A number of seconds, fractions allowed (`0.5`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Secs(pub Duration);

impl FromStr for Secs {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let v: f64 = s
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not a number of seconds"))?;
        Secs::from_f64(v)
    }
}

impl Secs {
    fn from_f64(v: f64) -> Result<Secs, String> {
        if !v.is_finite() || !(0.0..=1e9).contains(&v) {
            return Err(format!("{v} is not a number of seconds >= 0"));
        }
        Ok(Secs(Duration::from_secs_f64(v)))
    }
}

impl<'de> Deserialize<'de> for Secs {
    fn deserialize<D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            I(i64),
            F(f64),
            S(String),
        }
        let r = match Raw::deserialize(d)? {
            Raw::I(i) => Secs::from_f64(i as f64),
            Raw::F(f) => Secs::from_f64(f),
            Raw::S(s) => s.parse(),
        };
        r.map_err(serde::de::Error::custom)
    }
}

/// A signal by name (`ABRT`, `SIGABRT`, `abrt`) or number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignalName(pub Signal);

impl FromStr for SignalName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let up = s.trim().to_ascii_uppercase();
        if let Ok(n) = up.parse::<i32>() {
            return Signal::try_from(n)
                .map(SignalName)
                .map_err(|_| format!("{s}: no such signal number"));
        }
        let full = if up.starts_with("SIG") {
            up
        } else {
            format!("SIG{up}")
        };
        Signal::from_str(&full)
            .map(SignalName)
            .map_err(|_| format!("{s}: unknown signal name"))
    }
}

/// When an exec worker counts as ready.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ReadyMode {
    Notify,
    Delay(Duration),
}

impl FromStr for ReadyMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "notify" {
            return Ok(ReadyMode::Notify);
        }
        match s.strip_prefix("delay:") {
            Some(secs) => secs.parse::<Secs>().map(|d| ReadyMode::Delay(d.0)),
            None => Err(format!("{s}: expected notify or delay:SECS")),
        }
    }
}

/// `on` or `off` (also true/false, yes/no).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OnOff(pub bool);

impl FromStr for OnOff {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "on" | "true" | "yes" | "1" => Ok(OnOff(true)),
            "off" | "false" | "no" | "0" => Ok(OnOff(false)),
            _ => Err(format!("{s}: expected on or off")),
        }
    }
}

/// Deserialize from a string (or a bool, for `OnOff`) through `FromStr`,
/// so the file reports the same reasons as the command line, with toml's
/// line and column.
macro_rules! de_from_str {
    ($($t:ty),*) => {$(
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(
                d: D,
            ) -> Result<Self, D::Error> {
                #[derive(Deserialize)]
                #[serde(untagged, expecting = "expected a string")]
                enum Raw {
                    B(bool),
                    I(i64),
                    S(String),
                }
                let s = match Raw::deserialize(d)? {
                    Raw::B(b) => if b { "on".into() } else { "off".into() },
                    Raw::I(i) => i.to_string(),
                    Raw::S(s) => s,
                };
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}
de_from_str!(SignalName, ReadyMode, OnOff, BindSpec, Size);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_takes_the_rest_of_the_line() {
        let o = Options::try_parse_from([
            "upgrader", "-w", "3", "--exec", "./app", "--port", "-v",
        ])
        .unwrap();
        assert_eq!(o.workers, Some(3));
        assert_eq!(o.exec.unwrap(), ["./app", "--port", "-v"]);
    }

    #[test]
    fn command_line_wins_over_file() {
        let file: Options = toml::from_str(
            "workers = 4\ntimeout = 5\nbind = [\"127.0.0.1:1\"]\n\
             graceful-timeout = 1.5\nauto-retire = true\n",
        )
        .unwrap();
        let cli = Options::try_parse_from(["upgrader", "-w", "2"]).unwrap();
        let o = cli.over(file);
        assert_eq!(o.workers, Some(2));
        assert_eq!(o.timeout, Some(Secs(Duration::from_secs(5))));
        assert_eq!(
            o.graceful_timeout,
            Some(Secs(Duration::from_millis(1500)))
        );
        assert_eq!(o.bind.len(), 1);
        assert_eq!(o.auto_retire, Some(OnOff(true)));
    }

    #[test]
    fn a_single_string_is_a_list_of_one() {
        let o: Options =
            toml::from_str("bind = \"127.0.0.1:1\"\nexec = \"./app\"\n")
                .unwrap();
        assert_eq!(o.bind.len(), 1);
        assert_eq!(o.exec.unwrap(), ["./app"]);
    }

    #[test]
    fn file_errors_name_line_and_reason() {
        let e =
            toml::from_str::<Options>("workers = 2\nbind = [\"x:99999\"]\n")
                .unwrap_err()
                .to_string();
        assert!(e.contains("line 2") && e.contains("99999"), "{e}");
        let e = toml::from_str::<Options>("wrokers = 2\n").unwrap_err();
        assert!(e.to_string().contains("wrokers"), "{e}");
    }

    #[test]
    fn signals_by_any_name() {
        for s in ["ABRT", "SIGABRT", "abrt", "6"] {
            assert_eq!(s.parse::<SignalName>().unwrap().0, Signal::SIGABRT);
        }
        assert!("NOPE".parse::<SignalName>().is_err());
    }

    #[test]
    fn ready_modes() {
        assert_eq!("notify".parse::<ReadyMode>().unwrap(), ReadyMode::Notify);
        assert_eq!(
            "delay:0.5".parse::<ReadyMode>().unwrap(),
            ReadyMode::Delay(Duration::from_millis(500))
        );
        assert!("later".parse::<ReadyMode>().is_err());
    }
}
