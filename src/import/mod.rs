//! `agent-telemetry import`: the agents' own transcripts on a developer's
//! disk, sent to a running service over its gRPC API as any client's rows
//! (intake validates, redacts and applies the content policy to them as to
//! every edge's). A client, like `loadgen`: it reads files and hands the
//! service rows, nothing else.
//!
//! Per model call an `llm_request` event (tokens as everywhere here: input
//! includes the cache), per tool use a `tool_use` event with its success
//! and duration, the prompts and replies as chat messages, each session as
//! an agent session. Ids derive from the transcripts' own ids
//! ([`crate::ids`]), so importing again stores nothing twice, nor what the
//! agent's OTLP export brought already. docs/import.md.
//!
//! Sources so far: Claude Code ([`claude`]), Codex ([`codex`]) and Gemini
//! CLI ([`gemini`]).

pub mod claude;
pub mod codex;
pub mod follow;
pub mod gemini;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use clap::Args;
use serde_json::{Value as Json, json};
use tonic::transport::Channel;
use uuid::Uuid;

use crate::{
    client::{self, ClientError},
    config::ClientConfig,
    pb::{self, telemetry_ingest_client::TelemetryIngestClient},
    price::{PriceError, PriceTable},
};

#[derive(Debug, Clone, Args)]
pub struct ImportConfig {
    /// Where the service is, its TLS trust and the API key.
    #[command(flatten)]
    pub client: ClientConfig,
    /// Claude Code's configuration folders (holding `projects/`); default:
    /// `CLAUDE_CONFIG_DIR` (comma-separated), else `~/.config/claude` and
    /// `~/.claude`, those that exist.
    #[arg(long = "claude-dir", value_name = "DIR")]
    pub claude_dirs: Vec<PathBuf>,
    /// Codex's home folders (holding `sessions/`); default: `CODEX_HOME`,
    /// else `~/.codex`, if it exists.
    #[arg(long = "codex-home", value_name = "DIR")]
    pub codex_homes: Vec<PathBuf>,
    /// Gemini CLI's folders (holding `tmp/`); default: `~/.gemini`, if it
    /// exists.
    #[arg(long = "gemini-dir", value_name = "DIR")]
    pub gemini_dirs: Vec<PathBuf>,
    /// The agents whose transcripts to read; default: every one found.
    #[arg(long = "source", value_enum)]
    pub sources: Vec<Source>,
    /// Price table (this service's format or LiteLLM's list) for the cost of
    /// requests whose transcript line carries none.
    #[arg(long, env = "AGENT_TELEMETRY_PRICE_TABLE")]
    pub price_table: Option<PathBuf>,
    /// The project of every imported row, instead of each session's git
    /// remote (or its folder's last two parts).
    #[arg(long)]
    pub project: Option<String>,
    /// Rows per batch sent.
    #[arg(long, default_value_t = 1000)]
    pub batch_rows: usize,
    /// Keep running: send new lines as the agents write them, and resume
    /// where it stopped after a restart (docs/import.md, "Following").
    #[arg(long)]
    pub follow: bool,
    /// With --follow: where it keeps how far each file was sent; default
    /// `$XDG_STATE_HOME/agent-telemetry/import-state.json` (else
    /// `~/.local/state/…`).
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,
}

/// An agent whose transcripts the importer reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Source {
    #[value(name = "claude-code")]
    ClaudeCode,
    Codex,
    #[value(name = "gemini-cli")]
    GeminiCli,
}

impl Source {
    fn agent(self) -> &'static str {
        match self {
            Source::ClaudeCode => claude::AGENT,
            Source::Codex => codex::AGENT,
            Source::GeminiCli => gemini::AGENT,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Prices(#[from] PriceError),
    #[error("no transcripts found: looked in {0}")]
    NothingFound(String),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the service refused a batch: {0}")]
    Refused(String),
    #[error("cannot watch the transcripts: {0}")]
    Follow(String),
}

/// What a session's lines said about it.
#[derive(Debug, Default, Clone)]
pub struct Session {
    pub agent: &'static str,
    pub start: Option<SystemTime>,
    pub end: Option<SystemTime>,
    pub cwd: Option<String>,
    pub branch: Option<String>,
    pub version: Option<String>,
    /// The repository's remote, where the transcript names it (Codex's
    /// `session_meta.git.repository_url`).
    pub repository: Option<String>,
}

impl Session {
    fn saw(&mut self, ts: SystemTime, line: &Json) {
        self.start = Some(self.start.map_or(ts, |s| s.min(ts)));
        self.end = Some(self.end.map_or(ts, |e| e.max(ts)));
        let get = |k: &str| {
            line.get(k)
                .and_then(Json::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        // The first cwd a session names is where it ran; branch and
        // version as last seen.
        if self.cwd.is_none() {
            self.cwd = get("cwd");
        }
        self.branch = get("gitBranch").or(self.branch.take());
        self.version = get("version").or(self.version.take());
    }
}

/// A chat message as read, before its session's project is known.
pub struct Said {
    /// The line it was read from.
    pub line: u64,
    pub session: Uuid,
    pub role: &'static str,
    pub content: String,
    pub ts: SystemTime,
    pub id: Uuid,
}

/// Everything read from the transcripts, deduplicated by id.
#[derive(Default)]
pub struct Read {
    pub lines: u64,
    pub events: Vec<pb::AgentEvent>,
    /// The line each event was read from (the line that completed it).
    pub event_lines: Vec<u64>,
    /// The line being read (set by each reader).
    pub at: u64,
    /// Following a file that is still being written: a tool call without
    /// its result yet is kept for the result, not sent half.
    pub following: bool,
    pub messages: Vec<Said>,
    pub sessions: BTreeMap<Uuid, Session>,
    /// Lines skipped, with file and line number (the first few hundred).
    pub problems: Vec<String>,
    pub skipped: u64,
    /// Rows read again (the same ids): a resumed session repeating lines,
    /// a streamed reply written a line per block, a message written again.
    pub repeats: u64,
    seen: HashSet<Uuid>,
}

impl Read {
    pub fn problem(&mut self, what: String) {
        self.skipped += 1;
        if self.problems.len() < 200 {
            self.problems.push(what);
        }
    }

    fn push_event(&mut self, e: pb::AgentEvent) {
        let id = Uuid::parse_str(&e.id).expect("ids are made here");
        if self.seen.insert(id) {
            self.events.push(e);
            self.event_lines.push(self.at);
        } else {
            self.repeats += 1;
        }
    }

    fn push_message(
        &mut self,
        session: Uuid,
        role: &'static str,
        content: String,
        ts: SystemTime,
        key: &str,
    ) {
        self.push_message_of(claude::AGENT, session, role, content, ts, key);
    }

    fn push_message_of(
        &mut self,
        agent: &str,
        session: Uuid,
        role: &'static str,
        content: String,
        ts: SystemTime,
        key: &str,
    ) {
        let id = crate::ids::agent_row(agent, "message", key);
        if self.seen.insert(id) {
            self.messages.push(Said {
                line: self.at,
                session,
                role,
                content,
                ts,
                id,
            });
        } else {
            self.repeats += 1;
        }
    }
}

impl Read {
    /// Keeps only the rows read from lines after `line` (those before were
    /// sent already).
    pub fn keep_after(&mut self, line: u64) {
        let events = std::mem::take(&mut self.events);
        let lines = std::mem::take(&mut self.event_lines);
        for (e, l) in events.into_iter().zip(lines) {
            if l > line {
                self.events.push(e);
                self.event_lines.push(l);
            }
        }
        self.messages.retain(|m| m.line > line);
    }
}

/// Claude Code's configuration folders to read.
fn claude_dirs(cfg: &ImportConfig) -> Vec<PathBuf> {
    if !cfg.claude_dirs.is_empty() {
        return cfg.claude_dirs.clone();
    }
    if let Some(v) = std::env::var_os("CLAUDE_CONFIG_DIR") {
        return v
            .to_string_lossy()
            .split(',')
            .map(|d| PathBuf::from(d.trim()))
            .collect();
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let xdg = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join(".config"));
    [xdg.join("claude"), home.join(".claude")]
        .into_iter()
        .filter(|d| d.join("projects").is_dir())
        .collect()
}

/// Codex's home folders to read.
fn codex_homes(cfg: &ImportConfig) -> Vec<PathBuf> {
    if !cfg.codex_homes.is_empty() {
        return cfg.codex_homes.clone();
    }
    let home = std::env::var_os("CODEX_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default()
                .join(".codex")
        });
    [home]
        .into_iter()
        .filter(|d| d.join("sessions").is_dir())
        .collect()
}

/// Reads every Codex rollout under `homes` (`sessions/` and
/// `archived_sessions/`).
pub fn read_codex(homes: &[PathBuf], prices: &PriceTable) -> Result<(Read, usize), ImportError> {
    let mut files = Vec::new();
    for h in homes {
        for sub in ["sessions", "archived_sessions"] {
            jsonl_files(&h.join(sub), &mut files);
        }
    }
    let mut read = Read::default();
    for f in &files {
        let text = std::fs::read(f).map_err(|source| ImportError::Read {
            path: f.clone(),
            source,
        })?;
        codex::read(
            &f.display().to_string(),
            &String::from_utf8_lossy(&text),
            prices,
            &mut read,
        );
    }
    Ok((read, files.len()))
}

/// Gemini CLI's folders to read.
fn gemini_dirs(cfg: &ImportConfig) -> Vec<PathBuf> {
    if !cfg.gemini_dirs.is_empty() {
        return cfg.gemini_dirs.clone();
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    [home.join(".gemini")]
        .into_iter()
        .filter(|d| d.join("tmp").is_dir())
        .collect()
}

/// Reads every Gemini CLI chat under `dirs`: `tmp/<project>/chats/*.jsonl`,
/// with the project's folder from `tmp/<project>/.project_root`.
pub fn read_gemini(dirs: &[PathBuf], prices: &PriceTable) -> Result<(Read, usize), ImportError> {
    let mut read = Read::default();
    let mut count = 0;
    for d in dirs {
        let Ok(projects) = std::fs::read_dir(d.join("tmp")) else {
            continue;
        };
        let mut projects: Vec<PathBuf> = projects.flatten().map(|e| e.path()).collect();
        projects.sort();
        for project in projects {
            let cwd = std::fs::read_to_string(project.join(".project_root"))
                .ok()
                .map(|s| s.trim().to_owned());
            let mut files = Vec::new();
            jsonl_files(&project.join("chats"), &mut files);
            for f in files {
                let text = std::fs::read(&f).map_err(|source| ImportError::Read {
                    path: f.clone(),
                    source,
                })?;
                let text = String::from_utf8_lossy(&text);
                gemini::read(
                    &f.display().to_string(),
                    &text,
                    cwd.as_deref(),
                    prices,
                    &mut read,
                );
                count += 1;
            }
        }
    }
    Ok((read, count))
}

/// Every `*.jsonl` under `dir`, in a stable order.
fn jsonl_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            jsonl_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "jsonl") {
            out.push(p);
        }
    }
}

/// The session a transcript's path names: `<session>.jsonl`, or
/// `<session>/subagents/agent-<id>.jsonl` for a subagent.
fn session_of_path(p: &Path) -> Option<Uuid> {
    let parent = p.parent()?;
    let name = if parent.file_name().is_some_and(|n| n == "subagents") {
        parent.parent()?.file_name()?.to_string_lossy().into_owned()
    } else {
        p.file_stem()?.to_string_lossy().into_owned()
    };
    Uuid::parse_str(&name).ok()
}

/// Reads every Claude Code transcript under `dirs`.
pub fn read_claude(dirs: &[PathBuf], prices: &PriceTable) -> Result<(Read, usize), ImportError> {
    let mut files = Vec::new();
    for d in dirs {
        // A folder holding `projects/`, or the projects folder itself.
        let projects = if d.join("projects").is_dir() {
            d.join("projects")
        } else {
            d.clone()
        };
        jsonl_files(&projects, &mut files);
    }
    let mut read = Read::default();
    for f in &files {
        let text = std::fs::read(f).map_err(|source| ImportError::Read {
            path: f.clone(),
            source,
        })?;
        // A file cut inside a character still has its other lines.
        let text = String::from_utf8_lossy(&text);
        claude::read(
            &f.display().to_string(),
            &text,
            session_of_path(f),
            prices,
            &mut read,
        );
    }
    Ok((read, files.len()))
}

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

/// Every source's summary, one after another.
pub struct Summaries(pub Vec<Summary>);

impl std::fmt::Display for Summaries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|s| write!(f, "{s}"))
    }
}

pub async fn run(cfg: &ImportConfig) -> Result<Summaries, ImportError> {
    let prices = match &cfg.price_table {
        Some(p) => PriceTable::load(p)?,
        None => PriceTable::default(),
    };
    let wanted = |s: Source| cfg.sources.is_empty() || cfg.sources.contains(&s);
    if cfg.follow {
        let mut roots = Vec::new();
        if wanted(Source::ClaudeCode) {
            for d in claude_dirs(cfg) {
                let projects = d.join("projects");
                roots.push((
                    Source::ClaudeCode,
                    if projects.is_dir() { projects } else { d },
                ));
            }
        }
        if wanted(Source::Codex) {
            for h in codex_homes(cfg) {
                roots.push((Source::Codex, h.join("sessions")));
                roots.push((Source::Codex, h.join("archived_sessions")));
            }
        }
        if wanted(Source::GeminiCli) {
            roots.extend(
                gemini_dirs(cfg)
                    .into_iter()
                    .map(|d| (Source::GeminiCli, d.join("tmp"))),
            );
        }
        roots.retain(|(_, r)| r.is_dir());
        if roots.is_empty() {
            return Err(ImportError::NothingFound(
                "no agent's folder to follow (~/.claude, ~/.codex, ~/.gemini, or the flags')"
                    .into(),
            ));
        }
        let channel = client::connect(&cfg.client, Duration::from_secs(10)).await?;
        let key = client::bearer(&cfg.client)?;
        let mut c = TelemetryIngestClient::new(channel).max_decoding_message_size(64 << 20);
        let state = cfg.state.clone().unwrap_or_else(follow::default_state);
        follow::run(cfg, &mut c, &key, &prices, roots, &state).await?;
        return Ok(Summaries(Vec::new()));
    }
    let mut found = Vec::new();
    let mut looked = Vec::new();
    if wanted(Source::ClaudeCode) {
        let dirs = claude_dirs(cfg);
        looked.extend(dirs.iter().map(|d| d.display().to_string()));
        let (read, files) = read_claude(&dirs, &prices)?;
        if files > 0 {
            found.push((Source::ClaudeCode, read, files));
        }
    }
    if wanted(Source::Codex) {
        let homes = codex_homes(cfg);
        looked.extend(homes.iter().map(|d| d.display().to_string()));
        let (read, files) = read_codex(&homes, &prices)?;
        if files > 0 {
            found.push((Source::Codex, read, files));
        }
    }
    if wanted(Source::GeminiCli) {
        let dirs = gemini_dirs(cfg);
        looked.extend(dirs.iter().map(|d| d.display().to_string()));
        let (read, files) = read_gemini(&dirs, &prices)?;
        if files > 0 {
            found.push((Source::GeminiCli, read, files));
        }
    }
    if found.is_empty() {
        return Err(ImportError::NothingFound(if looked.is_empty() {
            "no agent's folder (~/.claude, ~/.config/claude, CLAUDE_CONFIG_DIR, ~/.codex, CODEX_HOME, ~/.gemini)"
                .into()
        } else {
            looked.join(", ")
        }));
    }
    let channel = client::connect(&cfg.client, Duration::from_secs(10)).await?;
    let key = client::bearer(&cfg.client)?;
    let mut c = TelemetryIngestClient::new(channel).max_decoding_message_size(64 << 20);
    let mut out = Vec::new();
    for (source, read, files) in found {
        out.push(send(cfg, &mut c, &key, source, read, files).await?);
    }
    Ok(Summaries(out))
}

/// Sends what was read of one source: its sessions, events and messages.
async fn send(
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

    // Chat messages, with their sessions' workspaces.
    let mut order: HashMap<Uuid, i32> = HashMap::new();
    read.messages.sort_by_key(|m| (m.session, m.ts));
    let messages: Vec<(pb::ChatMessage, pb::ChatSession)> = read
        .messages
        .iter()
        .map(|m| {
            let n = order.entry(m.session).or_insert(0);
            *n += 1;
            let s = read.sessions.get(&m.session).cloned().unwrap_or_default();
            (
                pb::ChatMessage {
                    id: m.id.to_string(),
                    session_id: m.session.to_string(),
                    role: m.role.into(),
                    content: m.content.clone(),
                    timestamp: Some(crate::time::to_timestamp(m.ts)),
                    sequence: *n,
                    metadata_json: r#"{"source":"import"}"#.into(),
                    search_content: None,
                },
                chat_session(
                    m.session,
                    &s,
                    &project_of_session(&m.session.to_string()),
                    &user,
                ),
            )
        })
        .collect();
    for chunk in messages.chunks(batch) {
        sequence += 1;
        let mut sessions: BTreeMap<String, pb::ChatSession> = BTreeMap::new();
        for (_, s) in chunk {
            sessions
                .entry(s.session_id.clone())
                .or_insert_with(|| s.clone());
        }
        let request = pb::ChatMessageBatch {
            sequence,
            sessions: sessions.into_values().collect(),
            messages: chunk.iter().map(|(m, _)| m.clone()).collect(),
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
fn progress(source: &str, rows: u64, files: usize, lines: u64, follow: bool) -> indicatif::ProgressBar {
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
fn chat_session(id: Uuid, s: &Session, project: &str, user: &Option<pb::User>) -> pb::ChatSession {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
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
                    host.clone()
                },
                hostname: host,
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
