//! Where each agent keeps its transcripts, and reading them all: the
//! folders (flags, the agents' environment variables, their defaults) and
//! the files in them, handed to each agent's reader.

use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::{ImportConfig, ImportError, Read, Source, claude, codex, copilot, gemini};
use crate::price::PriceTable;

/// The folders of `source`'s transcripts: the flags', else the agent's
/// environment variable's, else its default.
pub(super) fn folders(cfg: &ImportConfig, source: Source) -> Vec<PathBuf> {
    match source {
        Source::ClaudeCode => claude_dirs(cfg),
        Source::Codex => home_of(&cfg.codex_homes, "CODEX_HOME", ".codex", "sessions"),
        Source::GeminiCli => gemini_dirs(cfg),
        Source::CopilotCli => home_of(
            &cfg.copilot_homes,
            "COPILOT_HOME",
            ".copilot",
            "session-state",
        ),
    }
}

/// Every transcript of `source` under `dirs`, oldest first (by the time it
/// was last written, then by path): a history sent in the order it
/// happened reaches the service as flushes of rows close in time, which
/// its look-ups of stored ids and its refreshes of late hours cover with
/// short ranges (docs/import.md, "How fast").
/// Each with its size in bytes.
pub(super) fn files(source: Source, dirs: &[PathBuf]) -> Vec<(PathBuf, u64)> {
    let mut files: Vec<(Option<std::time::SystemTime>, PathBuf, u64)> = listed(source, dirs)
        .into_iter()
        .map(|f| {
            let meta = std::fs::metadata(&f).ok();
            let written = meta.as_ref().and_then(|m| m.modified().ok());
            (written, f, meta.map_or(0, |m| m.len()))
        })
        .collect();
    files.sort();
    files.into_iter().map(|(_, f, len)| (f, len)).collect()
}

/// Every transcript of `source` under `dirs`, in path order.
fn listed(source: Source, dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for root in watched(source, dirs) {
        match source {
            // Only `tmp/<project>/chats/*.jsonl`: the other folders there
            // hold the agent's own logs and checkpoints.
            Source::GeminiCli => {
                let Ok(projects) = std::fs::read_dir(&root) else {
                    continue;
                };
                let mut projects: Vec<PathBuf> = projects.flatten().map(|e| e.path()).collect();
                projects.sort();
                for p in projects {
                    jsonl_files(&p.join("chats"), &mut files);
                }
            }
            // Only `session-state/<session>/events.jsonl`.
            Source::CopilotCli => {
                let mut all = Vec::new();
                jsonl_files(&root, &mut all);
                files.extend(
                    all.into_iter()
                        .filter(|f| f.file_name().is_some_and(|n| n == "events.jsonl")),
                );
            }
            _ => jsonl_files(&root, &mut files),
        }
    }
    files
}

/// Reads `text`, the lines of `path` (all of them, or its complete lines
/// while it is being written), into `read` with `source`'s reader.
pub(super) fn read_text(
    source: Source,
    path: &Path,
    text: &str,
    prices: &PriceTable,
    read: &mut Read,
) {
    let name = path.display().to_string();
    match source {
        Source::ClaudeCode => claude::read(&name, text, session_of_path(path), prices, read),
        Source::Codex => codex::read(&name, text, prices, read),
        Source::GeminiCli => {
            // `tmp/<project>/chats/<file>`: the project's folder names
            // where it ran in `.project_root`.
            let cwd = path
                .parent()
                .and_then(Path::parent)
                .and_then(|p| std::fs::read_to_string(p.join(".project_root")).ok())
                .map(|s| s.trim().to_owned());
            gemini::read(&name, text, cwd.as_deref(), prices, read)
        }
        Source::CopilotCli => {
            // `session-state/<session>/events.jsonl`.
            let session = path
                .parent()
                .and_then(Path::file_name)
                .and_then(|n| Uuid::parse_str(&n.to_string_lossy()).ok());
            copilot::read(&name, text, session, prices, read)
        }
    }
}

/// The folders `--follow` watches for `source` under `dirs`: those its
/// reader reads.
pub(super) fn watched(source: Source, dirs: &[PathBuf]) -> Vec<PathBuf> {
    dirs.iter()
        .flat_map(|d| match source {
            Source::ClaudeCode => {
                let projects = d.join("projects");
                vec![if projects.is_dir() {
                    projects
                } else {
                    d.clone()
                }]
            }
            Source::Codex => vec![d.join("sessions"), d.join("archived_sessions")],
            Source::GeminiCli => vec![d.join("tmp")],
            Source::CopilotCli => vec![d.join("session-state")],
        })
        .collect()
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

/// An agent's home folders: the flag's, else its environment variable's,
/// else `~/<default>`; those holding `sub`.
fn home_of(flag: &[PathBuf], var: &str, default: &str, sub: &str) -> Vec<PathBuf> {
    if !flag.is_empty() {
        return flag.to_vec();
    }
    let home = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_default()
            .join(default)
    });
    [home]
        .into_iter()
        .filter(|d| d.join(sub).is_dir())
        .collect()
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

/// A transcript's text; a file cut inside a character still has its other
/// lines.
pub(super) fn text_of(f: &Path) -> Result<String, ImportError> {
    std::fs::read(f)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .map_err(|source| ImportError::Read {
            path: f.to_owned(),
            source,
        })
}

/// Every `*.jsonl` under `dir`, in a stable order.
pub(super) fn jsonl_files(dir: &Path, out: &mut Vec<PathBuf>) {
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
pub(super) fn session_of_path(p: &Path) -> Option<Uuid> {
    let parent = p.parent()?;
    let name = if parent.file_name().is_some_and(|n| n == "subagents") {
        parent.parent()?.file_name()?.to_string_lossy().into_owned()
    } else {
        p.file_stem()?.to_string_lossy().into_owned()
    };
    Uuid::parse_str(&name).ok()
}
