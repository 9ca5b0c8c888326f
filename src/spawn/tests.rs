use super::*;

#[test]
fn children_by_scan_finds_a_child() {
    let mut child = std::process::Command::new("sleep")
        .arg("10")
        .spawn()
        .unwrap();
    let me = getpid();
    let kids = children_by_scan(me);
    let _ = child.kill();
    let _ = child.wait();
    assert!(kids.contains(&Pid::from_raw(child.id() as i32)), "{kids:?}");
    assert_eq!(parent_of("12 (a) b) S 34 12"), Some(34));
}

#[test]
fn bare_names_are_found_in_path() {
    let env = vec![("PATH".into(), "/nonexistent:/bin:/usr/bin".into())];
    let p = resolve(Path::new("sh"), &env);
    assert!(p.is_absolute() && p.ends_with("sh"), "{}", p.display());
    let p = resolve(Path::new("no-such-program-xyz"), &env);
    assert_eq!(p, Path::new("no-such-program-xyz"));
    assert!(resolve(Path::new("./a"), &env).is_absolute());
    assert_eq!(resolve(Path::new("/x/a"), &env), Path::new("/x/a"));
}
