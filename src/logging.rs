//! Logging for operators: every line carries the role and pid of the
//! process that wrote it (`master[1234]`, `master.2[1240]`,
//! `worker[1250] gen=2 age=7`), a level that means something, and a
//! timestamp unless journald adds its own (`JOURNAL_STREAM`).
//!
//! `--log-file` is reopened on USR1 by opening the path again and
//! dup2-ing the new file over the descriptor the logger writes to: one
//! atomic swap, nothing to lock, and it works the same in every forked
//! worker (nginx and gunicorn reopen the same way).

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use anyhow::{Context, Result};
use log::LevelFilter;

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

/// Installs the logger. `journal`: stderr is journald's, so no time.
pub fn init(
    level: LevelFilter,
    file: Option<&Path>,
    journal: bool,
) -> Result<()> {
    let stamp = !journal || file.is_some();
    let dispatch = fern::Dispatch::new()
        .format(move |out, msg, rec| {
            let time = if stamp {
                format!(
                    "{} ",
                    humantime::format_rfc3339_millis(
                        std::time::SystemTime::now()
                    )
                )
            } else {
                String::new()
            };
            let level = rec.level().as_str().to_ascii_lowercase();
            if rec.target() == RELAY {
                out.finish(format_args!("{time}{level:5} {msg}"))
            } else {
                out.finish(format_args!("{time}{level:5} {}: {msg}", role()))
            }
        })
        // The level is the process's ceiling, set below, so a reload can
        // change it with log::set_max_level.
        .level(LevelFilter::Trace);
    let out: Box<dyn Write + Send> = match file {
        Some(path) => {
            let f = open(path)?;
            let _ = FILE.set((path.to_path_buf(), f.as_raw_fd()));
            Box::new(OneWrite::new(f))
        }
        None => Box::new(OneWrite::new(std::io::stderr())),
    };
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

/// Collects a log line and hands it to the kernel in one write(2):
/// masters and workers share stderr (and journald's stream), and a line
/// written in pieces would interleave with another process's line. With
/// O_APPEND files, one write per line also keeps lines whole.
struct OneWrite<W: Write> {
    inner: W,
    buf: Vec<u8>,
}

impl<W: Write> OneWrite<W> {
    fn new(inner: W) -> Self {
        OneWrite {
            inner,
            buf: Vec::with_capacity(256),
        }
    }
}

impl<W: Write> Write for OneWrite<W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        if self.buf.ends_with(b"\n") {
            self.flush()?;
        }
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let r = self.inner.write_all(&self.buf);
            self.buf.clear();
            r?;
        }
        self.inner.flush()
    }
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
    crate::sys::replace_fd(f.as_fd(), *fd)
        .with_context(|| format!("reopen log file {}", path.display()))?;
    log::info!("reopened log file {}", path.display());
    Ok(())
}
