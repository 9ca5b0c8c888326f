//! The pidfile: written atomically once the master serves, so "the
//! pidfile exists" means "serving" (SPEC 5); removed at exit only while
//! it is still ours (a successor may have taken it over).
//!
//! Two masters on one pidfile are refused with flock(2) locks, in two
//! steps. While it boots, a master holds `<pidfile>.lock`; once it
//! serves, it holds the pidfile itself (the pid is written to a new file
//! that is locked before it is renamed over the path, so the lock is at
//! the path as soon as the pid is) and then removes the `.lock` file. A
//! starting master takes `.lock` first and only then looks at the
//! pidfile, so whichever order two masters run in, one of them sees the
//! other's lock. flock belongs to the open file description, so reading
//! the file elsewhere never drops it (a POSIX record lock would be
//! dropped by any close in the process), and descriptors are
//! close-on-exec, so no exec'd child keeps it. A new master of a USR2
//! locks `<pidfile>.2` the same way and renames it over the pidfile at
//! its promotion: the lock moves with the inode.
//!
//! The temporary file is created with O_EXCL | O_NOFOLLOW: a master
//! running as root never writes through a symlink planted at its name.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::kill;
use nix::unistd::Pid;

/// What a pidfile holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    Missing,
    /// Nothing yet (a master that is still starting holds it so).
    Empty,
    Pid(Pid),
    /// Something that is not a pid (the first line of it).
    Garbage(String),
    /// It cannot be read (the reason).
    Unreadable(String),
}

/// What the pidfile at `path` holds.
pub fn content(path: &Path) -> Content {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Content::Missing,
        Err(e) => Content::Unreadable(crate::logging::plain(&e.to_string())),
    }
}

fn parse(text: &str) -> Content {
    let t = text.trim();
    if t.is_empty() {
        return Content::Empty;
    }
    match t.parse::<i32>() {
        Ok(n) if n > 0 => Content::Pid(Pid::from_raw(n)),
        _ => {
            let first: String = t
                .lines()
                .next()
                .unwrap_or_default()
                .chars()
                .take(40)
                .collect();
            Content::Garbage(first)
        }
    }
}

/// The pid a pidfile names, if it holds one.
pub fn read(path: &Path) -> Option<Pid> {
    match content(path) {
        Content::Pid(p) => Some(p),
        _ => None,
    }
}

/// Whether `pid` is a live upgrader process (not just any process that
/// reused the number).
pub fn is_live_upgrader(pid: Pid) -> bool {
    if kill(pid, None).is_err() {
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
    let argv0 = String::from_utf8_lossy(argv0);
    let ours = std::env::args().next().unwrap_or_default();
    base(&argv0) == base(&ours) || base(&argv0) == "upgrader"
}

fn base(s: &str) -> &str {
    s.rsplit('/').next().unwrap_or(s)
}

/// A master's flock on the file at its pidfile path (see the module
/// header). Dropping it releases the lock.
#[derive(Debug)]
pub struct Lock {
    path: PathBuf,
    file: Flock<File>,
}

impl Lock {
    /// At start: locks `<pidfile>.lock` (created if missing), then
    /// refuses, naming the holder, when another master holds it, holds
    /// the pidfile (it serves) or `<pidfile>.2` (an upgrade is under
    /// way), or when the pidfile names a live upgrader (a master of a
    /// version before locks). The pidfile itself is not created.
    pub fn acquire(path: &Path) -> Result<Lock> {
        let me = nix::unistd::getpid();
        let lockpath = sibling(path, ".lock");
        for _ in 0..5 {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .mode(0o644)
                .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
                .open(&lockpath)
                .with_context(|| {
                    format!("pidfile lock {}", lockpath.display())
                })?;
            let file = match Flock::lock(file, FlockArg::LockExclusiveNonblock)
            {
                Ok(f) => f,
                Err((file, nix::errno::Errno::EWOULDBLOCK)) => {
                    bail!("{}", held_by(path, &file))
                }
                Err((_, e)) => {
                    return Err(e).with_context(|| {
                        format!("pidfile lock {}: flock", lockpath.display())
                    });
                }
            };
            // A master may have removed the file between the open and
            // the lock (it serves now): the lock must be on the file
            // that is there now.
            if !same_file(&lockpath, &file) {
                continue;
            }
            let lock = Lock {
                path: lockpath,
                file,
            };
            for (file, busy) in [
                (path.to_path_buf(), ""),
                (successor(path), " (an upgrade is in progress)"),
            ] {
                if let Ok(f) = File::open(&file)
                    && let Err((f, nix::errno::Errno::EWOULDBLOCK)) =
                        Flock::lock(f, FlockArg::LockSharedNonblock)
                {
                    lock.remove();
                    bail!("{}{busy}", held_by(&file, &f));
                }
            }
            if let Content::Pid(pid) = content(path)
                && pid != me
                && is_live_upgrader(pid)
            {
                lock.remove();
                bail!(
                    "pidfile {}: upgrader master {pid} is already running",
                    path.display()
                );
            }
            return Ok(lock);
        }
        bail!(
            "pidfile lock {}: replaced over and over; not locked",
            lockpath.display()
        )
    }

    /// Whether the file at the path is still the one locked here.
    pub fn at_path(&self) -> bool {
        same_file(&self.path, &self.file)
    }

    /// Renames the locked file to `to` (promotion: `<pidfile>.2` becomes
    /// the pidfile); the lock goes with it.
    pub fn rename(&mut self, to: &Path) -> Result<()> {
        rename(&self.path, to)?;
        self.path = to.to_path_buf();
        Ok(())
    }

    /// Removes the file at the path if it is still the one locked here.
    pub fn remove(&self) {
        if self.at_path()
            && let Err(e) = std::fs::remove_file(&self.path)
        {
            log::warn!("remove pidfile {}: {e}", self.path.display());
        }
    }
}

fn same_file(path: &Path, file: &File) -> bool {
    match (std::fs::symlink_metadata(path), file.metadata()) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// "pidfile X is held by ...": the pid in it if it names a live
/// upgrader, else the lock's owner from /proc/locks.
fn held_by(path: &Path, file: &File) -> String {
    let holder = match content(path) {
        Content::Pid(p) if is_live_upgrader(p) => Some(p),
        _ => lock_owner(file),
    };
    match holder {
        Some(pid) => format!(
            "pidfile {} is held by upgrader master {pid} (already running)",
            path.display()
        ),
        None => format!(
            "pidfile {} is locked by another process (an upgrader master \
             already running?)",
            path.display()
        ),
    }
}

/// The pid that holds an flock on `file`, from /proc/locks
/// (`1: FLOCK  ADVISORY  WRITE 1234 00:2a:5678 0 EOF`; the device in hex
/// major:minor, the inode in decimal).
fn lock_owner(file: &File) -> Option<Pid> {
    let md = file.metadata().ok()?;
    let dev = md.dev();
    let key = format!(
        "{:02x}:{:02x}:{}",
        nix::sys::stat::major(dev),
        nix::sys::stat::minor(dev),
        md.ino()
    );
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // A blocked waiter's line starts with "->"; skip those.
        (f.get(1) == Some(&"FLOCK") && f.get(5) == Some(&key.as_str()))
            .then(|| f.get(4)?.parse().ok().map(Pid::from_raw))?
    })
}

/// Writes `pid` to `path` through a temporary file and a rename, and
/// locks the new file before the rename, so the lock is at the path as
/// soon as the pid is.
pub fn write(path: &Path, pid: Pid) -> Result<Lock> {
    let tmp = sibling(path, &format!(".tmp.{pid}"));
    let mut f = create_new(&tmp)?;
    writeln!(f, "{pid}")
        .with_context(|| format!("pidfile {}", tmp.display()))?;
    let file = Flock::lock(f, FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| e)
        .with_context(|| format!("pidfile {}: flock", tmp.display()))?;
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("pidfile {}", path.display()));
    }
    Ok(Lock {
        path: path.to_path_buf(),
        file,
    })
}

/// Creates `tmp`, which must not exist: O_EXCL | O_NOFOLLOW, so a
/// symlink planted there is never followed. A stale regular file of the
/// same name (a master of this pid that died mid-write) is removed
/// first; unlink(2) removes the name itself, never what it points to.
fn create_new(tmp: &Path) -> Result<File> {
    let open = || {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
            .open(tmp)
    };
    match open() {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let md = std::fs::symlink_metadata(tmp)
                .with_context(|| format!("pidfile {}", tmp.display()))?;
            if !md.file_type().is_file() {
                bail!(
                    "pidfile {}: something that is not a regular file is in \
                     the way ({}); not following it",
                    tmp.display(),
                    if md.file_type().is_symlink() {
                        "a symlink"
                    } else {
                        "not a file"
                    }
                );
            }
            std::fs::remove_file(tmp)
                .with_context(|| format!("pidfile {}", tmp.display()))?;
            open()
        }
        r => r,
    }
    .with_context(|| format!("pidfile {}", tmp.display()))
}

/// Renames `from` to `to` (promotion: `<pidfile>.2` becomes the pidfile).
pub fn rename(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).with_context(|| {
        format!("pidfile {} -> {}", from.display(), to.display())
    })
}

/// Removes `path` if it still names `pid`.
pub fn remove_if_ours(path: &Path, pid: Pid) {
    if read(path) == Some(pid)
        && let Err(e) = std::fs::remove_file(path)
    {
        log::warn!("remove pidfile {}: {e}", path.display());
    }
}

/// The pidfile a new master writes once it is ready, `<pidfile>.2`
/// (SPEC 7), renamed over the pidfile when it is promoted.
pub fn successor(path: &Path) -> PathBuf {
    sibling(path, ".2")
}

/// `path` with `suffix` appended to its file name.
pub fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_read_remove() {
        let dir = std::env::temp_dir()
            .join(format!("upgrader-pidfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.pid");
        let lock = write(&p, Pid::from_raw(12345)).unwrap();
        assert_eq!(read(&p), Some(Pid::from_raw(12345)));
        assert!(lock.at_path());
        drop(lock);
        remove_if_ours(&p, Pid::from_raw(1));
        assert!(p.exists(), "another pid must not remove it");
        remove_if_ours(&p, Pid::from_raw(12345));
        assert!(!p.exists());
        assert_eq!(successor(&p), dir.join("x.pid.2"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn contents() {
        assert_eq!(parse(""), Content::Empty);
        assert_eq!(parse(" 42\n"), Content::Pid(Pid::from_raw(42)));
        assert_eq!(parse("-3"), Content::Garbage("-3".into()));
        assert_eq!(parse("hello\nworld"), Content::Garbage("hello".into()));
    }
}
