//! The content policy (`--content-policy FILE`): how much of what people
//! wrote and what files hold is stored, per project and by default. Chat
//! content (and the prompt and reply texts OTLP exporters send, which
//! become chat messages) follows the `chat` mode; file contents inside an
//! event's `data` (`content`, `old_string`, `diff`, …) follow the `files`
//! mode; prompt texts inside `data` follow `chat`. A mode stores the text
//! in full, truncated to N bytes, as its SHA-256, or not at all.
//!
//! Intake applies it to each decoded row after redaction and before
//! anything is spooled, validated or stored, so the spool holds no more
//! than the database will. Every mode is idempotent: a spooled row replayed
//! through it again is stored as it was spooled. A chat message whose
//! session's project is not known when it is spooled (the database down,
//! the session announced before a restart) gets the strictest mode any
//! project has: never more than its project allows, sometimes less.
//!
//! docs/reliability.md, "Content policy".

mod json;
#[cfg(test)]
mod tests;

use std::{collections::HashMap, path::Path};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::{config::ProjectsConfig, db::dims::ProjectName, pb};

/// What a hashed text starts with; the rest is 64 hex digits.
pub const HASH_PREFIX: &str = "sha256:";

/// Keys of `data` whose values are prompt or reply texts (as OTLP's GenAI
/// and OpenInference conventions and the agents' own events name them):
/// they follow the `chat` mode. The OTLP mapping makes chat messages of the
/// same keys.
pub const PROMPT_KEYS: &[&str] = &[
    // The first nine are the OTLP attributes that become chat messages
    // (or, when the agent sent a placeholder, nothing).
    "prompt",
    "prompt_text",
    "response",
    "response_text",
    "gen_ai.input.messages",
    "gen_ai.output.messages",
    "input.value",
    "output.value",
    // Gemini CLI's whole request history, on every request.
    "request_text",
    "messages",
    "completion",
];

/// The OTLP attributes whose texts the mapping makes chat messages of.
pub const OTLP_TEXT_ATTRIBUTES: &[&str] = PROMPT_KEYS.split_at(9).0;

/// Keys of `data` whose values are a file's contents or a change to them
/// (Claude Code's Write and Edit tool inputs, diffs and patches): they
/// follow the `files` mode.
pub const FILE_CONTENT_KEYS: &[&str] = &[
    "content",
    "contents",
    "file_content",
    "file_contents",
    "old_string",
    "new_string",
    "old_str",
    "new_str",
    "old_content",
    "new_content",
    "diff",
    "patch",
    "edits",
];

/// How much of a text is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Full,
    /// The first N bytes (cut at a character boundary).
    Truncate(usize),
    /// `sha256:<hex>` of the text: tells equal texts apart, shows none.
    Hash,
    /// Nothing: an empty chat content, a `null` in `data`.
    None,
}

impl Mode {
    /// Higher stores less.
    fn strictness(self) -> (u8, usize) {
        match self {
            Mode::Full => (0, 0),
            // A shorter cut is stricter.
            Mode::Truncate(n) => (1, usize::MAX - n),
            Mode::Hash => (2, 0),
            Mode::None => (3, 0),
        }
    }

    fn stricter(self, other: Mode) -> Mode {
        if other.strictness() > self.strictness() {
            other
        } else {
            self
        }
    }

    /// The label of `agent_telemetry_content_policy_total` and the
    /// `content_policy` a changed chat message's metadata records.
    pub fn label(self) -> &'static str {
        match self {
            Mode::Full => "full",
            Mode::Truncate(_) => "truncated",
            Mode::Hash => "hashed",
            Mode::None => "not_stored",
        }
    }

    /// Every label but `full`, for the counters zeroed at start.
    pub const CHANGING_LABELS: [&'static str; 3] = ["truncated", "hashed", "not_stored"];

    /// `text` as this mode stores it, or None when it stays as it is
    /// (already within the limit, already a hash, already empty).
    pub fn apply(self, text: &str) -> Option<String> {
        match self {
            Mode::Full => None,
            Mode::Truncate(n) if text.len() <= n => None,
            Mode::Truncate(n) => Some(text[..floor_char_boundary(text, n)].to_owned()),
            Mode::Hash if is_hash(text) => None,
            Mode::Hash => Some(hash(text)),
            Mode::None if text.is_empty() => None,
            Mode::None => Some(String::new()),
        }
    }
}

/// The largest index ≤ `n` that starts a character.
fn floor_char_boundary(s: &str, n: usize) -> usize {
    let mut i = n.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

pub fn hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    let mut out = String::with_capacity(HASH_PREFIX.len() + 64);
    out.push_str(HASH_PREFIX);
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

fn is_hash(text: &str) -> bool {
    text.strip_prefix(HASH_PREFIX)
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// One project's (or the default) modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub chat: Mode,
    pub files: Mode,
}

impl Policy {
    pub const FULL: Policy = Policy {
        chat: Mode::Full,
        files: Mode::Full,
    };

    fn stricter(self, other: Policy) -> Policy {
        Policy {
            chat: self.chat.stricter(other.chat),
            files: self.files.stricter(other.files),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("content policy {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("content policy {path}: {source}")]
    Parse {
        path: String,
        source: Box<toml::de::Error>,
    },
    #[error("content policy {path}: {at}: {reason}")]
    Invalid {
        path: String,
        at: String,
        reason: String,
    },
}

/// The file (TOML):
///
/// ```toml
/// [default]                  # every project not named below
/// chat = "full"              # full | truncate | hash | none
/// files = "truncate"
/// truncate_bytes = 2048      # what "truncate" keeps (default 1024)
///
/// [[project]]
/// name = "github.com/acme/payments"  # any form clients send it in
/// chat = "hash"
/// files = "none"
///
/// [keys]                     # optional: replaces the built-in key lists
/// chat = ["prompt"]
/// files = ["content", "diff"]
/// ```
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    #[serde(default)]
    pub default: Option<FilePolicy>,
    #[serde(default)]
    pub project: Vec<FilePolicy>,
    #[serde(default)]
    pub keys: Option<FileKeys>,
}

/// `[default]` or one `[[project]]`: only a project has a name.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePolicy {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub chat: Option<FileMode>,
    #[serde(default)]
    pub files: Option<FileMode>,
    #[serde(default)]
    pub truncate_bytes: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileKeys {
    #[serde(default)]
    pub chat: Option<Vec<String>>,
    #[serde(default)]
    pub files: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileMode {
    Full,
    Truncate,
    Hash,
    None,
}

/// What "truncate" keeps when the file does not say.
pub const DEFAULT_TRUNCATE_BYTES: usize = 1024;

/// The policy in force.
#[derive(Debug)]
pub struct ContentPolicy {
    default: Policy,
    /// By project identity.
    projects: HashMap<String, Policy>,
    /// The strictest mode of all: for a message whose project is unknown.
    strictest: Policy,
    chat_keys: Vec<String>,
    file_keys: Vec<String>,
    /// The keys as they appear in JSON text, quoted.
    chat_quoted: Vec<String>,
    file_quoted: Vec<String>,
    projects_cfg: ProjectsConfig,
}

impl ContentPolicy {
    /// From `--content-policy`: None (everything stored in full, at no
    /// cost) without a file.
    pub fn configured(
        path: Option<&Path>,
        projects_cfg: &ProjectsConfig,
        max_content_bytes: usize,
    ) -> Result<Option<Self>, PolicyError> {
        let Some(path) = path else {
            return Ok(None);
        };
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: shown.clone(),
            source,
        })?;
        let file: PolicyFile = toml::from_str(&text).map_err(|e| PolicyError::Parse {
            path: shown.clone(),
            source: Box::new(e),
        })?;
        Self::new(&shown, &file, projects_cfg, max_content_bytes).map(Some)
    }

    pub fn new(
        path: &str,
        file: &PolicyFile,
        projects_cfg: &ProjectsConfig,
        max_content_bytes: usize,
    ) -> Result<Self, PolicyError> {
        let invalid = |at: String, reason: String| PolicyError::Invalid {
            path: path.to_owned(),
            at,
            reason,
        };
        let default_bytes = file.default.as_ref().and_then(|d| d.truncate_bytes);
        let policy = |at: &str,
                      chat: Option<FileMode>,
                      files: Option<FileMode>,
                      bytes: Option<usize>,
                      base: Policy|
         -> Result<Policy, PolicyError> {
            // A project's "truncate" keeps what the default's does unless
            // it says otherwise.
            let given = bytes.or(default_bytes);
            let n = given.unwrap_or(DEFAULT_TRUNCATE_BYTES.min(max_content_bytes));
            if given.is_some() && (n == 0 || n > max_content_bytes) {
                return Err(invalid(
                    at.to_owned(),
                    format!(
                        "truncate_bytes = {n}: must be 1 to {max_content_bytes} (--max-content-bytes); \"none\" stores nothing"
                    ),
                ));
            }
            let mode = |m: Option<FileMode>, base: Mode| match m {
                None => match (base, bytes) {
                    // A project that sets only the cut inherits the mode.
                    (Mode::Truncate(_), Some(n)) => Mode::Truncate(n),
                    (b, _) => b,
                },
                Some(FileMode::Full) => Mode::Full,
                Some(FileMode::Truncate) => Mode::Truncate(n),
                Some(FileMode::Hash) => Mode::Hash,
                Some(FileMode::None) => Mode::None,
            };
            Ok(Policy {
                chat: mode(chat, base.chat),
                files: mode(files, base.files),
            })
        };
        let default = match &file.default {
            None => Policy::FULL,
            Some(d) if d.name.is_some() => {
                return Err(invalid(
                    "[default]".into(),
                    "has a name: name the project in a [[project]] of its own".into(),
                ));
            }
            Some(d) => policy("[default]", d.chat, d.files, d.truncate_bytes, Policy::FULL)?,
        };
        let mut projects = HashMap::new();
        let mut strictest = default;
        for (i, p) in file.project.iter().enumerate() {
            let Some(given) = &p.name else {
                return Err(invalid(
                    format!("[[project]] {}", i + 1),
                    "has no name".into(),
                ));
            };
            let at = format!("[[project]] {} ({given:?})", i + 1);
            let name = ProjectName::parse(given, projects_cfg)
                .map_err(|reason| invalid(at.clone(), format!("name: {reason}")))?;
            let pol = policy(&at, p.chat, p.files, p.truncate_bytes, default)?;
            if projects.insert(name.identity.clone(), pol).is_some() {
                return Err(invalid(
                    at,
                    format!("project {} is named twice", name.identity),
                ));
            }
            strictest = strictest.stricter(pol);
        }
        let keys = |given: Option<&Vec<String>>, builtin: &[&str]| -> Vec<String> {
            match given {
                Some(k) => k.clone(),
                None => builtin.iter().map(|k| (*k).to_owned()).collect(),
            }
        };
        let given = file.keys.as_ref();
        let chat_keys = keys(given.and_then(|k| k.chat.as_ref()), PROMPT_KEYS);
        let file_keys = keys(given.and_then(|k| k.files.as_ref()), FILE_CONTENT_KEYS);
        let quoted = |keys: &[String]| keys.iter().map(|k| format!("\"{k}\"")).collect();
        Ok(Self {
            default,
            projects,
            strictest,
            chat_quoted: quoted(&chat_keys),
            file_quoted: quoted(&file_keys),
            chat_keys,
            file_keys,
            projects_cfg: projects_cfg.clone(),
        })
    }

    /// How many projects have their own policy.
    pub fn project_count(&self) -> usize {
        self.projects.len()
    }

    pub fn default_policy(&self) -> Policy {
        self.default
    }

    pub fn strictest(&self) -> Policy {
        self.strictest
    }

    /// The policy of a project by its identity (as stored: a `#<id>` an
    /// older duplicate got is not part of it).
    pub fn for_identity(&self, identity: &str) -> Policy {
        let identity = identity.split_once('#').map_or(identity, |(i, _)| i);
        self.projects.get(identity).copied().unwrap_or(self.default)
    }

    /// The policy of a project as a client names it; a name that does not
    /// parse (its row is refused later) gets the strictest.
    pub fn for_name(&self, name: &str) -> Policy {
        match ProjectName::parse(name, &self.projects_cfg) {
            Ok(p) => self.for_identity(&p.identity),
            Err(_) => self.strictest,
        }
    }

    /// An event's `data` under `p`: what changed, by mode.
    pub fn event(&self, e: &mut pb::AgentEvent, p: Policy, changes: &mut Changes) {
        if p == Policy::FULL || e.data_json.is_empty() {
            return;
        }
        let mode_of = |key: &str| {
            if p.files != Mode::Full && self.file_keys.iter().any(|k| k == key) {
                Some(p.files)
            } else if p.chat != Mode::Full && self.chat_keys.iter().any(|k| k == key) {
                Some(p.chat)
            } else {
                None
            }
        };
        // Most events hold none of the keys: a substring test of each
        // quoted key rules them out before any walk.
        let named = |quoted: &[String], m: Mode| {
            m != Mode::Full && quoted.iter().any(|k| e.data_json.contains(k.as_str()))
        };
        if !named(&self.file_quoted, p.files) && !named(&self.chat_quoted, p.chat) {
            return;
        }
        if let Some(new) = json::apply(&e.data_json, mode_of, changes) {
            e.data_json = new;
        }
    }

    /// A chat message's content (and search text) under `mode`; its
    /// metadata records what was done.
    pub fn message(m: &mut pb::ChatMessage, mode: Mode, changes: &mut Changes) {
        let Some(content) = mode.apply(&m.content) else {
            return;
        };
        m.content = content;
        m.search_content = match (mode, m.search_content.take()) {
            (Mode::Truncate(_), Some(s)) => Some(mode.apply(&s).unwrap_or(s)),
            _ => None,
        };
        mark(&mut m.metadata_json, mode);
        changes.add(mode);
    }
}

/// Adds `"content_policy": "<label>"` to a JSON object's text unless it
/// has one (a replayed row has it already). A text that is not an object
/// is left for validation to refuse.
fn mark(metadata: &mut String, mode: Mode) {
    if metadata.contains("\"content_policy\"") {
        return;
    }
    let field = format!("\"content_policy\":\"{}\"", mode.label());
    let trimmed = metadata.trim();
    if trimmed.is_empty() {
        *metadata = format!("{{{field}}}");
        return;
    }
    let Some(rest) = trimmed.strip_prefix('{') else {
        return;
    };
    let empty = rest.trim_start().starts_with('}');
    *metadata = if empty {
        format!("{{{field}}}")
    } else {
        format!("{{{field},{rest}")
    };
}

/// How many texts each mode changed in a batch.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Changes {
    pub truncated: u64,
    pub hashed: u64,
    pub not_stored: u64,
}

impl Changes {
    pub fn add(&mut self, mode: Mode) {
        match mode {
            Mode::Full => {}
            Mode::Truncate(_) => self.truncated += 1,
            Mode::Hash => self.hashed += 1,
            Mode::None => self.not_stored += 1,
        }
    }

    pub fn total(&self) -> u64 {
        self.truncated + self.hashed + self.not_stored
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> {
        [
            ("truncated", self.truncated),
            ("hashed", self.hashed),
            ("not_stored", self.not_stored),
        ]
        .into_iter()
        .filter(|(_, n)| *n > 0)
    }
}
