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
            eprintln!("upgrader: error: {:#}", f.error);
            ExitCode::from(f.code)
        }
    }
}

/// clap's own output for help and version; for a bad value, the one
/// line that names it (SPEC 3), then exit 2.
fn clap_exit(e: clap::Error) -> ExitCode {
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        ErrorKind::ValueValidation | ErrorKind::InvalidValue => {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid value");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("upgrader: error: {first}");
            ExitCode::from(2)
        }
        _ => {
            let _ = e.print();
            ExitCode::from(2)
        }
    }
}

/// `upgrader -s VERB`: 0 done, 1 failed, 2 usage.
fn control_command(
    verb: &str,
    cli: &Options,
    cfg: &Config,
) -> Result<u8, Failure> {
    let verb: control::Verb = verb
        .parse()
        .map_err(|e: String| usage(anyhow::anyhow!(e)))?;
    let Some(pidfile) = &cfg.pidfile else {
        return Err(usage(anyhow::anyhow!(
            "-s needs the master's pidfile: --pid FILE, or -c FILE with a pid \
             key"
        )));
    };
    let wait = cli.wait.map(|w| w.0);
    let out = control::run(verb, pidfile, wait, cli.json).map_err(runtime)?;
    println!("{out}");
    Ok(0)
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
    let cfg = Config::load(&cli, facts).map_err(usage)?;
    if cli.check_config {
        println!("upgrader: configuration ok");
        return Ok(0);
    }
    if let Some(verb) = &cli.control {
        return control_command(verb, &cli, &cfg);
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
    if let Some(p) = &cfg.pidfile
        && env.predecessor.is_none()
    {
        pidfile::check_free(p).map_err(runtime)?;
    }
    let invocation = handoff::invocation(&env.vars).map_err(runtime)?;
    if cfg.timeout.is_none() && cli.timeout.is_some_and(|t| !t.0.is_zero()) {
        log::warn!(
            "--timeout is ignored: exec workers owe a heartbeat only with \
             --ready notify"
        );
    }
    if matches!(cfg.kind, config::WorkerKind::Exec { .. }) {
        for (given, what) in [
            (cfg.max_requests > 0, "--max-requests"),
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
    })
    .map_err(runtime)?;
    let exit = master.run().map_err(runtime)?;
    if let Some(reason) = &exit.reason {
        eprintln!("upgrader: error: {reason}");
    }
    Ok(exit.code)
}
