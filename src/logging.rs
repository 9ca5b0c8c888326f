//! Logging for operators: every line carries the role and pid of the
//! process that wrote it (`master[1234]`, `master.2[1240]`,
//! `worker[1250] gen=2 age=7`), a level that means something, and a
//! timestamp unless journald adds its own (`JOURNAL_STREAM`).
//!
//! `--log-file` is reopened on USR1 by opening the path again and
//! dup2-ing the new file over the descriptor the logger writes to: one
//! atomic swap, nothing to lock, and it works the same in every forked
//! worker (nginx and gunicorn reopen the same way).

use std::fmt::Display;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use anyhow::{Context, Result};
use log::{Level, LevelFilter};

/// The log target of lines relayed from an exec worker's output; their
/// message already starts with the worker's role.
pub const RELAY: &str = "relay";

static ROLE: Mutex<String> = Mutex::new(String::new());
static FILE: OnceLock<(PathBuf, RawFd)> = OnceLock::new();

/// Sets the role printed on every line of this process.
pub fn set_role(role: String) {
    if let Ok(mut r) = ROLE.lock() {
        *r = role;
    }
}

fn role() -> String {
    ROLE.lock().map(|r| r.clone()).unwrap_or_default()
}

/// Whether lines carry a timestamp (not when journald adds its own).
static STAMP: AtomicBool = AtomicBool::new(true);

/// One log line, without its newline: time, level, role, message.
fn format_line(level: Level, target: &str, msg: &dyn Display) -> String {
    let time = if STAMP.load(Ordering::Relaxed) {
        format!(
            "{} ",
            humantime::format_rfc3339_millis(std::time::SystemTime::now())
        )
    } else {
        String::new()
    };
    let level = level.as_str().to_ascii_lowercase();
    let msg = plain(&msg.to_string());
    if target == RELAY {
        format!("{time}{level:5} {msg}")
    } else {
        format!("{time}{level:5} {}: {msg}", role())
    }
}

/// Installs the logger. `journal`: stderr is journald's, so no time.
pub fn init(
    level: LevelFilter,
    file: Option<&Path>,
    journal: bool,
) -> Result<()> {
    STAMP.store(!journal || file.is_some(), Ordering::Relaxed);
    let dispatch = fern::Dispatch::new()
        .format(|out, msg, rec| {
            out.finish(format_args!(
                "{}",
                format_line(rec.level(), rec.target(), msg)
            ))
        })
        // The level is the process's ceiling, set below, so a reload can
        // change it with log::set_max_level.
        .level(LevelFilter::Trace);
    let out = match file {
        Some(path) => {
            let f = open(path)?;
            let _ = FILE.set((path.to_path_buf(), f.as_raw_fd()));
            Sink::new(f.into())
        }
        None => Sink::stderr(),
    };
    let out: Box<dyn Write + Send> = Box::new(out);
    let dispatch = dispatch.chain(out);
    dispatch.apply().context("logger already installed")?;
    log::set_max_level(level);
    Ok(())
}

fn open(path: &Path) -> Result<std::fs::File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .custom_flags(nix::libc::O_CLOEXEC)
        .open(path)
        .with_context(|| format!("log file {}", path.display()))
}

/// Where log lines go: stderr or the log file. It collects a line and
/// hands it to the kernel in one write: masters and workers share
/// stderr (and journald's stream), and a line written in pieces would
/// interleave with another process's line. With O_APPEND files, one
/// write per line also keeps lines whole.
///
/// It never blocks and never fails (SPEC 2.7: the master never dies or
/// stalls because of its log): a line that cannot be written now (a
/// full or stalled pipe, EPIPE, ENOSPC) is dropped and counted, and the
/// next line that can be written is preceded by one "N log lines lost".
/// An error returned to fern would make it fall back to stderr and
/// panic when that fails too.
struct Sink {
    /// The log file; `None` for stderr, which this never owns.
    file: Option<OwnedFd>,
    buf: Vec<u8>,
    lost: u64,
    /// A line was cut short: the next write starts a new line first.
    mid_line: bool,
}

impl Sink {
    fn new(file: OwnedFd) -> Sink {
        Sink {
            file: Some(file),
            buf: Vec::with_capacity(256),
            lost: 0,
            mid_line: false,
        }
    }

    fn stderr() -> Sink {
        Sink {
            file: None,
            buf: Vec::with_capacity(256),
            lost: 0,
            mid_line: false,
        }
    }

    fn fd(&self) -> BorrowedFd<'_> {
        match &self.file {
            Some(f) => f.as_fd(),
            None => stderr(),
        }
    }

    /// Writes one whole line, or counts it as lost.
    fn emit(&mut self, line: &[u8]) {
        if self.mid_line {
            if !self.put(b"\n") {
                self.lost += 1;
                return;
            }
            self.mid_line = false;
        }
        if self.lost > 0 {
            let n = self.lost;
            let what = if n == 1 { "log line" } else { "log lines" };
            let note = format_line(
                Level::Warn,
                "",
                &format_args!(
                    "{n} {what} lost (the log could not be written)"
                ),
            );
            if !self.put(format!("{note}\n").as_bytes()) {
                self.lost += 1;
                return;
            }
            self.lost = 0;
        }
        if !self.put(line) {
            self.lost += 1;
        }
    }

    /// Whether all of `bytes` went out.
    fn put(&mut self, mut bytes: &[u8]) -> bool {
        let mut wrote = false;
        while !bytes.is_empty() {
            match crate::sys::write_nowait(self.fd(), bytes) {
                Ok(0) => break,
                Ok(n) => {
                    wrote = true;
                    bytes = &bytes[n..];
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => break,
            }
        }
        if !bytes.is_empty() && wrote {
            self.mid_line = true;
        }
        bytes.is_empty()
    }
}

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        if self.buf.ends_with(b"\n") {
            self.flush()?;
        }
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let line = std::mem::take(&mut self.buf);
            self.emit(&line);
            self.buf = line;
            self.buf.clear();
        }
        Ok(())
    }
}

/// Writes one line to stderr the way log lines go (never blocking,
/// never failing): the fatal line of a master whose stderr may be a
/// dead or stalled pipe.
pub fn stderr_line(text: &str) {
    let line = format!("{}\n", plain(text));
    let _ = crate::sys::write_nowait(stderr(), line.as_bytes());
}

fn stderr() -> BorrowedFd<'static> {
    // SAFETY: fd 2 is never closed by this program.
    #[allow(unsafe_code)]
    let fd = unsafe { crate::sys::borrow_forever(2) };
    fd
}

/// Text for an operator: Rust's io::Error appends "(os error N)" to the
/// OS reason, and nix's Errno puts its symbol before it
/// ("ENOENT: No such file or directory"); the reason alone is said
/// once, in plain words.
pub fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(" (os error ") {
        let tail = &rest[i + " (os error ".len()..];
        let digits = tail.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && tail[digits..].starts_with(')') {
            out.push_str(&rest[..i]);
            rest = &tail[digits + 1..];
        } else {
            out.push_str(&rest[..i + 1]);
            rest = &rest[i + 1..];
        }
    }
    out.push_str(rest);
    strip_errno_names(&out)
}

fn is_errno_name(sym: &str) -> bool {
    (1..200).any(|n| format!("{:?}", nix::errno::Errno::from_raw(n)) == sym)
}

/// Drops "EXXX: " where an errno's symbol precedes its description.
fn strip_errno_names(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at_word = true;
    let mut i = 0;
    let b = text.as_bytes();
    while i < b.len() {
        if at_word && b[i] == b'E' {
            let len = b[i + 1..]
                .iter()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
                .count();
            let after = i + 1 + len;
            if len >= 2
                && text[after..].starts_with(": ")
                && is_errno_name(&text[i..after])
            {
                i = after + 2;
                continue;
            }
        }
        let c = text[i..].chars().next().unwrap_or(' ');
        at_word = !c.is_alphanumeric() && c != '_';
        out.push(c);
        i += c.len_utf8();
    }
    out
}

/// The descriptor of the log file, if logging goes to one (forked
/// workers keep it open).
pub fn file_fd() -> Option<RawFd> {
    FILE.get().map(|(_, fd)| *fd)
}

/// Reopens `--log-file` (after logrotate moved it).
pub fn reopen() -> Result<()> {
    let Some((path, fd)) = FILE.get() else {
        return Ok(());
    };
    let f = open(path)?;
    // SAFETY: `fd` is the log file's own number, owned by `FILE` for the
    // process's life; its writers want whatever file is under it now.
    #[allow(unsafe_code)]
    let swapped = unsafe { crate::sys::replace_fd(f.as_fd(), *fd) };
    swapped.with_context(|| format!("reopen log file {}", path.display()))?;
    log::info!("reopened log file {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_says_the_os_reason_once() {
        assert_eq!(
            plain("config /x: No such file or directory (os error 2)"),
            "config /x: No such file or directory"
        );
        assert_eq!(
            plain("chdir /x: ENOENT: No such file or directory"),
            "chdir /x: No such file or directory"
        );
        assert_eq!(
            plain("EOF (os error x) ENV: y"),
            "EOF (os error x) ENV: y"
        );
        assert_eq!(plain("got EPIPE: Broken pipe"), "got Broken pipe");
    }
}
