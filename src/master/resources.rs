//! What the master owns besides its processes: the listeners it
//! restores when an app shut one down, and the socket files and
//! pidfiles it removes when it exits.

use super::*;

impl Master {
    /// A listener hung up: a worker (an exec app) called shutdown() on
    /// the shared socket, which stops it for every process of every
    /// generation. A TCP socket listens again after listen(2) on the same
    /// bound socket; anything else is logged as lost.
    pub(super) fn restore_listener(&mut self, i: usize) {
        use nix::sys::socket::{self, sockopt};
        use std::os::fd::AsFd;
        let l = Rc::clone(&self.listeners[i]);
        // Reading SO_ERROR clears a pending error (POLLERR).
        let _ = socket::getsockopt(&l.fd, sockopt::SocketError);
        if socket::getsockopt(&l.fd, sockopt::AcceptConn).unwrap_or(true) {
            return;
        }
        let suspects: Vec<String> = self
            .workers
            .iter()
            .filter(|w| w.is_exec() && !w.is_stopping())
            .map(|w| w.role())
            .collect();
        let by = match suspects.len() {
            0 => "a worker".to_string(),
            _ => format!("one of {}", suspects.join(", ")),
        };
        let restored =
            crate::listeners::listen(&l.fd, self.cfg.bind_options.backlog)
                .and_then(|()| {
                    match crate::listeners::local_addr(l.fd.as_fd()) {
                        Ok(a) if a == l.local => Ok(()),
                        Ok(a) => Err(format!(
                            "the kernel released its port (now {a})"
                        )),
                        Err(e) => Err(format!("{e:#}")),
                    }
                });
        match restored {
            Ok(()) => log::warn!(
                "listener {} ({}) stopped listening: {by} called shutdown() \
                 on it; restored",
                l.local,
                l.name
            ),
            Err(why) => {
                log::error!(
                    "listener {} ({}) stopped listening: {by} called \
                     shutdown() on it; cannot restore it ({why}): it is no \
                     longer served until a restart",
                    l.local,
                    l.name
                );
                self.lost.push(l.raw());
            }
        }
    }

    /// Removes a unix socket file this master bound, unless a successor
    /// inherited it (one exists, booting or ready, or took over) or this
    /// master is itself a successor (SPEC 4: only the last master that
    /// owns a socket unlinks it).
    pub(super) fn unlink(&self, l: &Listener) {
        if !self.upgrade.has_successor() && !self.role.is_successor() {
            l.unlink();
        }
    }

    pub(super) fn cleanup(&mut self, exit: &Exit) {
        // A new master that could not serve tells its predecessor why,
        // on the ready pipe, so the failure is reported with its cause.
        if let (
            Role::Successor {
                ready: Some(fd), ..
            },
            Some(reason),
        ) = (&self.role, &exit.reason)
        {
            let _ = nix::unistd::write(fd, format!("!{reason}").as_bytes());
        }
        // The file at the path is removed only while it is the one this
        // master locked (the `.lock` of a master that never served
        // included); a successor's `<pidfile>.2` the same way. After a
        // hand-off the new master renames its own over it.
        if let Some(lock) = &self.pidlock_next {
            lock.remove();
        }
        if let Some(lock) = &self.pidlock
            && !self.upgrade.handed_over()
        {
            lock.remove();
        }
        for l in self.listeners.iter().chain(&self.retired) {
            self.unlink(l);
        }
        self.notify.remove();
        log::info!("master exiting");
    }
}
