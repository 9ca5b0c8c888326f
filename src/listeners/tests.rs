use super::*;

fn spec(s: &str) -> BindSpec {
    s.parse().unwrap()
}

#[test]
fn parses_every_form() {
    assert_eq!(
        spec("127.0.0.1:80").addr,
        Addr::Tcp("127.0.0.1:80".parse().unwrap())
    );
    assert_eq!(
        spec("[::1]:8000").addr,
        Addr::Tcp("[::1]:8000".parse().unwrap())
    );
    assert_eq!(
        spec("unix:/run/a.sock").addr,
        Addr::Unix("/run/a.sock".into())
    );
    assert_eq!(spec("fd:3").addr, Addr::Fd(3));
    assert_eq!(spec("systemd:http").addr, Addr::Systemd("http".into()));
    let named = spec("admin=127.0.0.1:9000");
    assert_eq!(named.name(), "admin");
    assert_eq!(spec("127.0.0.1:80").name(), "unknown");
    assert_eq!(spec("systemd:web").name(), "web");
    assert_eq!(
        spec("localhost:80").addr,
        Addr::Tcp("127.0.0.1:80".parse().unwrap())
    );
}

#[test]
fn a_path_with_equals_is_not_a_name() {
    let s = spec("unix:/tmp/a=b");
    assert_eq!(s.name, None);
    assert_eq!(s.addr, Addr::Unix("/tmp/a=b".into()));
}

#[test]
fn rejects_bad_values_with_the_reason() {
    let e = "127.0.0.1:99999".parse::<BindSpec>().unwrap_err();
    assert!(e.contains("99999"), "{e}");
    assert!("fd:1".parse::<BindSpec>().unwrap_err().contains("stdio"));
    assert!("unix:".parse::<BindSpec>().is_err());
    assert!("nonsense".parse::<BindSpec>().is_err());
    assert!("systemd:a:b".parse::<BindSpec>().is_err());
}

/// A real socket as a predecessor would hand it over: opened for
/// `handed`, named `name`.
fn handed(name: &str, handed: &str) -> Listener {
    let mut l = bind(&spec("127.0.0.1:0"), opts()).unwrap();
    l.name = name.into();
    l.spec = Some(spec(handed));
    l.origin = Origin::Inherited;
    l
}

fn opts() -> BindOptions {
    BindOptions {
        backlog: 16,
        reuse_port: false,
        unix_mode: None,
        unix_owner: (None, None),
    }
}

#[test]
fn a_successor_finds_its_sockets_by_the_bind_they_were_opened_for() {
    let swapped = || {
        vec![
            handed("admin", "admin=systemd:web"),
            handed("web", "web=systemd:admin"),
        ]
    };
    let ports = |ls: &[Listener]| -> Vec<Addr> {
        ls.iter().map(|l| l.local.clone()).collect()
    };
    // The same configuration: each by its own --bind.
    let inherited = swapped();
    let want = ports(&inherited);
    let specs = [spec("admin=systemd:web"), spec("web=systemd:admin")];
    let got = open_all(&specs, inherited, true, opts()).unwrap();
    assert_eq!(ports(&got), want);
    // Another configuration: `systemd:admin` is the socket opened
    // for it, not the one a --bind renamed "admin".
    let inherited = swapped();
    let admin = inherited[1].local.clone();
    let got =
        open_all(&[spec("systemd:admin")], inherited, true, opts()).unwrap();
    assert_eq!(
        (got[0].local.clone(), got[0].name.as_str()),
        (admin, "admin")
    );
    // fd:N: by the handed-over spec, never by number in a successor.
    let inherited = vec![handed("unknown", "fd:20")];
    let want = inherited[0].local.clone();
    let got = open_all(&[spec("x=fd:20")], inherited, true, opts()).unwrap();
    assert_eq!((got[0].local.clone(), got[0].name.as_str()), (want, "x"));
    let e = open_all(&[spec("fd:21")], vec![], true, opts()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "bind fd:21: the old master handed over no such socket"
    );
}

#[test]
fn display_round_trips() {
    for s in ["127.0.0.1:80", "a=unix:/x", "systemd:http", "fd:4"] {
        assert_eq!(spec(s).to_string(), s);
    }
}
