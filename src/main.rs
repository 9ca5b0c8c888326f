//! upgrader: a zero-downtime socket-handoff master.
//!
//! `main` reads the environment once, parses the command line, and is
//! the only place that prints a fatal error and picks the exit status
//! (SPEC 11): 0 stopped, 1 runtime failure, 2 usage or configuration
//! error, 3 workers failed to boot, 4 the app cannot load.
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

// `sys` is the one module allowed to use `unsafe` (see its header).
#[allow(unsafe_code)]
mod sys;

mod cli;
mod config;
mod control;
mod handoff;
mod http;
mod listeners;
mod logging;
mod master;
mod notify;
mod pidfile;
mod pool;
mod signals;
mod spawn;
mod worker;

use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;

use crate::cli::Options;
use crate::config::{Config, Facts};

/// A failure with the status it exits with.
struct Failure {
    code: u8,
    error: anyhow::Error,
}

fn usage(error: anyhow::Error) -> Failure {
    Failure { code: 2, error }
}

fn runtime(error: anyhow::Error) -> Failure {
    Failure { code: 1, error }
}

fn main() -> ExitCode {
    // --help and --version never look at the environment.
    let cli = match Options::try_parse() {
        Ok(c) => c,
        Err(e) => return clap_exit(e),
    };
    let env = match handoff::Environment::read() {
        Ok(env) => env,
        Err(e) => {
            eprintln!("upgrader: error: {e:#}");
            return ExitCode::from(2);
        }
    };
    // A new master (USR2) that fails to start tells its predecessor why
    // on the ready pipe, so the upgrade is reported with its cause.
    let ready_fd = env.predecessor.as_ref().and_then(|p| p.ready_fd);
    match run(cli, env) {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            if let Some(fd) = ready_fd {
                // SAFETY: the number came with UPGRADER_READY_FD from the
                // old master; if it is still an open pipe it is that one
                // (nothing in a failed start-up opens pipes of its own).
                #[allow(unsafe_code)]
                unsafe {
                    sys::write_if_pipe(
                        fd,
                        format!("!{:#}", f.error).as_bytes(),
                    )
                };
            }
            logging::stderr_line(&format!("upgrader: error: {:#}", f.error));
            ExitCode::from(f.code)
        }
    }
}

/// clap's own output for help and version; for an error, one line
/// `upgrader: error: ...` (SPEC 3), then one hint line unless the value
/// itself was bad, and exit 2.
fn clap_exit(e: clap::Error) -> ExitCode {
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            ExitCode::from(2)
        }
        kind => {
            let (line, hint) = clap_lines(&e.to_string());
            logging::stderr_line(&format!("upgrader: error: {line}"));
            let bad_value = matches!(
                kind,
                ErrorKind::ValueValidation | ErrorKind::InvalidValue
            );
            if !bad_value {
                logging::stderr_line(&format!("upgrader: hint: {hint}"));
            }
            ExitCode::from(2)
        }
    }
}

/// The message and a hint from clap's rendered error (its "tip:" if it
/// has one, else where to look).
fn clap_lines(text: &str) -> (String, String) {
    let mut lines = text.lines().map(str::trim);
    let first = lines.next().unwrap_or("bad arguments");
    let mut first = first.strip_prefix("error: ").unwrap_or(first).to_string();
    // "the following required arguments were not provided:" and the
    // list under it, on one line.
    if first.ends_with(':') {
        let list: Vec<&str> =
            lines.by_ref().take_while(|l| !l.is_empty()).collect();
        first = format!("{first} {}", list.join(", "));
    }
    let hint = lines
        .find_map(|l| l.strip_prefix("tip: "))
        .map(str::to_string)
        .unwrap_or_else(|| "see 'upgrader --help'".to_string());
    (first, hint)
}

/// Prints `text` and a newline on stdout. A reader that went away
/// (`upgrader -s status | head -c1`: EPIPE) is no error of ours: the
/// output is simply not wanted any more.
fn print(text: &str) -> Result<(), Failure> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(runtime(anyhow::Error::new(e).context("stdout"))),
    }
}

/// `upgrader -s VERB`: 0 done, 1 failed, 2 usage, 75 still in progress
/// when `--wait` ran out.
fn control_command(verb: &str, cli: &Options) -> Result<u8, Failure> {
    let verb: control::Verb = verb
        .parse()
        .map_err(|e: String| usage(anyhow::anyhow!(e)))?;
    let pidfile = config::control_pidfile(cli).map_err(usage)?;
    let wait = cli.wait.map(|w| w.0);
    match control::run(verb, &pidfile, wait, cli.json) {
        Ok(out) => {
            print(&out)?;
            Ok(0)
        }
        Err(e) if e.is::<control::InProgress>() => {
            logging::stderr_line(&format!("upgrader: {e:#}"));
            Ok(control::EX_TEMPFAIL)
        }
        Err(e) => Err(runtime(e)),
    }
}

/// Whether this process was started by an old master's USR2: the
/// hand-off variables count only with the ready pipe they come with (an
/// open pipe above stderr). A stray `UPGRADER_PID` in the environment
/// must not make a master skip its pidfile check.
fn started_by_upgrade(env: &handoff::Environment) -> bool {
    env.predecessor
        .as_ref()
        .is_some_and(|p| p.ready_fd.is_some())
}

fn run(cli: Options, mut env: handoff::Environment) -> Result<u8, Failure> {
    // A master blocks its signals before anything else, so a HUP, USR1 or
    // TERM that arrives while it starts waits for the loop instead of
    // killing it (default actions). `-s` stays interruptible.
    if cli.control.is_none() {
        signals::block(&signals::HANDLED).map_err(runtime)?;
    }
    let facts = Facts {
        under_systemd: env.notify_socket.is_some(),
    };
    // `-s` needs only the pidfile: a config file it cannot use whole
    // still names it (see `config::control_pidfile`).
    if let Some(verb) = &cli.control
        && !cli.check_config
    {
        return control_command(verb, &cli);
    }
    let cfg = Config::load(&cli, facts).map_err(usage)?;
    if cli.check_config {
        print("upgrader: configuration ok")?;
        return Ok(0);
    }
    // An unwritable --log-file is a bad value in a good argument: 2.
    logging::init(cfg.log_level, cfg.log_file.as_deref(), env.journal)
        .map_err(usage)?;
    let role = master::role_label(env.predecessor.is_some());
    logging::set_role(format!("{role}[{}]", std::process::id()));
    for w in &env.warnings {
        log::warn!("{w}");
    }
    if let Some(cap) = listeners::backlog_cap()
        && cfg.bind_options.backlog > cap
    {
        log::warn!(
            "--backlog {}: the kernel caps it at {cap} \
             (net.core.somaxconn)",
            cfg.bind_options.backlog
        );
    }
    // Held for the master's whole life; a new master of a USR2 takes the
    // lock over at its promotion instead (its predecessor holds it now).
    let pidlock = match &cfg.pidfile {
        Some(p) if !started_by_upgrade(&env) => {
            Some(pidfile::Lock::acquire(p).map_err(runtime)?)
        }
        _ => None,
    };
    let invocation = handoff::invocation(&env.vars).map_err(runtime)?;
    if cfg.timeout.is_none() && cli.timeout.is_some_and(|t| !t.0.is_zero()) {
        log::warn!(
            "--timeout is ignored: exec workers owe a heartbeat only with \
             --ready notify"
        );
    }
    if matches!(cfg.kind, config::WorkerKind::Exec { .. }) {
        for (given, what) in [
            (cfg.max_requests_jitter > 0, "--max-requests-jitter"),
            (cli.client_timeout.is_some(), "--client-timeout"),
        ] {
            if given {
                log::warn!(
                    "{what} is ignored: it applies to built-in workers only"
                );
            }
        }
    }
    // Block the master's signals before anything is forked, so no child
    // is ever born between a signal and its handling.
    let signals =
        signals::block_into_fd(&signals::HANDLED).map_err(runtime)?;
    let inherited = env.take_inherited().map_err(runtime)?;
    let listeners = listeners::open_all(
        &cfg.binds,
        inherited,
        env.predecessor.is_some(),
        cfg.bind_options,
    )
    .map_err(runtime)?;
    let master = master::Master::new(master::Parts {
        cli,
        facts,
        cfg,
        listeners,
        signals,
        env,
        invocation,
        pidlock,
    })
    .map_err(runtime)?;
    let exit = master.run().map_err(runtime)?;
    if let Some(reason) = &exit.reason {
        logging::stderr_line(&format!("upgrader: error: {reason}"));
    }
    Ok(exit.code)
}
