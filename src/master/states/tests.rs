use super::*;
use std::time::Duration;

fn pipe() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe().unwrap()
}

fn booting(child: i32) -> Upgrade {
    let (r, _w) = pipe();
    let (e, _w2) = pipe();
    Upgrade::booting(
        Pid::from_raw(child),
        r,
        e,
        Instant::now() + Duration::from_secs(30),
    )
}

fn exit0() -> Exit {
    Exit {
        code: 0,
        reason: None,
    }
}

#[test]
fn term_during_an_upgrade_boot_is_held_then_retires() {
    let mut u = booting(7);
    assert_eq!(u.on_stop(true), StopStep::Hold { first: true });
    assert_eq!(u.on_stop(true), StopStep::Hold { first: false });
    let step = u.on_ready_pipe(Some(b"1"), Instant::now(), false);
    assert!(
        matches!(step, ReadyStep::Ready { retire: true, .. }),
        "{step:?}"
    );
    assert_eq!(u.on_stop(true), StopStep::Retire);
    assert_eq!(u.retire(), Some(Pid::from_raw(7)));
    assert_eq!(u.on_stop(true), StopStep::Ignore, "TERM again");
    assert_eq!(u.on_stop(false), StopStep::Stop, "QUIT hurries it");
}

#[test]
fn fast_stop_during_a_boot_is_not_held() {
    let mut u = booting(7);
    assert_eq!(u.on_stop(false), StopStep::Stop);
}

#[test]
fn term_held_and_the_upgrade_fails_stops_as_asked() {
    let mut u = booting(7);
    u.on_stop(true);
    let step = u.on_ready_pipe(Some(b"!config broken"), Instant::now(), true);
    assert_eq!(step, ReadyStep::Failing);
    match u.on_exit(Pid::from_raw(7), false) {
        ExitStep::Failed { failure, stop, .. } => {
            assert_eq!(failure.as_deref(), Some("config broken"));
            assert!(stop);
        }
        _ => panic!("not a failure"),
    }
    assert!(matches!(u, Upgrade::Idle));
    assert_eq!(
        u.refuse(None, true, &Reload::Idle),
        None,
        "the next USR2 is accepted"
    );
}

#[test]
fn eof_gives_the_new_master_a_second_to_exit() {
    let mut u = booting(7);
    let now = Instant::now();
    assert_eq!(u.on_ready_pipe(Some(b""), now, false), ReadyStep::Failing);
    assert!(u.deadline().unwrap() <= now + EXIT_GRACE);
    assert_eq!(u.ready_fd().map(|_| ()), None);
    let late = now + Duration::from_secs(2);
    assert_eq!(u.on_deadline(late, "x".into()), Some(Pid::from_raw(7)));
    assert_eq!(u.deadline(), None, "fired once");
}

#[test]
fn a_second_usr2_is_refused_until_the_first_is_over() {
    let mut u = booting(7);
    assert!(
        u.refuse(None, true, &Reload::Idle)
            .unwrap()
            .contains("new master 7")
    );
    u.on_ready_pipe(Some(b"1"), Instant::now(), false);
    assert!(u.refuse(None, true, &Reload::Idle).is_some());
    u.retire();
    assert!(
        u.refuse(None, true, &Reload::Idle).is_some(),
        "while the new master runs"
    );
    assert!(matches!(u.on_exit(Pid::from_raw(7), false), ExitStep::Gone));
    assert!(u.has_successor(), "its sockets are the successor's");
    assert_eq!(u.refuse(None, true, &Reload::Idle), None);
}

#[test]
fn the_new_master_dying_while_the_old_drains_is_a_take_over() {
    let mut u = booting(7);
    u.on_ready_pipe(Some(b"1"), Instant::now(), true);
    u.retire();
    assert!(matches!(
        u.on_exit(Pid::from_raw(8), true),
        ExitStep::NotOurs
    ));
    assert!(matches!(
        u.on_exit(Pid::from_raw(7), true),
        ExitStep::DiedWhileRetiring
    ));
    u.take_over();
    assert!(!u.has_successor());
}

#[test]
fn hup_during_hup_is_queued_once() {
    let mut r = Reload::Idle;
    assert_eq!(r.on_hup(true, None, 1), Hup::Start);
    r = in_flight(2);
    assert_eq!(r.on_hup(true, None, 2), Hup::Queued { target: 3 });
    let done = r.on_ready().unwrap();
    assert!(done.queued);
    assert!(matches!(r, Reload::Retiring { target: 2 }));
    assert_eq!(r.on_old_gone(Some(1)), None, "gen 1 still drains");
    assert_eq!(r.on_old_gone(Some(2)), Some(2));
    assert!(matches!(r, Reload::Idle));
}

#[test]
fn hup_while_a_new_master_boots_is_refused() {
    let mut r = Reload::Idle;
    let step = r.on_hup(true, Some(Pid::from_raw(9)), 1);
    assert!(matches!(step, Hup::Refused(m) if m.contains("9 is booting")));
    assert!(matches!(r.on_hup(false, None, 1), Hup::Refused(_)));
}

#[test]
fn a_reload_superseded_while_retiring_is_complete() {
    let mut r = in_flight(2);
    r.on_ready();
    assert_eq!(r.superseded(), Some(2));
    assert_eq!(r.superseded(), None);
}

#[test]
fn winch_ends_a_reload_where_it_stands() {
    let mut r = in_flight(2);
    assert!(r.end().is_some());
    assert!(!r.in_flight());
    assert!(r.end().is_none());
}

#[test]
fn winch_then_ttou_spawns_nothing() {
    assert_eq!(scale(0, -1), None);
    assert_eq!(scale(0, 1), Some(1));
    assert_eq!(scale(1, -1), Some(1), "never below one");
    assert_eq!(scale(3, -1), Some(2));
}

#[test]
fn phase_stops_and_halts() {
    let mut p = Phase::Starting;
    assert!(!p.served());
    assert_eq!(p.halt_code(3), Some(3));
    p.stop(
        false,
        Exit {
            code: 3,
            reason: None,
        },
    );
    assert_eq!(p.halt_code(4), None);
    assert!(matches!(
        p,
        Phase::Stopping {
            exit: Exit { code: 4, .. },
            ..
        }
    ));
    let mut p = Phase::Starting;
    assert!(p.serving());
    assert!(!p.serving(), "once");
    assert!(p.wants_stop(true));
    p.stop(true, exit0());
    assert!(p.served());
    assert!(!p.wants_stop(true), "TERM twice");
    assert!(p.wants_stop(false), "QUIT hurries a TERM");
    p.stop(false, exit0());
    assert!(!p.wants_stop(true) && !p.wants_stop(false));
}

fn in_flight(target: u64) -> Reload {
    let o =
        <crate::cli::Options as clap::Parser>::try_parse_from(["upgrader"])
            .unwrap();
    let cfg =
        Config::from_options(o, crate::config::Facts::default()).unwrap();
    Reload::InFlight(Box::new(InFlight {
        target,
        from: target - 1,
        from_young_until: None,
        previous: cfg,
        previous_listeners: Vec::new(),
        started: Instant::now(),
        queued: false,
        probation: None,
        term_held: false,
    }))
}

#[test]
fn usr2_during_a_reload_is_refused_and_accepted_after_it() {
    let u = Upgrade::Idle;
    let r = in_flight(2);
    let why = u.refuse(None, true, &r).expect("refused");
    assert!(why.contains("a reload is in flight"), "{why}");
    // Retiring: the new generation serves, the old one drains; the
    // listeners are settled, so an upgrade may start.
    let r = Reload::Retiring { target: 2 };
    assert_eq!(u.refuse(None, true, &r), None);
    assert_eq!(u.refuse(None, true, &Reload::Idle), None);
}

#[test]
fn usr2_is_refused_while_stopping_unpromoted_or_with_a_new_master() {
    let idle = Reload::Idle;
    let why = Upgrade::Idle.refuse(None, false, &idle).unwrap();
    assert!(why.contains("stopping"), "{why}");
    let why = Upgrade::Idle
        .refuse(Some(Pid::from_raw(41)), true, &idle)
        .unwrap();
    assert!(why.contains("old master 41 still runs"), "{why}");
    for u in [
        booting(7),
        Upgrade::Ready {
            child: Pid::from_raw(7),
        },
    ] {
        let why = u.refuse(None, true, &idle).unwrap();
        assert!(why.contains("new master 7 exists"), "{why}");
    }
    // Once the new master that took over is gone, a USR2 may start one.
    let gone = Upgrade::HandedOver {
        child: Pid::from_raw(7),
        alive: false,
    };
    assert_eq!(gone.refuse(None, true, &idle), None);
}

#[test]
fn a_reload_on_probation_retires_only_when_the_window_passed() {
    let d = std::time::Duration::from_secs(5);
    let t0 = Instant::now();
    let mut r = in_flight(2);
    assert_eq!(r.on_all_ready(t0, d), AllReady::Probation { until: t0 + d });
    // Ready again (a TTIN, a respawn): the window does not restart.
    assert_eq!(r.on_all_ready(t0 + d / 2, d), AllReady::Nothing);
    assert_eq!(r.deadline(), Some(t0 + d));
    assert!(
        r.on_probation_timer(t0 + d / 2, true).is_none(),
        "too early"
    );
    assert!(r.in_flight());
    let done = r.on_probation_timer(t0 + d, true).expect("passed");
    assert_eq!(done.target, 2);
    assert!(matches!(r, Reload::Retiring { target: 2 }));
    assert_eq!(r.deadline(), None);
}

#[test]
fn without_probation_all_ready_is_nothing_to_wait_for() {
    let mut r = in_flight(2);
    let zero = std::time::Duration::ZERO;
    assert_eq!(r.on_all_ready(Instant::now(), zero), AllReady::Nothing);
    assert_eq!(r.probation(), None);
    assert!(r.on_ready().is_some());
    assert_eq!(
        Reload::Idle.on_all_ready(Instant::now(), zero),
        AllReady::Nothing
    );
}

#[test]
fn term_during_probation_is_held_once_quit_is_not() {
    let mut r = in_flight(2);
    assert!(!r.hold_stop(true), "no window yet: TERM stops");
    let t0 = Instant::now();
    r.on_all_ready(t0, std::time::Duration::from_secs(5));
    assert!(!r.hold_stop(false), "QUIT stops at once");
    assert!(r.hold_stop(true), "the first TERM is held");
    assert!(!r.hold_stop(true), "a second TERM stops at once");
    let Reload::InFlight(f) = &r else { panic!() };
    assert!(f.term_held);
    // A rollback hands the held TERM back with what it ends.
    let ended = r.end().unwrap();
    assert!(ended.term_held);
}

#[test]
fn a_hup_during_probation_is_queued() {
    let mut r = in_flight(2);
    r.on_all_ready(Instant::now(), std::time::Duration::from_secs(5));
    assert_eq!(r.on_hup(true, None, 2), Hup::Queued { target: 3 });
}

#[test]
fn the_first_generations_probation() {
    let t0 = Instant::now();
    let d = std::time::Duration::from_secs(5);
    let mut p = Phase::Starting;
    assert!(p.on_probation(t0 + d));
    assert!(!p.on_probation(t0 + d), "once");
    assert!(!p.served(), "a crash in the window halts");
    assert!(p.is_running());
    assert_eq!(p.deadline(), Some(t0 + d));
    assert_eq!(p.halt_code(4), Some(4));
    assert!(!p.probation_over(t0));
    assert!(p.probation_over(t0 + d));
    assert!(p.served());
    assert_eq!(p.deadline(), None);
    assert!(!p.probation_over(t0 + d), "once");
}

#[test]
fn a_rolling_reloads_window_opens_with_the_first_batch() {
    let d = Duration::from_secs(5);
    let t0 = Instant::now();
    let mut r = in_flight(2);
    assert_eq!(r.begin_probation(t0, d), Some(t0 + d), "first batch");
    assert_eq!(r.begin_probation(t0 + d / 2, d), None, "once");
    // The window passes before every new worker is ready: nothing yet.
    assert!(r.on_probation_timer(t0 + d, false).is_none());
    assert!(r.in_flight());
    // The last batch is ready after the window: the reload goes on.
    assert_eq!(r.on_all_ready(t0 + d * 2, d), AllReady::Passed);
    // Ready before the window ends: the timer ends it.
    let mut r = in_flight(2);
    r.begin_probation(t0, d);
    assert_eq!(r.on_all_ready(t0 + d / 2, d), AllReady::Nothing);
    assert!(r.on_probation_timer(t0 + d, true).is_some());
}
