//! The environment's decisions, with made-up descriptor tables.

use std::os::fd::RawFd;

use anyhow::Result;

use super::environment::WATCHDOG_FLOOR;
use super::*;

fn vars(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
    pairs.iter().map(|(k, v)| (k.into(), v.into())).collect()
}

/// A descriptor table: these numbers are open sockets, these pipes.
struct Table {
    open: &'static [RawFd],
    pipes: &'static [RawFd],
}

impl Probe for Table {
    fn kind(&self, fd: RawFd) -> FdKind {
        if self.pipes.contains(&fd) {
            FdKind::Pipe
        } else if self.open.contains(&fd) || (0..=2).contains(&fd) {
            FdKind::Other
        } else {
            FdKind::Closed
        }
    }
}

const SOCKETS_3_TO_5: Table = Table {
    open: &[3, 4, 5],
    pipes: &[9],
};

fn env(pairs: &[(&str, &str)]) -> Result<Environment> {
    Environment::from_vars(vars(pairs), 77, &SOCKETS_3_TO_5)
}

fn handed(name: &str, spec: Option<&str>, origin: Origin) -> Handed {
    Handed {
        name: name.into(),
        spec: spec.map(|s| s.parse().unwrap()),
        origin,
    }
}

#[test]
fn encode_decode_round_trip() {
    let listeners = [
        handed("http", Some("http=systemd:web"), Origin::Inherited),
        handed("unknown", Some("fd:7"), Origin::Inherited),
        handed("a", Some("a=unix:/tmp/x,y%z"), Origin::Bound),
        handed("unknown", None, Origin::Inherited),
    ];
    let enc = encode(&listeners, Pid::from_raw(4242));
    let table = Table {
        open: &[3, 4, 5, 6],
        pipes: &[7],
    };
    let p = decode(&enc, &table).unwrap().unwrap();
    assert_eq!(p.pid, Pid::from_raw(4242));
    let fds: Vec<i32> = p.fds.iter().map(|(fd, _)| *fd).collect();
    assert_eq!(fds, [3, 4, 5, 6]);
    let got: Vec<Handed> = p.fds.into_iter().map(|(_, h)| h).collect();
    assert_eq!(got, listeners);
    assert_eq!(p.ready_fd, Some(7));
}

#[test]
fn a_predecessor_without_binds_or_origins_hands_inherited_sockets() {
    let v = vars(&[("UPGRADER_PID", "10"), ("UPGRADER_FDS", "3,4")]);
    let p = decode(&v, &SOCKETS_3_TO_5).unwrap().unwrap();
    assert_eq!(p.fds[1].1, handed("unknown", None, Origin::Inherited));
    assert_eq!(p.ready_fd, None);
}

#[test]
fn no_handoff_without_any_variable() {
    assert_eq!(
        decode(&vars(&[("PATH", "/bin")]), &SOCKETS_3_TO_5),
        Ok(None)
    );
}

#[test]
fn a_garbage_handoff_is_ignored_with_the_reason() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("UPGRADER_FDS", "3")], "UPGRADER_PID is not set"),
        (&[("UPGRADER_PID", "abc")], "UPGRADER_PID=abc is not a pid"),
        (&[("UPGRADER_PID", "10"), ("UPGRADER_FDS", "3,x")], "\"x\""),
        (&[("UPGRADER_PID", "10"), ("UPGRADER_FDS", "2")], "\"2\""),
        (&[("UPGRADER_PID", "10"), ("UPGRADER_FDS", "3,3")], "\"3\""),
        (
            &[("UPGRADER_PID", "10"), ("UPGRADER_FDS", "8")],
            "descriptor 8 is not open",
        ),
        (
            &[("UPGRADER_PID", "10"), ("UPGRADER_READY_FD", "2")],
            "UPGRADER_READY_FD=2 is standard input, output or error",
        ),
        (
            &[("UPGRADER_PID", "10"), ("UPGRADER_READY_FD", "0")],
            "standard input",
        ),
        (
            &[("UPGRADER_PID", "10"), ("UPGRADER_READY_FD", "8")],
            "UPGRADER_READY_FD=8 is not open",
        ),
        (
            &[("UPGRADER_PID", "10"), ("UPGRADER_READY_FD", "4")],
            "UPGRADER_READY_FD=4 is not a pipe",
        ),
        (
            &[
                ("UPGRADER_PID", "10"),
                ("UPGRADER_FDS", "3"),
                ("UPGRADER_READY_FD", "3"),
            ],
            "is one of the listeners",
        ),
    ];
    for (pairs, why) in cases {
        let e = env(pairs).unwrap();
        assert_eq!(e.predecessor, None, "{pairs:?}");
        assert_eq!(e.warnings.len(), 1, "{pairs:?}: {:?}", e.warnings);
        let w = &e.warnings[0];
        assert!(w.starts_with("ignored UPGRADER_"), "{w}");
        assert!(w.contains(why), "{pairs:?}: {w}");
    }
}

#[test]
fn a_good_ready_pipe_is_kept() {
    let e =
        env(&[("UPGRADER_PID", "10"), ("UPGRADER_READY_FD", "9")]).unwrap();
    assert_eq!(e.predecessor.unwrap().ready_fd, Some(9));
    assert!(e.warnings.is_empty());
}

#[test]
fn listen_fds_only_for_our_pid() {
    let e = env(&[
        ("LISTEN_PID", "77"),
        ("LISTEN_FDS", "2"),
        ("LISTEN_FDNAMES", "a"),
    ])
    .unwrap();
    assert_eq!(e.listen_fds, [(3, "a".into()), (4, "unknown".into())]);
    // Not ours (or no pid at all): ignored, garbage or not.
    for pid in [&[("LISTEN_PID", "78")][..], &[("LISTEN_PID", "x")], &[]] {
        let mut v = pid.to_vec();
        v.push(("LISTEN_FDS", "abc"));
        assert!(env(&v).unwrap().listen_fds.is_empty(), "{v:?}");
    }
}

#[test]
fn garbage_listen_fds_for_us_is_an_error_naming_it() {
    for (n, why) in [
        ("abc", "LISTEN_FDS=abc: not a number of descriptors"),
        ("-1", "LISTEN_FDS=-1: not a number"),
        ("1e11", "LISTEN_FDS=1e11: not a number"),
        (
            "999",
            "LISTEN_FDS=999: descriptor 6 is not open (only 3 were",
        ),
        // Checked before anything is built: no 10^11 entries.
        ("100000000000", "descriptor 6 is not open"),
    ] {
        let e = env(&[("LISTEN_PID", "77"), ("LISTEN_FDS", n)]).unwrap_err();
        assert!(format!("{e:#}").contains(why), "{n}: {e:#}");
    }
    assert!(
        env(&[("LISTEN_PID", "77"), ("LISTEN_FDS", "0")])
            .unwrap()
            .listen_fds
            .is_empty()
    );
}

#[test]
fn a_handoff_overlapping_listen_fds_is_ignored() {
    let e = env(&[
        ("LISTEN_PID", "77"),
        ("LISTEN_FDS", "1"),
        ("UPGRADER_PID", "10"),
        ("UPGRADER_FDS", "3"),
    ])
    .unwrap();
    assert_eq!(e.predecessor, None);
    assert!(
        e.warnings[0].contains("also in LISTEN_FDS"),
        "{:?}",
        e.warnings
    );
}

#[test]
fn watchdog_follows_the_main_pid() {
    let w = |pid: &str| {
        env(&[
            ("WATCHDOG_USEC", "2000000"),
            ("WATCHDOG_PID", pid),
            ("UPGRADER_PID", "10"),
        ])
        .unwrap()
        .watchdog
    };
    assert_eq!(w("77"), Some(Duration::from_secs(2)));
    assert_eq!(w("10"), Some(Duration::from_secs(2)), "predecessor's");
    assert_eq!(w("11"), None);
}

#[test]
fn a_tiny_watchdog_is_raised_to_the_floor_and_garbage_ignored() {
    let e = env(&[("WATCHDOG_USEC", "1")]).unwrap();
    assert_eq!(e.watchdog, Some(WATCHDOG_FLOOR));
    assert!(e.warnings[0].contains("WATCHDOG_USEC=1: below 100 ms"));
    let e = env(&[("WATCHDOG_USEC", "soon")]).unwrap();
    assert_eq!(e.watchdog, None);
    assert!(e.warnings[0].contains("ignored WATCHDOG_USEC=soon"));
    let e = env(&[("WATCHDOG_USEC", "0")]).unwrap();
    assert_eq!((e.watchdog, e.warnings.len()), (None, 0));
    // Not ours: not even a warning.
    let e = env(&[("WATCHDOG_USEC", "1"), ("WATCHDOG_PID", "5")]).unwrap();
    assert_eq!((e.watchdog, e.warnings.len()), (None, 0));
}

fn keys(e: &ChildEnv) -> Vec<String> {
    e.vars
        .iter()
        .map(|(k, _)| k.to_string_lossy().into_owned())
        .collect()
}

fn value(e: &ChildEnv, k: &str) -> Option<String> {
    lookup(&e.vars, k)
}

/// What the master started with under systemd, after an upgrade.
fn master_env() -> Vec<(OsString, OsString)> {
    vars(&[
        ("PATH", "/bin"),
        ("LISTEN_FDS", "2"),
        ("LISTEN_PID", "77"),
        ("LISTEN_FDNAMES", "web:admin"),
        ("LISTEN_PIDFDID", "12"),
        ("NOTIFY_SOCKET", "/run/systemd/notify"),
        ("WATCHDOG_USEC", "5000000"),
        ("WATCHDOG_PID", "10"),
        ("UPGRADER_PID", "10"),
        ("UPGRADER_FDS", "3,4"),
        ("UPGRADER_FDNAMES", "web:admin"),
        ("UPGRADER_BINDS", ","),
        ("UPGRADER_ORIGINS", "inherited,inherited"),
        ("UPGRADER_READY_FD", "5"),
        ("UPGRADER_TEST_HOOKS", "1"),
    ])
}

#[test]
fn a_worker_gets_its_listeners_and_nothing_of_the_masters() {
    let names = ["web", "unknown"];
    let e = child_env(
        &master_env(),
        &Child::Worker {
            names: &names,
            notify: Path::new("/run/upgrader.1/notify"),
            heartbeat: Some(Duration::from_secs(3)),
            age: 7,
            generation: 2,
        },
    );
    assert_eq!(
        keys(&e),
        [
            "PATH",
            "LISTEN_FDS",
            "LISTEN_FDNAMES",
            "NOTIFY_SOCKET",
            "WATCHDOG_USEC",
            "UPGRADER_WORKER_AGE",
            "UPGRADER_GENERATION"
        ]
    );
    assert_eq!(value(&e, "LISTEN_FDS").as_deref(), Some("2"));
    assert_eq!(value(&e, "LISTEN_FDNAMES").as_deref(), Some("web:unknown"));
    assert_eq!(
        value(&e, "NOTIFY_SOCKET").as_deref(),
        Some("/run/upgrader.1/notify")
    );
    assert_eq!(value(&e, "WATCHDOG_USEC").as_deref(), Some("3000000"));
    // Only the forked child knows its pid: set after the fork.
    assert_eq!(e.pid_vars, ["LISTEN_PID", "WATCHDOG_PID"]);
    let plain = child_env(
        &[],
        &Child::Worker {
            names: &[],
            notify: Path::new("/n"),
            heartbeat: None,
            age: 1,
            generation: 1,
        },
    );
    assert_eq!(plain.pid_vars, ["LISTEN_PID"]);
    assert_eq!(value(&plain, "WATCHDOG_USEC"), None);
}

#[test]
fn a_new_master_gets_the_handoff_and_systemds_variables() {
    let listeners = [
        handed("web", Some("web=systemd:web"), Origin::Inherited),
        handed("sock", Some("sock=unix:/run/a"), Origin::Bound),
    ];
    let e = child_env(
        &master_env(),
        &Child::Successor {
            listeners: &listeners,
            me: Pid::from_raw(20),
            watchdog: true,
        },
    );
    assert_eq!(
        keys(&e),
        [
            "PATH",
            "NOTIFY_SOCKET",
            "WATCHDOG_USEC",
            "UPGRADER_TEST_HOOKS",
            "UPGRADER_FDS",
            "UPGRADER_FDNAMES",
            "UPGRADER_BINDS",
            "UPGRADER_ORIGINS",
            "UPGRADER_PID",
            "UPGRADER_READY_FD"
        ],
        "no LISTEN_* (sockets of this master's start), no stale hand-off"
    );
    assert_eq!(value(&e, "UPGRADER_PID").as_deref(), Some("20"));
    assert_eq!(value(&e, "UPGRADER_FDS").as_deref(), Some("3,4"));
    assert_eq!(value(&e, "UPGRADER_READY_FD").as_deref(), Some("5"));
    assert_eq!(
        value(&e, "UPGRADER_BINDS").as_deref(),
        Some("web=systemd:web,sock=unix:/run/a")
    );
    assert_eq!(
        value(&e, "UPGRADER_ORIGINS").as_deref(),
        Some("inherited,bound")
    );
    // The watchdog duty moves to the new master: its own pid.
    assert_eq!(e.pid_vars, ["WATCHDOG_PID"]);
    let no_dog = child_env(
        &master_env(),
        &Child::Successor {
            listeners: &[],
            me: Pid::from_raw(20),
            watchdog: false,
        },
    );
    assert!(no_dog.pid_vars.is_empty());
    assert_eq!(value(&no_dog, "WATCHDOG_PID").as_deref(), Some("10"));
}

#[test]
fn private_vars_never_reach_a_worker() {
    for v in [
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
        "LISTEN_PIDFDID",
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "UPGRADER_FDS",
        "UPGRADER_PID",
    ] {
        assert!(is_private_var(&v.into()), "{v}");
    }
    assert!(!is_private_var(&"PATH".into()));
}

#[test]
fn handoff_vars_are_not_inherited_by_a_new_master() {
    for v in [
        "LISTEN_FDS",
        "UPGRADER_PID",
        "UPGRADER_READY_FD",
        "UPGRADER_BINDS",
    ] {
        assert!(is_handoff_var(&v.into()), "{v}");
    }
    for v in ["NOTIFY_SOCKET", "PATH", "UPGRADER_TEST_HOOKS"] {
        assert!(!is_handoff_var(&v.into()), "{v}");
    }
}
