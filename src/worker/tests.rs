use super::*;

#[test]
fn jitter_stays_in_range() {
    assert_eq!(with_jitter(0, 50, 1), 0);
    assert_eq!(with_jitter(100, 0, 1), 100);
    for age in 0..50 {
        let n = with_jitter(100, 10, age);
        assert!((100..=110).contains(&n), "{n}");
    }
}

#[test]
fn heartbeat_off_means_no_wakeups() {
    let h = Heartbeat::new(None);
    assert_eq!(
        poll_timeout(h.next_due(), Instant::now()),
        PollTimeout::NONE
    );
    let h = Heartbeat::new(Some(Duration::from_secs(4)));
    assert_ne!(
        poll_timeout(h.next_due(), Instant::now()),
        PollTimeout::NONE
    );
}

#[test]
fn a_listener_that_stopped_listening_pauses_not_fails() {
    use std::os::fd::AsFd;
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let mut spare = Spare::open();
    assert!(matches!(accept(l.as_fd(), &mut spare), Ok(Accepted::Empty)));
    // What an exec'd app does to the shared socket.
    socket::shutdown(
        std::os::fd::AsRawFd::as_raw_fd(&l),
        socket::Shutdown::Both,
    )
    .unwrap();
    let r = accept(l.as_fd(), &mut spare);
    assert!(matches!(r, Ok(Accepted::Pause)), "{r:?}");
}

#[test]
fn a_paused_listener_comes_back_after_the_pause() {
    let t0 = Instant::now();
    let mut p = Paused::new(2);
    assert_eq!(p.next_due(), None);
    assert!(p.pause(1, t0), "starts an episode");
    assert_eq!(p.next_due(), Some(t0 + PAUSE));
    assert!(p.due(t0).is_empty());
    assert_eq!(p.due(t0 + PAUSE), vec![1]);
    assert_eq!(p.next_due(), None);
    assert!(p.due(t0 + PAUSE * 2).is_empty());
    assert!(!p.pause(1, t0), "the same episode");
    assert!(p.accepted(1), "ends it");
    assert!(!p.accepted(1));
    assert!(!p.accepted(0));
}

#[test]
fn poll_timeout_rounds_up() {
    let now = Instant::now();
    let t = poll_timeout(Some(now + Duration::from_micros(10)), now);
    assert_eq!(t, PollTimeout::try_from(1).unwrap());
    assert_eq!(poll_timeout(Some(now), now), PollTimeout::ZERO);
    assert_eq!(earliest(Some(now), Some(now + PAUSE)), Some(now));
    assert_eq!(earliest(None, Some(now)), Some(now));
}
