//! `import --follow`: stays running beside the agents, sends each
//! transcript's new lines within a moment of their writing, and remembers
//! per file how far it has sent in a state file, so that a restart (or a
//! reboot) resumes without resending or losing a line. The filesystem
//! tells it what changed (inotify on Linux, FSEvents on macOS, through the
//! `notify` crate): idle, it reads nothing.
//!
//! A file is read whole when it changes (its lines before the position
//! give the context of the new ones: Codex's session and model, a tool
//! call's start) and only its rows from complete lines past the position
//! are sent; a line still being written waits for its end. A file whose
//! inode changed or that shrank was replaced or truncated: it is read from
//! its start (rows sent before are recognised by id). A deleted file is
//! forgotten.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    time::Duration,
};

use notify::{RecursiveMode, Watcher};
use serde::{Deserialize, Serialize};

use super::{ImportError, Read, Sender, Source, sources};
use crate::price::PriceTable;

/// How long changes are gathered before they are read: an agent writes a
/// reply as several lines in a moment.
const SETTLE: Duration = Duration::from_millis(300);

/// Where each file has been sent up to.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct State {
    pub files: BTreeMap<PathBuf, Position>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Position {
    /// The file's inode: another means the file was replaced.
    pub inode: u64,
    /// Bytes of complete lines sent; a file shorter than this was truncated.
    pub bytes: u64,
    /// Complete lines sent.
    pub lines: u64,
}

impl State {
    pub fn load(path: &Path) -> Self {
        std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Written to a new file and renamed over the old, so that a crash
    /// leaves one or the other whole.
    pub fn save(&self, path: &Path) -> Result<(), ImportError> {
        let err = |source| ImportError::Read {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(self).expect("state is JSON")).map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)
    }
}

/// The state file's default place: `$XDG_STATE_HOME/agent-telemetry/`,
/// else `~/.local/state/agent-telemetry/`.
pub fn default_state() -> PathBuf {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default()
                .join(".local/state")
        });
    base.join("agent-telemetry/import-state.json")
}

/// The folders followed, each with its agent.
pub type Roots = Vec<(Source, PathBuf)>;

/// Which agent wrote `file`, by the root it is under.
fn source_of(roots: &Roots, file: &Path) -> Option<Source> {
    roots
        .iter()
        .find(|(_, root)| file.starts_with(root))
        .map(|(s, _)| *s)
}

/// Sends what `file` holds past its position; returns a line to print
/// when something was sent.
async fn catch_up(
    sender: &mut Sender<'_>,
    prices: &PriceTable,
    roots: &Roots,
    state: &mut State,
    file: &Path,
) -> Result<Option<String>, ImportError> {
    use std::os::unix::fs::MetadataExt;
    let Some(source) = source_of(roots, file) else {
        return Ok(None);
    };
    let Ok(meta) = std::fs::metadata(file) else {
        // Deleted: nothing more to read from it.
        state.files.remove(file);
        return Ok(None);
    };
    let mut at = state.files.get(file).copied().unwrap_or_default();
    if at.inode != meta.ino() || meta.len() < at.bytes {
        at = Position {
            inode: meta.ino(),
            ..Position::default()
        };
    }
    let bytes = std::fs::read(file).map_err(|source| ImportError::Read {
        path: file.to_owned(),
        source,
    })?;
    // Complete lines only: the last one may still be being written.
    let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let text = String::from_utf8_lossy(&bytes[..complete]);
    let lines = text.lines().count() as u64;
    if lines <= at.lines {
        return Ok(None);
    }
    let mut read = Read {
        following: true,
        ..Read::default()
    };
    sources::read_text(source, file, &text, prices, &mut read);
    read.keep_after(at.lines);
    // Problems of lines sent before were reported then.
    let new_lines = lines - at.lines;
    sender.start(source, 1, 0);
    sender.send(read.drain()).await?;
    let summary = sender.finish(&read).await?;
    state.files.insert(
        file.to_owned(),
        Position {
            inode: at.inode,
            bytes: complete as u64,
            lines,
        },
    );
    if summary.sent == 0 {
        return Ok(None);
    }
    Ok(Some(format!(
        "{}: {new_lines} new lines: {} rows sent, {} stored, {} already stored, {} rejected",
        file.display(),
        summary.sent,
        summary.stored,
        summary.duplicates,
        summary.rejected
    )))
}

/// Every transcript under the roots now.
fn all_files(roots: &Roots) -> BTreeSet<PathBuf> {
    let mut out = Vec::new();
    for (_, root) in roots {
        sources::jsonl_files(root, &mut out);
    }
    out.into_iter().collect()
}

/// Follows the roots until the process is stopped (or `stop` resolves).
pub(super) async fn run(
    sender: &mut Sender<'_>,
    prices: &PriceTable,
    roots: Roots,
    state_path: &Path,
) -> Result<(), ImportError> {
    let mut state = State::load(state_path);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Reading a file is an event too (inotify's open and close): only
        // what changes a file's lines wakes the loop, or reading what
        // changed would wake it again, forever.
        if let Some(event) = event
            .ok()
            .filter(|e| !e.kind.is_access() && !e.kind.is_other())
        {
            for p in event.paths {
                let _ = tx.send(p);
            }
        }
    })
    .map_err(|e| ImportError::Follow(e.to_string()))?;
    for (_, root) in &roots {
        watcher
            .watch(root, RecursiveMode::Recursive)
            .map_err(|e| ImportError::Follow(format!("{}: {e}", root.display())))?;
        println!("following {}", root.display());
    }
    // What was written while nothing followed.
    let mut pending = all_files(&roots);
    // Positions of files no longer there are forgotten.
    state.files.retain(|p, _| p.exists());
    let mut saved = std::time::Instant::now();
    loop {
        for file in std::mem::take(&mut pending) {
            if file.extension().is_none_or(|e| e != "jsonl") {
                continue;
            }
            let sent = catch_up(sender, prices, &roots, &mut state, &file).await?;
            // Soon: a restart should not send these rows again. At most
            // once a second, as a catch-up over thousands of files would
            // write the whole state once per file (what a crash in
            // between sends again is recognised by id, and stored once).
            if saved.elapsed() >= Duration::from_secs(1) {
                state.save(state_path)?;
                saved = std::time::Instant::now();
            }
            if let Some(line) = sent {
                println!("{line}");
            }
        }
        state.save(state_path)?;
        saved = std::time::Instant::now();
        // Wait for a change, then gather the others of the same moment.
        let Some(first) = rx.recv().await else {
            return Ok(());
        };
        pending.insert(first);
        tokio::time::sleep(SETTLE).await;
        while let Ok(p) = rx.try_recv() {
            pending.insert(p);
        }
    }
}
