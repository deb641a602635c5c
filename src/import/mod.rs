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
//! Sources: Claude Code ([`claude`]), Codex ([`codex`]), Gemini CLI
//! ([`gemini`]) and Copilot CLI ([`copilot`]).

pub mod claude;
pub mod codex;
pub mod copilot;
pub mod follow;
pub mod gemini;
mod send;
mod sources;

use send::Sender;
pub use send::Summary;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::PathBuf,
    time::SystemTime,
};

use clap::Args;
use serde_json::Value as Json;
use uuid::Uuid;

use crate::{
    client::ClientError,
    config::ClientConfig,
    pb,
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
    /// Copilot CLI's home folders (holding `session-state/`); default:
    /// `COPILOT_HOME`, else `~/.copilot`, if it exists.
    #[arg(long = "copilot-home", value_name = "DIR")]
    pub copilot_homes: Vec<PathBuf>,
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
    #[value(name = "copilot-cli")]
    CopilotCli,
}

impl Source {
    fn agent(self) -> &'static str {
        match self {
            Source::ClaudeCode => claude::AGENT,
            Source::Codex => codex::AGENT,
            Source::GeminiCli => gemini::AGENT,
            Source::CopilotCli => copilot::AGENT,
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
    #[error("the transcript reader stopped: {0}")]
    Reader(String),
}

/// A field's text where it is a non-empty string: `key` names a field of
/// `v`, or, starting with `/`, a path into it (a JSON pointer).
pub(crate) fn text(v: &Json, key: &str) -> Option<String> {
    field(v, key)
        .and_then(Json::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// A field's count (as [`text`] finds it); 0 when absent or negative.
pub(crate) fn int(v: &Json, key: &str) -> i64 {
    field(v, key).and_then(Json::as_i64).unwrap_or(0).max(0)
}

fn field<'a>(v: &'a Json, key: &str) -> Option<&'a Json> {
    if key.starts_with('/') {
        v.pointer(key)
    } else {
        v.get(key)
    }
}

/// What a session's lines said about it.
#[derive(Debug, Default, Clone, PartialEq)]
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

/// What every row a reader makes of one session shares: its agent,
/// session, the agent's version and the rows' context.
pub struct Origin<'a> {
    pub agent: &'static str,
    pub session: Uuid,
    pub version: &'a str,
    pub context: &'a str,
}

impl Origin<'_> {
    /// An event whose id derives from the agent's own `key` for `kind`
    /// ([`crate::ids`]).
    pub fn event(
        &self,
        kind: &str,
        key: &str,
        event_type: &str,
        ts: SystemTime,
        data: &Json,
    ) -> pb::AgentEvent {
        pb::AgentEvent {
            id: crate::ids::agent_row(self.agent, kind, key).to_string(),
            timestamp: Some(crate::time::to_timestamp(ts)),
            event_type: event_type.into(),
            agent_id: self.agent.into(),
            agent_version: self.version.into(),
            session_id: self.session.to_string(),
            context_json: self.context.into(),
            data_json: data.to_string(),
            ..Default::default()
        }
    }

    /// One model call, keyed by the agent's id of it: tokens as everywhere
    /// here (input includes the cache) and the cost, with its source.
    pub fn request(
        &self,
        key: &str,
        ts: SystemTime,
        model: &str,
        (tokens, cost): (crate::price::Tokens, Option<f64>),
        mut data: Json,
    ) -> pb::AgentEvent {
        if data.get("cost_source").is_none() {
            data["cost_source"] = if cost.is_some() {
                "estimated"
            } else {
                "unpriced"
            }
            .into();
        }
        pb::AgentEvent {
            input_tokens: Some(tokens.input),
            output_tokens: Some(tokens.output),
            cached_tokens: Some(tokens.cached),
            cost_usd: cost,
            model: Some(model.to_owned()),
            ..self.event("request", key, "llm_request", ts, &data)
        }
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
    /// Each session as last handed on by [`Read::drain`].
    announced: HashMap<Uuid, Session>,
}

/// Rows read and not yet sent, with the sessions they need.
#[derive(Default)]
pub struct Chunk {
    pub events: Vec<pb::AgentEvent>,
    pub messages: Vec<Said>,
    /// The sessions first seen, or seen to change, since the last chunk
    /// (their start and end widen as more lines are read; the service's
    /// upsert only widens them too).
    pub sessions: BTreeMap<Uuid, Session>,
    /// Bytes of transcripts read until this chunk, of all.
    pub bytes: u64,
    /// Files read until this chunk.
    pub files: usize,
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
    /// Line `n` (from 0) of `path` as JSON, counted; one that is not JSON
    /// (a line cut by a crash) is reported by file and line and skipped,
    /// and a blank one is no line.
    pub fn line(&mut self, path: &str, n: usize, line: &str) -> Option<Json> {
        self.at = n as u64 + 1;
        if line.trim().is_empty() {
            return None;
        }
        self.lines += 1;
        match serde_json::from_str(line) {
            Ok(v) => Some(v),
            Err(e) => {
                self.problem(format!("{path}:{}: not a JSON line ({e})", n + 1));
                None
            }
        }
    }

    /// The rows read since the last call, and the sessions new or changed
    /// since then: what can be sent now.
    pub fn drain(&mut self) -> Chunk {
        self.event_lines.clear();
        let mut sessions = BTreeMap::new();
        for (id, s) in &self.sessions {
            if self.announced.get(id) != Some(s) {
                self.announced.insert(*id, s.clone());
                sessions.insert(*id, s.clone());
            }
        }
        Chunk {
            events: std::mem::take(&mut self.events),
            messages: std::mem::take(&mut self.messages),
            sessions,
            ..Chunk::default()
        }
    }

    /// Rows read and not yet drained.
    pub fn pending(&self) -> usize {
        self.events.len() + self.messages.len()
    }

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
    let sources: Vec<Source> = [
        Source::ClaudeCode,
        Source::Codex,
        Source::GeminiCli,
        Source::CopilotCli,
    ]
    .into_iter()
    .filter(|s| cfg.sources.is_empty() || cfg.sources.contains(s))
    .collect();
    if cfg.follow {
        let roots: follow::Roots = sources
            .iter()
            .flat_map(|&s| {
                sources::watched(s, &sources::folders(cfg, s))
                    .into_iter()
                    .map(move |r| (s, r))
            })
            .filter(|(_, r)| r.is_dir())
            .collect();
        if roots.is_empty() {
            return Err(ImportError::NothingFound(
                "no agent's folder to follow (~/.claude, ~/.codex, ~/.gemini, ~/.copilot, or the flags')"
                    .into(),
            ));
        }
        let mut sender = Sender::connect(cfg).await?;
        let state = cfg.state.clone().unwrap_or_else(follow::default_state);
        follow::run(&mut sender, &prices, roots, &state).await?;
        return Ok(Summaries(Vec::new()));
    }
    let mut looked = Vec::new();
    let mut found = Vec::new();
    for source in sources {
        let dirs = sources::folders(cfg, source);
        looked.extend(dirs.iter().map(|d| d.display().to_string()));
        let files = sources::files(source, &dirs);
        if !files.is_empty() {
            found.push((source, files));
        }
    }
    if found.is_empty() {
        return Err(ImportError::NothingFound(if looked.is_empty() {
            "no agent's folder (~/.claude, ~/.config/claude, CLAUDE_CONFIG_DIR, ~/.codex, CODEX_HOME, ~/.gemini, ~/.copilot, COPILOT_HOME)"
                .into()
        } else {
            looked.join(", ")
        }));
    }
    let mut sender = Sender::connect(cfg).await?;
    let prices = std::sync::Arc::new(prices);
    let mut out = Vec::new();
    for (source, files) in found {
        out.push(import(&mut sender, source, files, prices.clone()).await?);
    }
    Ok(Summaries(out))
}

/// Reads one source's files on a thread of their own and sends what they
/// hold as it is read: a chunk of rows is on the wire while the next is
/// read, and memory holds a few chunks whatever the history's size.
async fn import(
    sender: &mut Sender<'_>,
    source: Source,
    files: Vec<(PathBuf, u64)>,
    prices: std::sync::Arc<PriceTable>,
) -> Result<Summary, ImportError> {
    let total: u64 = files.iter().map(|(_, len)| len).sum();
    let count = files.len();
    sender.start(source, count, total);
    let chunk_rows = sender.chunk_rows();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Chunk>(2);
    let reader = tokio::task::spawn_blocking(move || {
        let mut read = Read::default();
        let mut bytes = 0;
        for (i, (f, _)) in files.iter().enumerate() {
            let text = sources::text_of(f)?;
            bytes += text.len() as u64;
            sources::read_text(source, f, &text, &prices, &mut read);
            if read.pending() >= chunk_rows || i + 1 == files.len() {
                let chunk = Chunk {
                    bytes,
                    files: i + 1,
                    ..read.drain()
                };
                if tx.blocking_send(chunk).is_err() {
                    // The sender stopped on an error of its own.
                    break;
                }
            }
        }
        Ok::<_, ImportError>(read)
    });
    let mut sent = Ok(());
    while let Some(chunk) = rx.recv().await {
        if let Err(e) = sender.send(chunk).await {
            sent = Err(e);
            break;
        }
    }
    drop(rx);
    let read = reader
        .await
        .map_err(|e| ImportError::Reader(e.to_string()))??;
    sent?;
    sender.finish(&read).await
}
