//! Sending what was read: each session's project and developer, then the
//! agent sessions, events and chat messages in batches over the native
//! gRPC API, counting what the service stored, recognised and refused.

use std::collections::{BTreeSet, HashMap};

use serde_json::json;
use tonic::transport::Channel;
use uuid::Uuid;

use super::{ImportConfig, ImportError, Read, Session, Source};
use crate::{
    client,
    pb::{self, telemetry_ingest_client::TelemetryIngestClient},
};

/// The project of a session that ran in `cwd`: the git remote of the
/// repository there (its credentials stripped), else the folder's last two
/// parts ("owner/repo" is what a checkout's path usually ends in).
fn project_of(cwd: &str, cache: &mut HashMap<String, String>) -> String {
    if let Some(p) = cache.get(cwd) {
        return p.clone();
    }
    let remote = std::process::Command::new("git")
        .args(["-C", cwd, "remote", "get-url", "origin"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .map(|url| crate::privacy::strip_url_userinfo(&url).unwrap_or(url));
    let project = remote.unwrap_or_else(|| {
        let parts: Vec<&str> = cwd
            .trim_end_matches('/')
            .rsplit('/')
            .filter(|p| !p.is_empty())
            .take(2)
            .collect();
        parts.into_iter().rev().collect::<Vec<_>>().join("/")
    });
    let project = if project.is_empty() {
        "unattributed".to_owned()
    } else {
        project
    };
    cache.insert(cwd.to_owned(), project.clone());
    project
}

/// The developer of rows sent without an API key: git's `user.email`. With
/// a key, rows name none, and the key's developer is theirs.
fn developer(cfg: &ImportConfig) -> Option<pb::User> {
    if cfg.client.api_key.as_deref().is_some_and(|k| !k.is_empty()) {
        return None;
    }
    let email = std::process::Command::new("git")
        .args(["config", "--global", "user.email"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())?;
    Some(pb::User {
        key: email.clone(),
        display_name: String::new(),
        email,
    })
}

/// What one import did, per source.
#[derive(Debug, Default)]
pub struct Summary {
    pub source: &'static str,
    pub files: usize,
    pub lines: u64,
    pub sent: u64,
    pub stored: u64,
    pub duplicates: u64,
    pub spooled: u64,
    pub rejected: u64,
    pub skipped: u64,
    pub repeats: u64,
    pub sessions: u64,
    /// The first reasons of skipped lines and rejected rows.
    pub problems: Vec<String>,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{}: {} files, {} lines; {} rows sent: {} stored, {} already stored, {} spooled, {} rejected; {} sessions; {} lines skipped; {} rows read again (the same ids)",
            self.source,
            self.files,
            self.lines,
            self.sent,
            self.stored,
            self.duplicates,
            self.spooled,
            self.rejected,
            self.sessions,
            self.skipped,
            self.repeats
        )?;
        for p in self.problems.iter().take(10) {
            writeln!(f, "  {p}")?;
        }
        Ok(())
    }
}

/// Sends what was read of one source: its sessions, events and messages.
pub(super) async fn send(
    cfg: &ImportConfig,
    c: &mut TelemetryIngestClient<Channel>,
    key: &Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    source: Source,
    mut read: Read,
    files: usize,
) -> Result<Summary, ImportError> {
    // Each session's project, developer and rows.
    let mut projects = HashMap::new();
    let user = developer(cfg);
    let project: HashMap<Uuid, String> = read
        .sessions
        .iter()
        .map(|(id, s)| {
            let p = cfg
                .project
                .clone()
                .unwrap_or_else(|| match (&s.repository, &s.cwd) {
                    (Some(url), _) => {
                        crate::privacy::strip_url_userinfo(url).unwrap_or(url.clone())
                    }
                    (None, Some(cwd)) => project_of(cwd, &mut projects),
                    (None, None) => "unattributed".to_owned(),
                });
            (*id, p)
        })
        .collect();
    let project_of_session = |s: &str| {
        Uuid::parse_str(s)
            .ok()
            .and_then(|id| project.get(&id).cloned())
            .unwrap_or_else(|| "unattributed".to_owned())
    };
    for e in &mut read.events {
        e.project = project_of_session(&e.session_id);
        e.user.clone_from(&user);
    }

    let mut summary = Summary {
        source: source.agent(),
        files,
        lines: read.lines,
        skipped: read.skipped,
        repeats: read.repeats,
        problems: read.problems.clone(),
        ..Summary::default()
    };
    let batch = cfg.batch_rows.max(1);
    let bar = progress(
        source.agent(),
        (read.sessions.len() + read.events.len() + read.messages.len()) as u64,
        files,
        read.lines,
        cfg.follow,
    );

    // Agent sessions first: the dashboards' session lists.
    let agent_sessions: Vec<pb::AgentSession> = read
        .sessions
        .iter()
        .map(|(id, s)| pb::AgentSession {
            id: id.to_string(),
            agent_id: s.agent.into(),
            agent_version: s.version.clone().unwrap_or_default(),
            project: project.get(id).cloned().unwrap_or_default(),
            start_time: s.start.map(crate::time::to_timestamp),
            end_time: s.end.map(crate::time::to_timestamp),
            context_json: json!({
                "source": "import", "cwd": s.cwd, "git_branch": s.branch
            })
            .to_string(),
            user: user.clone(),
            ..Default::default()
        })
        .collect();
    for chunk in agent_sessions.chunks(batch) {
        let ack = c
            .report_sessions(client::authorized(
                key,
                pb::SessionReport {
                    chat_sessions: Vec::new(),
                    agent_sessions: chunk.to_vec(),
                },
            ))
            .await
            .map_err(|s| ImportError::Refused(s.message().to_owned()))?
            .into_inner();
        summary.sessions += u64::from(ack.agent_sessions_stored);
        bar.inc(chunk.len() as u64);
        for r in ack.rejected {
            summary
                .problems
                .push(format!("agent session: {}: {}", r.field, r.reason));
        }
    }

    let mut sequence = 0;
    for chunk in read.events.chunks(batch) {
        sequence += 1;
        let ack = send_events(c, key, sequence, chunk.to_vec()).await?;
        count(&mut summary, &ack);
        bar.inc(ack.received.into());
    }

    // Chat messages, with their sessions' workspaces (each made once).
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    let chat_sessions: HashMap<Uuid, pb::ChatSession> = read
        .sessions
        .iter()
        .map(|(id, s)| {
            let project = project_of_session(&id.to_string());
            (*id, chat_session(*id, s, &project, &user, &host))
        })
        .collect();
    let mut order: HashMap<Uuid, i32> = HashMap::new();
    read.messages.sort_by_key(|m| (m.session, m.ts));
    let messages: Vec<(Uuid, pb::ChatMessage)> = read
        .messages
        .iter()
        .map(|m| {
            let n = order.entry(m.session).or_insert(0);
            *n += 1;
            let message = pb::ChatMessage {
                id: m.id.to_string(),
                session_id: m.session.to_string(),
                role: m.role.into(),
                content: m.content.clone(),
                timestamp: Some(crate::time::to_timestamp(m.ts)),
                sequence: *n,
                metadata_json: r#"{"source":"import"}"#.into(),
                search_content: None,
            };
            (m.session, message)
        })
        .collect();
    for chunk in messages.chunks(batch) {
        sequence += 1;
        let sessions: BTreeSet<Uuid> = chunk.iter().map(|(s, _)| *s).collect();
        let request = pb::ChatMessageBatch {
            sequence,
            sessions: sessions
                .iter()
                .filter_map(|s| chat_sessions.get(s).cloned())
                .collect(),
            messages: chunk.iter().map(|(_, m)| m.clone()).collect(),
        };
        let ack = c
            .ingest_chat_messages(client::authorized(key, request))
            .await
            .map_err(|s| ImportError::Refused(s.message().to_owned()))?
            .into_inner();
        if !ack.error.is_empty() {
            return Err(ImportError::Refused(ack.error));
        }
        count(&mut summary, &ack);
        bar.inc(ack.received.into());
    }
    bar.finish_and_clear();
    Ok(summary)
}

/// The progress of a long import, on standard error when it is a terminal
/// (none in a pipe, a log or `--follow`): rows sent of all, their rate and
/// the time left, the files and lines read.
fn progress(
    source: &str,
    rows: u64,
    files: usize,
    lines: u64,
    follow: bool,
) -> indicatif::ProgressBar {
    if follow {
        return indicatif::ProgressBar::hidden();
    }
    let style = indicatif::ProgressStyle::with_template(
        "{prefix} [{bar:30}] {pos}/{len} rows, {per_sec}, ETA {eta} ({msg})",
    )
    .expect("a valid template")
    .progress_chars("=> ");
    let bar = indicatif::ProgressBar::new(rows).with_style(style);
    bar.set_prefix(source.to_owned());
    bar.set_message(format!("{files} files, {lines} lines read"));
    bar
}

async fn send_events(
    c: &mut TelemetryIngestClient<Channel>,
    key: &Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    sequence: u64,
    events: Vec<pb::AgentEvent>,
) -> Result<pb::BatchAck, ImportError> {
    let ack = c
        .ingest_agent_events(client::authorized(
            key,
            pb::AgentEventBatch { sequence, events },
        ))
        .await
        .map_err(|s| ImportError::Refused(s.message().to_owned()))?
        .into_inner();
    if !ack.error.is_empty() {
        return Err(ImportError::Refused(ack.error));
    }
    Ok(ack)
}

fn count(summary: &mut Summary, ack: &pb::BatchAck) {
    summary.sent += u64::from(ack.received);
    summary.stored += u64::from(ack.stored);
    summary.duplicates += u64::from(ack.duplicates) + u64::from(ack.conflicts);
    summary.spooled += u64::from(ack.spooled);
    let refused = ack.rejected.iter().filter(|r| r.code != "ALREADY_EXISTS");
    for r in refused {
        summary.rejected += 1;
        if summary.problems.len() < 200 {
            summary
                .problems
                .push(format!("row {}: {}: {}", r.index, r.field, r.reason));
        }
    }
}

/// The chat session of an imported conversation: its workspace is the
/// folder it ran in, on this machine.
fn chat_session(
    id: Uuid,
    s: &Session,
    project: &str,
    user: &Option<pb::User>,
    host: &str,
) -> pb::ChatSession {
    let cwd = s.cwd.clone().unwrap_or_default();
    pb::ChatSession {
        session_id: id.to_string(),
        workspace: Some(pb::Workspace {
            workspace_id: format!("import:{}:{host}:{cwd}", s.agent),
            workspace_path: cwd,
            workspace_type: "folder".into(),
            branch: s.branch.clone(),
            commit: None,
            project: Some(pb::Project {
                name: project.to_owned(),
                repo_url: None,
                description: None,
                organization: None,
            }),
            machine: Some(pb::Machine {
                machine_id: if host.is_empty() {
                    "unknown".into()
                } else {
                    host.to_owned()
                },
                hostname: host.to_owned(),
                username: std::env::var("USER").unwrap_or_default(),
                os_type: std::env::consts::OS.into(),
                os_version: None,
                machine_type: "local".into(),
                ip_address: None,
                metadata_json: String::new(),
            }),
        }),
        agent_type: s.agent.into(),
        model_id: None,
        started_at: s.start.map(crate::time::to_timestamp),
        ended_at: s.end.map(crate::time::to_timestamp),
        message_count: None,
        total_tokens: None,
        user: user.clone(),
    }
}
