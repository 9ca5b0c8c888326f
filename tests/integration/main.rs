//! Integration tests: each drives the real `upgrader` binary through
//! real sockets, processes and signals, and waits on observable events
//! (notify messages, log lines, responses carrying pids), never on
//! elapsed time.

mod harness;

/// The man page and README against --help.
mod docs;

/// Fault injection: kill -9 at each upgrade step, keepers, SIGSTOP,
/// signal storms, descriptor exhaustion.
mod chaos;
/// `upgrader -s`: synchronous control.
mod control;
/// Exec workers: the systemd hand-over, readiness, keepers.
mod exec;
/// Worker failures: boot failure, crash, backoff, timeouts.
mod failures;
/// The hand-off under faults: USR2 with `fd:N` and renamed systemd
/// sockets, unix socket ownership, garbage in the environment, odd
/// backlogs, a stale-socket probe against a full backlog.
mod faults_handoff;
/// The master under faults and odd orders.
mod faults_master;
/// The operator's side under faults: a dead or stalled stderr, a full
/// disk, tampered or shared pidfiles, stray hand-off variables, and the
/// `-s` client's statuses, output and messages.
mod faults_ops;
/// The built-in worker under faults: load during stop/reload, a stopped
/// master, descriptor exhaustion, slow and malformed clients.
mod faults_worker;
/// SPEC 13: probation, rollback, release paths, crash-loop limit.
mod probation;
/// One test per bug found in review.
mod regression;
/// HUP: reload, bad configs, failing generations, bind changes.
mod reload;
/// SPEC 14/15: rolling reload, memory limit.
mod rolling;
/// The built-in worker: serving, HTTP edge cases.
mod serving;
/// Master signals: TERM, QUIT, TTIN/TTOU, WINCH, USR1, kill -9.
mod signals;
/// Start-up, command line, bind errors, pidfile.
mod startup;
/// systemd: the notify sequence, MAINPID hand-off, socket activation.
mod systemd;
/// USR2: upgrade, retirement, promotion, failure, rollback.
mod upgrade;
