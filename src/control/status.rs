//! What `upgrader -s status` shows: one value, built by the master,
//! sent as JSON on the control socket, rendered as text or printed as
//! JSON by the client. Both ends use this type, so the two forms cannot
//! drift apart.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub pid: i32,
    /// `master`, or `master.2` until promoted.
    pub role: String,
    pub version: String,
    pub uptime_secs: u64,
    pub config: Option<String>,
    pub listeners: Vec<ListenerStatus>,
    /// The generation new workers belong to.
    pub generation: u64,
    pub desired: usize,
    /// Ready workers of `generation`.
    pub ready: usize,
    pub graceful_timeout_secs: f64,
    pub boot_timeout_secs: f64,
    /// `--probation` (absent from masters before it existed).
    #[serde(default)]
    pub probation_secs: f64,
    pub workers: Vec<WorkerStatus>,
    pub upgrade: Option<UpgradeStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListenerStatus {
    pub name: String,
    pub address: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    /// The worker's pid: a built-in worker, or an exec worker's keeper.
    pub pid: i32,
    /// An exec worker's app (the keeper's child), when it runs.
    pub app_pid: Option<i32>,
    pub age: u64,
    pub generation: u64,
    /// `booting`, `ready` or `stopping`.
    pub state: String,
    pub ready_secs: Option<f64>,
    pub requests: Option<u64>,
    pub heartbeat_secs_ago: Option<f64>,
    /// The last `STATUS=` it sent.
    pub status: Option<String>,
    /// PSS over its process group, when measured (`--max-worker-memory`).
    #[serde(default)]
    pub memory_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpgradeStatus {
    pub new_master: i32,
    /// `booting`, `ready` or `handed over`.
    pub state: String,
}

impl Status {
    /// The text form, one line a fact.
    pub fn text(&self) -> String {
        let mut out = format!(
            "master {} ({}), up {}s, config {}\n",
            self.pid,
            self.role,
            self.uptime_secs,
            self.config.as_deref().unwrap_or("none"),
        );
        for l in &self.listeners {
            out += &format!("listening on {} ({})\n", l.address, l.name);
        }
        out += &format!(
            "generation {}: {}/{} workers ready\n",
            self.generation, self.ready, self.desired
        );
        for w in &self.workers {
            out += &format!("  {}\n", w.text());
        }
        if let Some(u) = &self.upgrade {
            out += &format!(
                "upgrade: new master {} ({})\n",
                u.new_master, u.state
            );
        }
        out.trim_end().to_string()
    }
}

impl WorkerStatus {
    fn text(&self) -> String {
        // For an exec worker the app's pid comes first: that is the
        // process the operator knows (SPEC 8).
        let who = match self.app_pid {
            Some(app) => format!("worker {app} (keeper {})", self.pid),
            None => format!("worker {}", self.pid),
        };
        let state = match self.ready_secs {
            Some(s) => format!("ready for {s:.1}s"),
            None => self.state.clone(),
        };
        let requests = self
            .requests
            .map(|r| format!(", {r} requests"))
            .unwrap_or_default();
        let beat = self
            .heartbeat_secs_ago
            .map(|s| format!(", heartbeat {s:.1}s ago"))
            .unwrap_or_default();
        let memory = self
            .memory_bytes
            .map(|b| format!(", {:.1} MiB", b as f64 / (1024.0 * 1024.0)))
            .unwrap_or_default();
        format!(
            "{who} gen={} age={} {state}{requests}{beat}{memory}",
            self.generation, self.age
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Status {
        Status {
            pid: 10,
            role: "master".into(),
            version: "0.1.0".into(),
            uptime_secs: 5,
            config: None,
            listeners: vec![ListenerStatus {
                name: "unknown".into(),
                address: "127.0.0.1:8000".into(),
            }],
            generation: 2,
            desired: 2,
            ready: 1,
            graceful_timeout_secs: 30.0,
            boot_timeout_secs: 30.0,
            probation_secs: 0.0,
            workers: vec![
                WorkerStatus {
                    pid: 11,
                    app_pid: Some(12),
                    age: 3,
                    generation: 2,
                    state: "ready".into(),
                    ready_secs: Some(1.25),
                    requests: Some(7),
                    heartbeat_secs_ago: None,
                    status: None,
                    memory_bytes: None,
                },
                WorkerStatus {
                    pid: 13,
                    app_pid: None,
                    age: 4,
                    generation: 2,
                    state: "booting".into(),
                    ready_secs: None,
                    requests: None,
                    heartbeat_secs_ago: Some(0.5),
                    status: None,
                    memory_bytes: None,
                },
            ],
            upgrade: Some(UpgradeStatus {
                new_master: 20,
                state: "booting".into(),
            }),
        }
    }

    #[test]
    fn text_and_json_say_the_same() {
        let s = sample();
        let text = s.text();
        assert_eq!(
            text,
            "master 10 (master), up 5s, config none\n\
             listening on 127.0.0.1:8000 (unknown)\n\
             generation 2: 1/2 workers ready\n  \
             worker 12 (keeper 11) gen=2 age=3 ready for 1.2s, 7 requests\n  \
             worker 13 gen=2 age=4 booting, heartbeat 0.5s ago\n\
             upgrade: new master 20 (booting)"
        );
        let json = serde_json::to_string(&s).unwrap();
        let back: Status = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.text(), text);
    }
}
