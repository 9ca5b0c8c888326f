//! SPEC 14 and 15: a rolling reload (`--reload-batch`) never holds more
//! than `workers + N` workers, and rolls back as a whole; a worker over
//! `--max-worker-memory` is replaced surge first.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::harness::*;

fn s(dir: &Path, args: &[&str]) -> (i32, String) {
    let mut v = vec!["-s"];
    v.extend_from_slice(args);
    let (st, out) = run_to_end(&v, dir);
    (st.code().unwrap_or(-1), out)
}

/// Samples how many children the master has, every 5 ms, until stopped:
/// the least and the most seen.
struct Sampler {
    stop: Arc<AtomicBool>,
    most: Arc<AtomicUsize>,
    least: Arc<AtomicUsize>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(master: nix::unistd::Pid) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let most = Arc::new(AtomicUsize::new(0));
        let least = Arc::new(AtomicUsize::new(usize::MAX));
        let (s, m, l) = (stop.clone(), most.clone(), least.clone());
        let path = format!("/proc/{master}/task/{master}/children");
        let handle = std::thread::spawn(move || {
            // Bounded: at most 60 s of samples.
            for _ in 0..12_000 {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                if let Ok(t) = std::fs::read_to_string(&path) {
                    let n = t.split_whitespace().count();
                    m.fetch_max(n, Ordering::Relaxed);
                    l.fetch_min(n, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(5)); // the sampling period
            }
        });
        Sampler {
            stop,
            most,
            least,
            handle: Some(handle),
        }
    }

    /// (least, most) children seen.
    fn finish(mut self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.join().unwrap();
        }
        (
            self.least.load(Ordering::Relaxed),
            self.most.load(Ordering::Relaxed),
        )
    }
}

/// HUP with `-w 8 --reload-batch 2` under load: no failed request, never
/// more than 10 workers, four batches.
#[test]
fn a_rolling_reload_keeps_within_workers_plus_batch_under_load() {
    let mut u = upgrader()
        .args(["--bind", "127.0.0.1:0", "-w", "8", "--reload-batch", "2"])
        .args(["-p", "u.pid"])
        .start();
    u.ready();
    let a = u.addr(0);
    let dir = u.dir.0.clone();
    let load = Load::start(&a, 4, Duration::from_secs(30));
    let sampler = Sampler::start(u.pid);
    let from = u.log.len();
    let (rc, out) = s(&dir, &["reload", "--pid", "u.pid"]);
    assert_eq!(
        (rc, out.trim()),
        (0, "reload complete: generation 2 serving")
    );
    let (least, most) = sampler.finish();
    let report = load.finish();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert!(most <= 10, "{most} workers at once (at most 8 + 2)");
    assert!(least >= 8, "only {least} workers at some point");
    for n in [2, 4, 6, 8] {
        let batch =
            format!("reload: batch ready ({n}/8 workers of generation 2)");
        u.log.wait_from(from, &[batch.as_str()], Duration::ZERO);
    }
    assert_eq!(get_ok(&a, "/").num("generation"), 2);
}

/// The same with a release that crashes: the whole reload rolls back and
/// all 8 workers of the old generation serve at the end.
#[test]
fn a_rolling_reload_to_a_crashing_release_rolls_back_to_all_old_workers() {
    let b = upgrader();
    let cfg = b.dir().join("u.toml");
    let conf = |crash: &str| {
        format!(
            "bind = [\"127.0.0.1:0\"]\npid = \"u.pid\"\nworkers = 8\n\
             reload-batch = 2\nready = \"delay:0.5\"\n\
             exec = [\"env\", \"{crash}\", \"python3\", \"{PYTHON_APP}\"]\n"
        )
    };
    std::fs::write(&cfg, conf("APP_OK=1")).unwrap();
    let mut u = b.args(["-c", "u.toml"]).start();
    u.ready();
    let a = u.addr(0);
    let dir = u.dir.0.clone();
    let load = Load::start(&a, 4, Duration::from_secs(30));
    std::fs::write(&cfg, conf("APP_CRASH_AFTER=1.5:1")).unwrap();
    let (rc, out) = s(&dir, &["reload", "--pid", "u.pid"]);
    assert_eq!(rc, 1, "{out}");
    assert!(out.contains("reload rolled back: worker["), "{out}");
    assert!(out.contains("gen=2"), "{out}");
    // Eight ready workers of generation 1 and nothing else, at the end.
    wait_until("8 ready workers of generation 1, none of 2", LONG, || {
        let (rc, out) = s(&dir, &["status", "--pid", "u.pid", "--json"]);
        let Ok(j) = serde_json::from_str::<serde_json::Value>(out.trim())
        else {
            return false;
        };
        let ws = j["workers"].as_array().cloned().unwrap_or_default();
        rc == 0
            && ws.len() == 8
            && ws
                .iter()
                .all(|w| w["generation"] == 1 && w["state"] == "ready")
    });
    let report = load.finish();
    // Only what a crashing worker held can fail: at most one each.
    assert!(report.failures.len() <= 2, "{:?}", report.failures);
    assert_eq!(get_ok(&a, "/").num("generation"), 1);
}

/// An exec app that keeps 20 MB per request, `--max-worker-memory 64M`:
/// replaced after a few requests, surge first (never fewer than `-w`
/// workers), and no request fails.
#[test]
fn a_worker_over_the_memory_limit_is_replaced_without_a_dip() {
    let mut u = upgrader()
        .args(["--bind", "127.0.0.1:0", "-w", "2", "-p", "u.pid"])
        .args([
            "--max-worker-memory",
            "64M",
            "--memory-check-interval",
            "0.2",
        ])
        .args(["--ready", "delay:0.3"])
        .args(["--exec", "env", "APP_LEAK_MB=20", "python3", PYTHON_APP])
        .start();
    u.ready();
    let a = u.addr(0);
    let dir = u.dir.0.clone();
    let sampler = Sampler::start(u.pid);
    let mut failures = Vec::new();
    let mut served = 0;
    // Sequential requests until a replacement has happened (bounded).
    for _ in 0..200 {
        match get(&a, "/") {
            Ok(r) if r.status == 200 => served += 1,
            Ok(r) => failures.push(format!("{r:?}")),
            Err(e) => failures.push(e.to_string()),
        }
        if u.log.count(&["retiring", "over --max-worker-memory"]) >= 1 {
            break;
        }
        poll_pause();
    }
    let (_, _, line) = u.log.wait_from(
        0,
        &["over --max-worker-memory 64.0 MiB: replacing"],
        LONG,
    );
    assert!(line.contains("MiB (PSS of its process group)"), "{line}");
    u.log
        .wait_from(0, &["retiring", "over --max-worker-memory"], LONG);
    let (least, most) = sampler.finish();
    assert!(failures.is_empty(), "{failures:?}");
    assert!(least >= 2, "only {least} workers at some point (-w 2)");
    assert!(most <= 3, "{most} workers: one replacement at a time");
    assert!(served > 0);
    // Status shows each worker's memory.
    let (rc, out) = s(&dir, &["status", "--pid", "u.pid"]);
    assert_eq!(rc, 0, "{out}");
    assert!(out.contains(" MiB"), "{out}");
}

/// The memory deadline exists only while the limit is set: without it
/// an idle master never wakes (`signals::idle_master_does_not_wake_up`);
/// with it, idle, it wakes about once per `--memory-check-interval`.
#[test]
fn with_a_memory_limit_an_idle_master_wakes_once_per_interval() {
    let mut u = upgrader()
        .args(["--bind", "127.0.0.1:0", "--timeout", "0"])
        .args([
            "--max-worker-memory",
            "1G",
            "--memory-check-interval",
            "0.5",
        ])
        .start();
    u.ready();
    let switches = || -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", u.pid))
            .unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    wait_asleep_in_poll(u.pid);
    let before = switches();
    // A measurement window, not a synchronisation.
    std::thread::sleep(Duration::from_millis(2000));
    let woke = switches() - before;
    assert!(
        (2..=12).contains(&woke),
        "woke {woke} times in 2 s at 0.5 s"
    );
}

#[test]
fn bad_sizes_are_refused_naming_the_value() {
    let dir = TempDir::new();
    for bad in ["64Q", "-1", "0", "lots"] {
        let (st, out) = run_to_end(
            &["--max-worker-memory", bad, "--check-config"],
            &dir.0,
        );
        assert_eq!(st.code(), Some(2), "{bad}: {out}");
        assert!(
            out.contains(&format!("{bad:?} is not a size")),
            "{bad}: {out}"
        );
    }
    let (st, out) =
        run_to_end(&["--max-worker-memory", "2G", "--check-config"], &dir.0);
    assert_eq!(st.code(), Some(0), "{out}");
}
