//! Realistic synthetic telemetry: sessions of a few hundred events from
//! agents such as github-copilot and claude-code, event types as devlog's
//! collector emits them, 200–400 bytes of JSON context and data per event,
//! tokens and cost on LLM events, timestamps in order within a session.
//! Deterministic for a given seed, so benchmarks and tests can regenerate
//! exactly what they sent.

use prost_types::Timestamp;
use rand::{Rng, SeedableRng, rngs::SmallRng, seq::IndexedRandom};
use serde_json::json;
use uuid::Uuid;

use crate::pb;

const AGENTS: &[(&str, &str, &[&str])] = &[
    (
        "github-copilot",
        "1.250.0",
        &["gpt-4.1", "claude-sonnet-4.5", "gpt-4o-mini"],
    ),
    (
        "claude-code",
        "2.0.14",
        &["claude-sonnet-4.5", "claude-opus-4.1", "claude-haiku-4.5"],
    ),
    ("cursor", "1.7.3", &["gpt-5", "claude-sonnet-4.5"]),
    (
        "gemini-cli",
        "0.9.0",
        &["gemini-2.5-pro", "gemini-2.5-flash"],
    ),
    ("cline", "3.32.1", &["claude-sonnet-4.5", "deepseek-chat"]),
    ("aider", "0.86.1", &["gpt-4.1", "claude-sonnet-4.5"]),
];

/// (event type, weight). session_start / session_end frame each session.
const EVENT_TYPES: &[(&str, u32)] = &[
    ("llm_request", 15),
    ("llm_response", 15),
    ("tool_use", 20),
    ("file_read", 15),
    ("file_write", 5),
    ("file_modify", 10),
    ("command_execution", 8),
    ("user_interaction", 5),
    ("error_encountered", 2),
    ("tool_decision", 4),
    ("git_commit", 2),
    ("pull_request", 1),
];

const TOOLS: &[&str] = &[
    "read_file",
    "edit_file",
    "run_terminal",
    "grep_search",
    "list_dir",
    "apply_patch",
    "web_fetch",
];
const FILES: &[&str] = &[
    "src/main.rs",
    "src/lib.rs",
    "src/api/handlers.ts",
    "packages/core/src/index.ts",
    "app/models/user.py",
    "internal/server/http.go",
    "README.md",
    "tests/integration_test.rs",
];
const COMMANDS: &[&str] = &[
    "cargo test",
    "npm run build",
    "pytest -q",
    "go test ./...",
    "git status",
    "make lint",
];
const BRANCHES: &[&str] = &["main", "feature/telemetry", "fix/flaky-test", "develop"];
const WORDS: &[&str] = &[
    "the",
    "function",
    "returns",
    "error",
    "when",
    "input",
    "is",
    "empty",
    "please",
    "refactor",
    "this",
    "module",
    "to",
    "use",
    "async",
    "iterator",
    "and",
    "add",
    "tests",
    "for",
    "edge",
    "cases",
    "database",
    "connection",
    "pool",
    "timeout",
];

/// Developer `n`: one per machine, named as an editor extension would.
pub fn developer(n: u32) -> pb::User {
    const NAMES: [&str; 8] = [
        "Ada", "Bob", "Chen", "Dana", "Emil", "Fatima", "Goran", "Hana",
    ];
    pb::User {
        key: format!("dev-{n}@example.com"),
        display_name: format!("{} {}", NAMES[n as usize % NAMES.len()], n),
        email: format!("dev-{n}@example.com"),
    }
}

/// Organisation `n`: the owner of the projects `org{n}/…`.
pub fn organization(n: u32) -> pb::Organization {
    pb::Organization {
        key: format!("org{n}"),
        display_name: format!("Organisation {n}"),
    }
}

/// One agent session being generated.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: Uuid,
    pub agent: &'static str,
    pub agent_version: &'static str,
    pub model: &'static str,
    pub project: String,
    /// The project's organisation.
    pub organization: u32,
    pub workspace_id: String,
    pub machine_id: String,
    /// The developer at that machine (one per machine).
    pub developer: u32,
    pub branch: &'static str,
    /// Next event time, µs since the Unix epoch.
    pub clock_us: i64,
    pub remaining: u32,
    pub started: bool,
    pub message_seq: i32,
}

pub struct Generator {
    rng: SmallRng,
    projects: u32,
    session: Option<Session>,
    /// Where new sessions start (µs since the Unix epoch); each starts up
    /// to `spread_us` later.
    base_us: i64,
    spread_us: i64,
}

impl Generator {
    /// `projects`: how many distinct projects the sessions spread over.
    pub fn new(seed: u64, projects: u32) -> Self {
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_micros() as i64;
        Self {
            rng: SmallRng::seed_from_u64(seed),
            projects: projects.max(1),
            session: None,
            // Recent enough that no row is "late" (older than --late-after's
            // 1 h) by the time it is sent, as in live traffic.
            base_us: now_us - 1_800_000_000,
            spread_us: 600_000_000,
        }
    }

    /// Spreads session starts over the `spread_us` before the default
    /// window (`loadgen --spread`): a month of data for dashboard timings.
    pub fn with_spread_us(mut self, spread_us: i64) -> Self {
        self.base_us -= spread_us;
        self.spread_us += spread_us;
        self
    }

    /// Sets where session clocks start (µs since the Unix epoch).
    pub fn with_start_us(mut self, start_us: i64) -> Self {
        self.base_us = start_us;
        self
    }

    fn new_session(&mut self) -> Session {
        let (agent, version, models) = *AGENTS.choose(&mut self.rng).expect("agents");
        let p = self.rng.random_range(0..self.projects);
        let m = self.rng.random_range(0..16);
        Session {
            id: Uuid::from_u128(self.rng.random()),
            agent,
            agent_version: version,
            model: models.choose(&mut self.rng).expect("models"),
            project: format!("org{}/service-{p}", p % 5),
            organization: p % 5,
            workspace_id: Uuid::from_u128(self.rng.random()).to_string(),
            machine_id: format!("dev-machine-{m}"),
            developer: m,
            branch: BRANCHES.choose(&mut self.rng).expect("branches"),
            clock_us: self.base_us + self.rng.random_range(0..self.spread_us),
            remaining: self.rng.random_range(200..400),
            started: false,
            message_seq: 0,
        }
    }

    /// The current session (started on first use).
    pub fn session(&mut self) -> &Session {
        if self.session.is_none() {
            let s = self.new_session();
            self.session = Some(s);
        }
        self.session.as_ref().expect("just set")
    }

    /// The next event; sessions begin with session_start and end with session_end.
    pub fn event(&mut self) -> pb::AgentEvent {
        if self.session.as_ref().is_none_or(|s| s.remaining == 0) {
            let s = self.new_session();
            self.session = Some(s);
        }
        let step = self.rng.random_range(50_000..1_500_000);
        let mut s = self.session.take().expect("session");
        s.clock_us += step;
        let event_type = if !s.started {
            s.started = true;
            "session_start"
        } else if s.remaining == 1 {
            "session_end"
        } else {
            pick_weighted(&mut self.rng, EVENT_TYPES)
        };
        s.remaining -= 1;
        let ev = self.build_event(&s, event_type);
        self.session = Some(s);
        ev
    }

    pub fn events(&mut self, n: usize) -> Vec<pb::AgentEvent> {
        (0..n).map(|_| self.event()).collect()
    }

    fn build_event(&mut self, s: &Session, event_type: &'static str) -> pb::AgentEvent {
        let rng = &mut self.rng;
        let file = *FILES.choose(rng).expect("files");
        let context = json!({
            "workspace_path": format!("/home/dev/src/{}", s.project),
            "git_branch": s.branch,
            "file_path": file,
            "language": file.rsplit('.').next().unwrap_or("txt"),
            "editor": "vscode",
        });
        let mut ev = pb::AgentEvent {
            id: Uuid::from_u128(rng.random()).to_string(),
            timestamp: Some(Timestamp {
                seconds: s.clock_us.div_euclid(1_000_000),
                nanos: (s.clock_us.rem_euclid(1_000_000) * 1000) as i32,
            }),
            event_type: event_type.into(),
            agent_id: s.agent.into(),
            agent_version: s.agent_version.into(),
            session_id: s.id.to_string(),
            project: s.project.clone(),
            context_json: context.to_string(),
            tags: vec![s.agent.to_string(), s.branch.to_string()],
            user: Some(developer(s.developer)),
            organization: Some(organization(s.organization)),
            severity: pb::Severity::Info as i32,
            duration_ms: Some(rng.random_range(1..2_000)),
            ..Default::default()
        };
        let data = match event_type {
            // One LLM call is one event carrying model, tokens and cost
            // (llm_usage_daily counts events that name a model).
            "llm_request" => {
                let input: i64 = rng.random_range(500..20_000);
                let cached = rng.random_range(0..=input / 2);
                let output: i64 = rng.random_range(50..2_000);
                ev.input_tokens = Some(input);
                ev.cached_tokens = Some(cached);
                ev.output_tokens = Some(output);
                // $3/M input, $0.30/M cached, $15/M output (a typical price).
                ev.cost_usd = Some(
                    ((input - cached) as f64 * 3.0 + cached as f64 * 0.3 + output as f64 * 15.0)
                        / 1e6,
                );
                ev.model = Some(s.model.into());
                ev.duration_ms = Some(rng.random_range(300..30_000));
                ev.metrics_json = json!({"time_to_first_token_ms": rng.random_range(100..3_000), "tokens_per_second": rng.random_range(20..150)}).to_string();
                json!({"model": s.model, "temperature": 0.2, "max_tokens": 8192, "stream": true, "request_id": format!("req_{:016x}", rng.random::<u64>())})
            }
            "llm_response" => {
                json!({"finish_reason": "stop", "streamed_chunks": rng.random_range(1..400)})
            }
            "tool_use" => {
                json!({"tool_name": TOOLS.choose(rng).expect("tools"), "arguments": {"path": file, "recursive": false}, "result_size": rng.random_range(10..50_000), "success": rng.random_bool(0.95)})
            }
            "file_read" | "file_write" | "file_modify" => {
                json!({"path": file, "lines_added": rng.random_range(0..120), "lines_removed": rng.random_range(0..60), "bytes": rng.random_range(100..40_000)})
            }
            "command_execution" => {
                json!({"command": COMMANDS.choose(rng).expect("commands"), "exit_code": if rng.random_bool(0.9) { 0 } else { 1 }, "cwd": format!("/home/dev/src/{}", s.project)})
            }
            "error_encountered" => {
                ev.severity = pb::Severity::Error as i32;
                json!({"message": "tool execution failed: permission denied", "error_type": "ToolError", "recoverable": true})
            }
            // A permission prompt for a tool call, most of them accepted.
            "tool_decision" => {
                json!({"tool_name": TOOLS.choose(rng).expect("tools"), "accepted": rng.random_bool(0.85), "source": "user"})
            }
            "git_commit" => {
                json!({"sha": format!("{:016x}{:016x}{:08x}", rng.random::<u64>(), rng.random::<u64>(), rng.random::<u32>()), "branch": s.branch, "files_changed": rng.random_range(1..12)})
            }
            "pull_request" => {
                let number = rng.random_range(1..5_000);
                json!({"number": number, "url": format!("https://github.com/{}/pull/{number}", s.project), "action": "opened"})
            }
            "user_interaction" => {
                json!({"action": "accept_suggestion", "suggestion_length": rng.random_range(10..500)})
            }
            _ => json!({"trigger": "user", "model": s.model, "machine_id": s.machine_id}),
        };
        ev.data_json = data.to_string();
        ev
    }

    /// The chat session descriptor of the current session.
    pub fn chat_session(&mut self) -> pb::ChatSession {
        let s = self.session().clone();
        pb::ChatSession {
            session_id: s.id.to_string(),
            workspace: Some(pb::Workspace {
                workspace_id: s.workspace_id.clone(),
                workspace_path: format!("/home/dev/src/{}", s.project),
                workspace_type: "folder".into(),
                branch: Some(s.branch.into()),
                commit: None,
                project: Some(pb::Project {
                    name: s.project.clone(),
                    repo_url: Some(format!("https://github.com/{}.git", s.project)),
                    description: None,
                    organization: Some(organization(s.organization)),
                }),
                machine: Some(pb::Machine {
                    machine_id: s.machine_id.clone(),
                    hostname: s.machine_id.clone(),
                    username: "dev".into(),
                    os_type: "linux".into(),
                    os_version: Some("6.8".into()),
                    machine_type: "local".into(),
                    ip_address: None,
                    metadata_json: String::new(),
                }),
            }),
            agent_type: s.agent.into(),
            model_id: Some(s.model.into()),
            started_at: Some(Timestamp {
                seconds: s.clock_us / 1_000_000,
                nanos: 0,
            }),
            user: Some(developer(s.developer)),
            ..Default::default()
        }
    }

    /// The next chat message, and the session descriptor when the message
    /// opens a new session.
    pub fn message(&mut self) -> (pb::ChatMessage, Option<pb::ChatSession>) {
        let mut opened = None;
        if self.session.as_ref().is_none_or(|s| s.remaining == 0) {
            let s = self.new_session();
            self.session = Some(s);
        }
        if self.session.as_ref().is_some_and(|s| s.message_seq == 0) {
            opened = Some(self.chat_session());
        }
        let step = self.rng.random_range(500_000..20_000_000);
        let mut s = self.session.take().expect("session");
        s.clock_us += step;
        s.remaining = s.remaining.saturating_sub(4);
        let role = if s.message_seq % 2 == 0 {
            "user"
        } else {
            "assistant"
        };
        let words = if role == "user" {
            self.rng.random_range(8..60)
        } else {
            self.rng.random_range(40..300)
        };
        let content: Vec<&str> = (0..words)
            .map(|_| *WORDS.choose(&mut self.rng).expect("words"))
            .collect();
        let m = pb::ChatMessage {
            id: Uuid::from_u128(self.rng.random()).to_string(),
            session_id: s.id.to_string(),
            role: role.into(),
            content: content.join(" "),
            timestamp: Some(Timestamp {
                seconds: s.clock_us / 1_000_000,
                nanos: ((s.clock_us % 1_000_000) * 1000) as i32,
            }),
            sequence: s.message_seq,
            metadata_json: json!({"model": s.model, "agent": s.agent}).to_string(),
            search_content: None,
        };
        s.message_seq += 1;
        self.session = Some(s);
        (m, opened)
    }
}

fn pick_weighted(rng: &mut SmallRng, items: &[(&'static str, u32)]) -> &'static str {
    let total: u32 = items.iter().map(|(_, w)| w).sum();
    let mut x = rng.random_range(0..total);
    for (item, w) in items {
        if x < *w {
            return item;
        }
        x -= w;
    }
    items[0].0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_look_like_real_ones() {
        let mut g = Generator::new(7, 10);
        let evs = g.events(2_000);
        assert_eq!(evs[0].event_type, "session_start");
        let json_bytes: Vec<usize> = evs
            .iter()
            .map(|e| e.context_json.len() + e.data_json.len())
            .collect();
        let avg = json_bytes.iter().sum::<usize>() / json_bytes.len();
        assert!((200..=400).contains(&avg), "average JSON bytes {avg}");
        assert!(evs.iter().any(|e| e.event_type == "session_end"));
        assert!(
            evs.iter()
                .filter(|e| e.event_type == "llm_request")
                .all(|e| e.cost_usd.is_some() && e.model.is_some())
        );
        // In order within a session.
        for w in evs.windows(2) {
            if w[0].session_id == w[1].session_id {
                assert!(w[0].timestamp.unwrap().seconds <= w[1].timestamp.unwrap().seconds);
            }
        }
    }

    #[test]
    fn same_seed_same_events() {
        let a = Generator::new(1, 3).with_start_us(0).events(10);
        let b = Generator::new(1, 3).with_start_us(0).events(10);
        assert_eq!(a, b);
    }

    #[test]
    fn a_spread_starts_sessions_over_the_whole_range_and_none_in_the_future() {
        let day_us = 86_400_000_000i64;
        let now_s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let evs = Generator::new(3, 4)
            .with_spread_us(30 * day_us)
            .events(20_000);
        let ages: Vec<i64> = evs
            .iter()
            .map(|e| (now_s - e.timestamp.unwrap().seconds) / 86_400)
            .collect();
        assert!(ages.iter().all(|d| (0..=30).contains(d)), "{ages:?}");
        // Sessions land in most weeks of the month, not in one corner.
        let weeks: std::collections::BTreeSet<i64> = ages.iter().map(|d| d / 7).collect();
        assert!(weeks.len() >= 4, "{weeks:?}");
    }
}
