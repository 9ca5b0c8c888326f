//! The pidfile: written atomically once the master serves, so "the
//! pidfile exists" means "serving"; removed at exit only while it still
//! holds our pid (a successor may have taken it over).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use nix::sys::signal::kill;
use nix::unistd::Pid;

/// The pid a pidfile names, if it holds one.
pub fn read(path: &Path) -> Option<Pid> {
    let text = std::fs::read_to_string(path).ok()?;
    let n: i32 = text.trim().parse().ok()?;
    (n > 0).then(|| Pid::from_raw(n))
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

/// Refuses to start over a pidfile that names a live master.
pub fn check_free(path: &Path) -> Result<()> {
    if let Some(pid) = read(path)
        && pid != nix::unistd::getpid()
        && is_live_upgrader(pid)
    {
        bail!(
            "pidfile {}: upgrader master {pid} is already running",
            path.display()
        );
    }
    Ok(())
}

/// Writes `pid` to `path` through a temporary file and a rename.
pub fn write(path: &Path, pid: Pid) -> Result<()> {
    let tmp = sibling(path, &format!(".tmp.{pid}"));
    let mut f = std::fs::File::create(&tmp)
        .with_context(|| format!("pidfile {}", tmp.display()))?;
    writeln!(f, "{pid}")
        .with_context(|| format!("pidfile {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("pidfile {}", path.display()))
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
        write(&p, Pid::from_raw(12345)).unwrap();
        assert_eq!(read(&p), Some(Pid::from_raw(12345)));
        remove_if_ours(&p, Pid::from_raw(1));
        assert!(p.exists(), "another pid must not remove it");
        remove_if_ours(&p, Pid::from_raw(12345));
        assert!(!p.exists());
        assert_eq!(successor(&p), dir.join("x.pid.2"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
