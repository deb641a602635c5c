//! Sending what was read, chunk by chunk: each session's project and
//! developer, then the agent sessions, events and chat messages in batches
//! over the native gRPC API, several at once, counting what the service
//! stored, recognised and refused.

use std::collections::{BTreeSet, HashMap};

use serde_json::json;
use tonic::transport::Channel;
use uuid::Uuid;

use super::{Chunk, ImportConfig, ImportError, Read, Said, Session, Source};
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
    /// Batches sent again because the service asked (busy, or its
    /// database down).
    pub resent: u64,
    /// The first reasons of skipped lines and rejected rows.
    pub problems: Vec<String>,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{}: {} files, {} lines; {} rows sent: {} stored, {} already stored, {} spooled, {} rejected; {} sessions; {} lines skipped; {} rows read again (the same ids); {} batches resent when the service asked",
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
            self.repeats,
            self.resent
        )?;
        for p in self.problems.iter().take(10) {
            writeln!(f, "  {p}")?;
        }
        Ok(())
    }
}

/// How many batches are on the wire at once: enough for the service to
/// gather full flushes (`--flush-rows`, 10,000 rows) while the next ones
/// arrive; with a few, each batch became a COPY of its own.
const IN_FLIGHT: usize = 16;

type Key = Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>;

/// Sends chunks of rows to the service: each session's project,
/// developer and workspace once, then its rows in batches, several at once.
pub(crate) struct Sender<'a> {
    cfg: &'a ImportConfig,
    c: TelemetryIngestClient<Channel>,
    key: Key,
    user: Option<pb::User>,
    host: String,
    /// Each session's project and chat session, once its lines named them.
    projects: HashMap<Uuid, String>,
    chats: HashMap<Uuid, pb::ChatSession>,
    /// Each folder's project (`git remote` once per folder).
    folders: HashMap<String, String>,
    sequence: u64,
    /// Batches sent and not yet acknowledged, each its own task so that
    /// they progress while the next chunk is read.
    inflight: tokio::task::JoinSet<Result<(Acked, u32), ImportError>>,
    summary: Summary,
    bar: indicatif::ProgressBar,
    started: std::time::Instant,
}

impl<'a> Sender<'a> {
    pub(crate) async fn connect(cfg: &'a ImportConfig) -> Result<Self, ImportError> {
        let channel = client::connect(&cfg.client, std::time::Duration::from_secs(10)).await?;
        Ok(Sender {
            cfg,
            key: client::bearer(&cfg.client)?,
            c: TelemetryIngestClient::new(channel).max_decoding_message_size(64 << 20),
            user: developer(cfg),
            host: std::fs::read_to_string("/etc/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_default(),
            projects: HashMap::new(),
            chats: HashMap::new(),
            folders: HashMap::new(),
            sequence: 0,
            inflight: tokio::task::JoinSet::new(),
            summary: Summary::default(),
            bar: indicatif::ProgressBar::hidden(),
            started: std::time::Instant::now(),
        })
    }

    /// Rows read before they are sent: enough for every batch in flight
    /// twice over.
    pub(crate) fn chunk_rows(&self) -> usize {
        self.cfg.batch_rows.max(1) * IN_FLIGHT * 2
    }

    /// A new source's summary, and its progress over `bytes` of transcripts.
    pub(crate) fn start(&mut self, source: Source, files: usize, bytes: u64) {
        self.summary = Summary {
            source: source.agent(),
            files,
            ..Summary::default()
        };
        self.started = std::time::Instant::now();
        self.bar = progress(source.agent(), bytes, self.cfg.follow);
    }

    /// The source's summary once every batch is acknowledged, with what its
    /// reader counted.
    pub(crate) async fn finish(&mut self, read: &Read) -> Result<Summary, ImportError> {
        while !self.inflight.is_empty() {
            self.acked().await?;
        }
        self.bar.finish_and_clear();
        let mut summary = std::mem::take(&mut self.summary);
        summary.lines = read.lines;
        summary.skipped = read.skipped;
        summary.repeats = read.repeats;
        let rejected = std::mem::take(&mut summary.problems);
        summary.problems = read.problems.iter().cloned().chain(rejected).collect();
        Ok(summary)
    }

    /// Waits for the next acknowledgement and counts it.
    async fn acked(&mut self) -> Result<(), ImportError> {
        if let Some(done) = self.inflight.join_next().await {
            let (acked, resent) =
                done.map_err(|e| ImportError::Refused(format!("a send failed: {e}")))??;
            self.summary.resent += u64::from(resent);
            match acked {
                Acked::Rows(ack) => count(&mut self.summary, &ack),
                Acked::Sessions(ack) => {
                    for r in ack.rejected {
                        self.summary
                            .problems
                            .push(format!("agent session: {}: {}", r.field, r.reason));
                    }
                }
            }
        }
        Ok(())
    }

    /// Puts a batch on the wire once fewer than [`IN_FLIGHT`] are.
    async fn submit(&mut self, batch: Batch) -> Result<(), ImportError> {
        while self.inflight.len() >= IN_FLIGHT {
            self.acked().await?;
        }
        let mut c = self.c.clone();
        let key = self.key.clone();
        self.inflight
            .spawn(async move { batch.send(&mut c, &key).await });
        Ok(())
    }

    /// The project of a session: the flag's, else its repository's remote,
    /// else its folder's.
    fn project(&mut self, s: &Session) -> String {
        if let Some(p) = &self.cfg.project {
            return p.clone();
        }
        match (&s.repository, &s.cwd) {
            (Some(url), _) => crate::privacy::strip_url_userinfo(url).unwrap_or(url.clone()),
            (None, Some(cwd)) => project_of(cwd, &mut self.folders),
            (None, None) => "unattributed".to_owned(),
        }
    }

    /// Sends a chunk: its new or widened sessions, then its events and
    /// messages, [`IN_FLIGHT`] batches at a time (the last ones may still be
    /// in flight on return: [`Self::finish`] waits for them).
    pub(crate) async fn send(&mut self, chunk: Chunk) -> Result<(), ImportError> {
        let Chunk {
            mut events,
            mut messages,
            sessions,
            bytes,
            files,
        } = chunk;
        let mut agent_sessions = Vec::with_capacity(sessions.len());
        for (id, s) in &sessions {
            let project = self.project(s);
            self.chats
                .insert(*id, chat_session(*id, s, &project, &self.user, &self.host));
            agent_sessions.push(pb::AgentSession {
                id: id.to_string(),
                agent_id: s.agent.into(),
                agent_version: s.version.clone().unwrap_or_default(),
                project: project.clone(),
                start_time: s.start.map(crate::time::to_timestamp),
                end_time: s.end.map(crate::time::to_timestamp),
                context_json: json!({
                    "source": "import", "cwd": s.cwd, "git_branch": s.branch
                })
                .to_string(),
                user: self.user.clone(),
                ..Default::default()
            });
            if self.projects.insert(*id, project).is_none() {
                self.summary.sessions += 1;
            }
        }
        // Sessions in flight with the rows: an upsert only widens a
        // session, so their order does not matter.
        for batch in agent_sessions.chunks(self.cfg.batch_rows.max(1)) {
            self.submit(Batch::Sessions(pb::SessionReport {
                chat_sessions: Vec::new(),
                agent_sessions: batch.to_vec(),
            }))
            .await?;
        }
        let project_of_session = |s: &str| {
            Uuid::parse_str(s)
                .ok()
                .and_then(|id| self.projects.get(&id).cloned())
                .unwrap_or_else(|| "unattributed".to_owned())
        };
        for e in &mut events {
            e.project = project_of_session(&e.session_id);
            e.user.clone_from(&self.user);
        }
        messages.sort_by_key(|m| (m.session, m.ts));
        let batch = self.cfg.batch_rows.max(1);
        for rows in events.chunks(batch) {
            self.sequence += 1;
            let b = Batch::Events(pb::AgentEventBatch {
                sequence: self.sequence,
                events: rows.to_vec(),
            });
            self.submit(b).await?;
        }
        for rows in messages.chunks(batch) {
            self.sequence += 1;
            let sessions: BTreeSet<Uuid> = rows.iter().map(|m| m.session).collect();
            let b = Batch::Messages(pb::ChatMessageBatch {
                sequence: self.sequence,
                sessions: sessions
                    .iter()
                    .filter_map(|s| self.chats.get(s).cloned())
                    .collect(),
                messages: rows.iter().map(message).collect(),
            });
            self.submit(b).await?;
        }
        self.bar.set_position(bytes);
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        self.bar.set_message(format!(
            "{files}/{} files, {} rows sent, {:.0} rows/s",
            self.summary.files,
            self.summary.sent,
            self.summary.sent as f64 / secs
        ));
        Ok(())
    }
}

/// A chat message on the wire. Its place in the session is its time, as
/// for the agents' OTLP messages ([`crate::time::message_sequence`]): the
/// same whatever chunk, run or machine sends it.
fn message(m: &Said) -> pb::ChatMessage {
    pb::ChatMessage {
        id: m.id.to_string(),
        session_id: m.session.to_string(),
        role: m.role.into(),
        content: m.content.clone(),
        timestamp: Some(crate::time::to_timestamp(m.ts)),
        sequence: crate::time::message_sequence(None, m.ts)
            .saturating_add(i32::from(m.role == "assistant")),
        metadata_json: r#"{"source":"import"}"#.into(),
        search_content: None,
    }
}

/// One request to the service.
#[derive(Clone)]
enum Batch {
    Sessions(pb::SessionReport),
    Events(pb::AgentEventBatch),
    Messages(pb::ChatMessageBatch),
}

/// Its answer.
enum Acked {
    Sessions(pb::SessionReportAck),
    Rows(pb::BatchAck),
}

/// How long a batch is resent while the service asks for it (a full
/// buffer, a database that is down): an outage of the service's database
/// does not end an import of years of history.
const RESEND_FOR: std::time::Duration = std::time::Duration::from_secs(600);

impl Batch {
    /// Sends the batch; resends it while the service answers that it can
    /// take it later (the table of `crate::codes`, or an ack whose error is
    /// `retryable`), waiting as it says and longer each time. The answer,
    /// and how many times it was resent.
    async fn send(
        self,
        c: &mut TelemetryIngestClient<Channel>,
        key: &Key,
    ) -> Result<(Acked, u32), ImportError> {
        let started = std::time::Instant::now();
        let mut wait = std::time::Duration::from_millis(500);
        let mut resent = 0;
        loop {
            let later = match self.clone().once(c, key).await {
                Ok(acked) => return Ok((acked, resent)),
                Err((e, None)) => return Err(e),
                Err((e, Some(_))) if started.elapsed() >= RESEND_FOR => return Err(e),
                Err((_, Some(after))) => after,
            };
            tokio::time::sleep(later.max(wait)).await;
            wait = (wait * 2).min(std::time::Duration::from_secs(30));
            resent += 1;
        }
    }

    /// One send: the answer, or the error and when to send again (None:
    /// never).
    async fn once(
        self,
        c: &mut TelemetryIngestClient<Channel>,
        key: &Key,
    ) -> Result<Acked, (ImportError, Option<std::time::Duration>)> {
        let refused = |s: tonic::Status| {
            (
                ImportError::Refused(format!("{:?}: {}", s.code(), s.message())),
                crate::codes::retry_after(s.code()),
            )
        };
        let ack = match self {
            Batch::Sessions(b) => {
                let ack = c.report_sessions(client::authorized(key, b)).await;
                return Ok(Acked::Sessions(ack.map_err(refused)?.into_inner()));
            }
            Batch::Events(b) => c.ingest_agent_events(client::authorized(key, b)).await,
            Batch::Messages(b) => c.ingest_chat_messages(client::authorized(key, b)).await,
        }
        .map_err(refused)?
        .into_inner();
        if !ack.error.is_empty() {
            let after = ack.retryable.then_some(std::time::Duration::from_secs(1));
            return Err((ImportError::Refused(ack.error), after));
        }
        Ok(Acked::Rows(ack))
    }
}

/// The progress of a long import, on standard error when it is a terminal
/// (none in a pipe, a log or `--follow`): bytes of transcripts read of
/// all, the time left, the files read and rows sent and their rate.
fn progress(source: &str, bytes: u64, follow: bool) -> indicatif::ProgressBar {
    if follow {
        return indicatif::ProgressBar::hidden();
    }
    let style = indicatif::ProgressStyle::with_template(
        "{prefix} [{bar:30}] {bytes}/{total_bytes}, ETA {eta} ({msg})",
    )
    .expect("a valid template")
    .progress_chars("=> ");
    let bar = indicatif::ProgressBar::new(bytes).with_style(style);
    bar.set_prefix(source.to_owned());
    bar
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
