//! The documentation keeps up with the binary: every long option that
//! `upgrader --help` prints is in the man page and the README, and the
//! man page documents every master signal, every exit status and the
//! sections an operator looks for (SPEC 12).

use std::path::PathBuf;
use std::process::Command;

use crate::harness::*;

/// A file of the source tree, as text.
fn source_file(rel: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Roff source as plain text for searching: font escapes (`\fB`,
/// `\fR`, `\f[...]`) dropped, `\-` read as `-`, other backslashes
/// removed.
fn roff_plain(roff: &str) -> String {
    let mut out = String::with_capacity(roff.len());
    let mut chars = roff.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.peek() {
            Some('f') => {
                chars.next();
                if chars.next() == Some('[') {
                    for c in chars.by_ref() {
                        if c == ']' {
                            break;
                        }
                    }
                }
            }
            Some('-') => {
                chars.next();
                out.push('-');
            }
            _ => {}
        }
    }
    out
}

fn man_page() -> String {
    roff_plain(&source_file("man/upgrader.1"))
}

/// The text of one `.SH` section (up to the next `.SH`).
fn man_section(name: &str) -> String {
    let man = man_page();
    let mut lines = man.lines();
    let heading = format!(".SH {name}");
    let quoted = format!(".SH \"{name}\"");
    if !lines.any(|l| l.trim_end() == heading || l.trim_end() == quoted) {
        panic!("man/upgrader.1 has no {name} section");
    }
    lines
        .take_while(|l| !l.starts_with(".SH"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

/// Whether `word` occurs in `text` delimited on both sides, so that
/// `--max-requests` is not found inside `--max-requests-jitter` nor
/// `HUP` inside `SIGHUP`.
fn has_word(text: &str, word: &str) -> bool {
    text.match_indices(word).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + word.len()..].chars().next();
        !before.is_some_and(word_char) && !after.is_some_and(word_char)
    })
}

/// Every `--long-option` that `upgrader --help` mentions.
fn help_options() -> Vec<String> {
    let out = Command::new(BIN)
        .arg("--help")
        .output()
        .unwrap_or_else(|e| panic!("{BIN} --help: {e}"));
    assert!(
        out.status.success(),
        "{BIN} --help exited {}:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut found: Vec<String> = Vec::new();
    for (i, _) in text.match_indices("--") {
        if text[..i].ends_with('-') {
            continue;
        }
        let name: String = text[i + 2..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '-')
            .collect();
        let name = name.trim_end_matches('-');
        if name.is_empty() {
            continue;
        }
        let opt = format!("--{name}");
        if !found.contains(&opt) {
            found.push(opt);
        }
    }
    assert!(
        found.len() >= 20 && found.iter().any(|o| o == "--bind"),
        "parsed too few options from --help: {found:?}\n{text}"
    );
    found
}

#[test]
fn every_option_of_help_is_in_the_man_page() {
    let man = man_page();
    let missing: Vec<String> = help_options()
        .into_iter()
        .filter(|o| !has_word(&man, o))
        .collect();
    assert!(
        missing.is_empty(),
        "options printed by --help but missing from man/upgrader.1: \
         {missing:?}"
    );
}

#[test]
fn every_option_of_help_is_in_the_readme() {
    let readme = source_file("README.md");
    // --help and --version are clap's own; a README need not list them.
    let missing: Vec<String> = help_options()
        .into_iter()
        .filter(|o| o != "--help" && o != "--version")
        .filter(|o| !has_word(&readme, o))
        .collect();
    assert!(
        missing.is_empty(),
        "options printed by --help but missing from README.md: {missing:?}"
    );
}

#[test]
fn every_master_signal_is_in_the_signals_section() {
    let section = man_section("SIGNALS");
    let missing: Vec<&str> = [
        "HUP", "USR2", "TERM", "INT", "QUIT", "TTIN", "TTOU", "WINCH", "USR1",
        "CHLD",
    ]
    .into_iter()
    .filter(|s| !has_word(&section, s))
    .collect();
    assert!(
        missing.is_empty(),
        "signals missing from the SIGNALS section of man/upgrader.1: \
         {missing:?}"
    );
}

#[test]
fn every_exit_status_is_in_the_man_page() {
    let section = man_section("EXIT STATUS");
    // Each status is the tag of an entry: `.TP` then `.B N`.
    let tags: Vec<&str> = section
        .lines()
        .filter_map(|l| l.strip_prefix(".B "))
        .map(str::trim)
        .collect();
    let missing: Vec<&str> = ["0", "1", "2", "3", "4"]
        .into_iter()
        .filter(|n| !tags.contains(n))
        .collect();
    assert!(
        missing.is_empty(),
        "exit statuses missing from the EXIT STATUS section: {missing:?}"
    );
}

#[test]
fn the_man_page_has_the_operators_sections() {
    let man = man_page();
    let headings: Vec<&str> = man
        .lines()
        .filter_map(|l| l.strip_prefix(".SH "))
        .map(|h| h.trim().trim_matches('"'))
        .collect();
    let missing: Vec<&str> = [
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "OPTIONS",
        "SIGNALS",
        "UPGRADE PROCEDURE",
        "SYSTEMD",
        "ENVIRONMENT",
        "FILES",
        "EXIT STATUS",
        "EXAMPLES",
        "SEE ALSO",
    ]
    .into_iter()
    .filter(|s| !headings.contains(s))
    .collect();
    assert!(
        missing.is_empty(),
        "sections missing from man/upgrader.1: {missing:?} (has {headings:?})"
    );
}

/// Runs a linter when it is installed; any output is a finding.
fn lint(program: &str, args: &[&str]) {
    let page =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("man/upgrader.1");
    let out = match Command::new(program).args(args).arg(&page).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("{program} is not installed: lint skipped");
            return;
        }
        Err(e) => panic!("{program}: {e}"),
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.trim().is_empty(),
        "{program} {} {}: {}\n{text}",
        args.join(" "),
        page.display(),
        out.status
    );
}

#[test]
fn the_man_page_lints_clean_where_linters_are_installed() {
    lint("mandoc", &["-T", "lint"]);
    lint("groff", &["-man", "-ww", "-z"]);
}

#[test]
fn roff_plain_reads_options_as_typed() {
    assert_eq!(
        roff_plain(r"\fB\-\-bind\fR [\fIname\fB=\fR]"),
        "--bind [name=]"
    );
    assert_eq!(roff_plain(r"\f[B]\-w\f[]"), "-w");
    assert!(has_word(
        "--max-requests N, --max-requests-jitter",
        "--max-requests"
    ));
    assert!(!has_word("--max-requests-jitter", "--max-requests"));
    assert!(!has_word("SIGHUP", "HUP"));
    assert!(has_word(".BR INT \", \" QUIT", "INT"));
}
