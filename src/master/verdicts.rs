//! What a worker's end and output say, in words: an exit status described,
//! the boot failure code it means, the stderr tail and the exec error
//! attached to the reason, each output line relayed to the log.

use nix::sys::wait::WaitStatus;

use crate::config::{Config, WorkerKind};
use crate::pool::{self, Worker};

pub(super) fn emit(role: &str, tail: &mut pool::Tail, line: &[u8]) {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end_matches('\r');
    log::info!(target: crate::logging::RELAY, "{role}: {text}");
    tail.push(text);
}

/// "exited with status 1", "killed by SIGKILL".
pub fn describe(status: WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, c) => format!("exited with status {c}"),
        WaitStatus::Signaled(_, s, core) => {
            format!(
                "killed by {s}{}",
                if core { " (core dumped)" } else { "" }
            )
        }
        other => format!("{other:?}"),
    }
}

/// Exit 3 or 4: the worker says it cannot boot (gunicorn's
/// WORKER_BOOT_ERROR and APP_LOAD_ERROR); the status a boot failure
/// halts the master with.
pub(super) fn boot_code(status: WaitStatus) -> Option<u8> {
    match status {
        WaitStatus::Exited(_, c @ (3 | 4)) => Some(c as u8),
        _ => None,
    }
}

pub(super) fn with_tail(reason: String, w: &Worker) -> String {
    match w.tail.last() {
        Some(l) => format!("{reason}; last output: {l}"),
        None => reason,
    }
}

/// The reason an exec worker's program could not be executed, if that
/// is what happened (its errno came back on the pipe).
pub(super) fn exec_error(w: &Worker, cfg: &Config) -> Option<String> {
    use std::os::fd::AsFd;
    let (stage, errno) =
        crate::sys::exec_failure(w.exec.as_ref()?.errors.as_fd())?;
    let program = match &cfg.kind {
        WorkerKind::Exec { program, .. } => program.as_path(),
        WorkerKind::BuiltIn => std::path::Path::new("worker"),
    };
    // A relative program is resolved from the master's directory.
    Some(crate::spawn::describe_exec_failure(
        program, None, stage, errno,
    ))
}
