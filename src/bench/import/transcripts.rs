//! Claude Code transcripts made for the import benchmark, shaped as
//! Claude Code 2.1.328 writes them (the lines tests/import.rs reads from
//! the real binary): per turn a prompt, a reply streamed as two lines of
//! one message (text, then a tool use), the tool's result with its
//! `toolUseResult` copy, the final reply, and now and then a
//! `file-history-snapshot` line that the importer skips. Text is drawn
//! from a fixed-seed generator, so it neither compresses away nor varies
//! between runs.

use std::{
    io::Write,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use uuid::Uuid;

/// What [`generate`] wrote.
pub struct Made {
    pub bytes: u64,
    pub files: usize,
    pub lines: u64,
}

/// A transcript of [`small_tree`], to which lines are appended.
pub struct File {
    pub path: PathBuf,
    session: Uuid,
    cwd: String,
    /// Model calls the file holds.
    pub requests: usize,
}

const VERSION: &str = "2.1.328";
const MODELS: [&str; 3] = [
    "claude-sonnet-4-5-20250929",
    "claude-opus-4-5-20251101",
    "claude-haiku-4-5-20251001",
];
const WORDS: [&str; 32] = [
    "the", "test", "fails", "because", "parser", "returns", "None", "when", "input", "is", "empty",
    "fix", "handle", "error", "config", "value", "struct", "impl", "fn", "let", "match", "Some",
    "Ok", "Err", "async", "await", "buffer", "flush", "row", "batch", "index", "query",
];
const TOOLS: [&str; 4] = ["Read", "Edit", "Bash", "Grep"];

/// xorshift64*: the same text every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// About `bytes` of words, identifiers and numbers.
    fn text(&mut self, bytes: usize) -> String {
        let mut s = String::with_capacity(bytes + 16);
        while s.len() < bytes {
            match self.below(8) {
                0 => s.push_str(&format!("x{:x}", self.next() >> 40)),
                1 => s.push_str(&format!("{}", self.below(100_000))),
                _ => s.push_str(WORDS[self.below(WORDS.len() as u64) as usize]),
            }
            s.push(if self.below(12) == 0 { '\n' } else { ' ' });
        }
        s
    }

    fn uuid(&mut self) -> Uuid {
        uuid::Builder::from_random_bytes(
            (u128::from(self.next()) << 64 | u128::from(self.next())).to_le_bytes(),
        )
        .into_uuid()
    }
}

fn json_str(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// One session's lines, written by turns.
struct Writer<'a> {
    rng: &'a mut Rng,
    session: Uuid,
    cwd: String,
    model: &'static str,
    out: Vec<u8>,
    lines: u64,
    requests: usize,
    n: u64,
}

impl Writer<'_> {
    fn common(&self, uuid: Uuid, ts: SystemTime) -> String {
        format!(
            r#""parentUuid":null,"isSidechain":false,"userType":"external","cwd":{},"sessionId":"{}","version":"{VERSION}","gitBranch":"main","uuid":"{uuid}","timestamp":"{}""#,
            json_str(&self.cwd),
            self.session,
            rfc3339(ts)
        )
    }

    fn line(&mut self, l: String) {
        self.out.extend_from_slice(l.as_bytes());
        self.out.push(b'\n');
        self.lines += 1;
    }

    fn usage(&mut self) -> String {
        let fresh = 5 + self.rng.below(3000);
        let read = self.rng.below(120_000);
        let written = if self.rng.below(4) == 0 {
            self.rng.below(8000)
        } else {
            0
        };
        let output = 20 + self.rng.below(2000);
        format!(
            r#"{{"input_tokens":{fresh},"cache_creation_input_tokens":{written},"cache_read_input_tokens":{read},"output_tokens":{output},"cache_creation":{{"ephemeral_5m_input_tokens":{written},"ephemeral_1h_input_tokens":0}},"service_tier":"standard"}}"#
        )
    }

    /// An assistant line of message `msg` of request `req`.
    fn assistant(&mut self, ts: SystemTime, msg: &str, req: &str, content: String, usage: &str) {
        let uuid = self.rng.uuid();
        let common = self.common(uuid, ts);
        let model = self.model;
        self.line(format!(
            r#"{{{common},"type":"assistant","requestId":"{req}","message":{{"id":"{msg}","type":"message","role":"assistant","model":"{model}","content":[{content}],"stop_reason":null,"usage":{usage}}}}}"#
        ));
    }

    /// A prompt, a reply with a tool call, its result and the final reply.
    fn turn(&mut self, mut ts: SystemTime, big: bool) {
        self.n += 1;
        let step = Duration::from_millis(2500);
        let uuid = self.rng.uuid();
        let n = 150 + self.rng.below(250) as usize;
        let prompt = self.rng.text(n);
        let common = self.common(uuid, ts);
        self.line(format!(
            r#"{{{common},"type":"user","message":{{"role":"user","content":{}}}}}"#,
            json_str(&prompt)
        ));
        ts += step;
        let (msg, req) = (
            format!("msg_{}", self.rng.uuid().simple()),
            format!("req_{}", self.rng.uuid().simple()),
        );
        let usage = self.usage();
        let n = 200 + self.rng.below(300) as usize;
        let said = self.rng.text(n);
        self.assistant(
            ts,
            &msg,
            &req,
            format!(r#"{{"type":"text","text":{}}}"#, json_str(&said)),
            &usage,
        );
        let tool = TOOLS[self.rng.below(TOOLS.len() as u64) as usize];
        let call = format!("toolu_{}", self.rng.uuid().simple());
        let file = format!(
            "src/{}.rs",
            WORDS[self.rng.below(WORDS.len() as u64) as usize]
        );
        self.assistant(
            ts + Duration::from_millis(400),
            &msg,
            &req,
            format!(r#"{{"type":"tool_use","id":"{call}","name":"{tool}","input":{{"file_path":"{file}"}}}}"#),
            &usage,
        );
        self.requests += 1;
        ts += step;
        let n = if big {
            2500 + self.rng.below(2000) as usize
        } else {
            200
        };
        let result = self.rng.text(n);
        let uuid = self.rng.uuid();
        let common = self.common(uuid, ts);
        let failed = self.rng.below(20) == 0;
        self.line(format!(
            r#"{{{common},"type":"user","message":{{"role":"user","content":[{{"tool_use_id":"{call}","type":"tool_result","content":{r},"is_error":{failed}}}]}},"toolUseResult":{{"type":"text","file":{{"filePath":"{file}","content":{r},"numLines":40,"startLine":1,"totalLines":400}}}}}}"#,
            r = json_str(&result)
        ));
        ts += step;
        let (msg, req) = (
            format!("msg_{}", self.rng.uuid().simple()),
            format!("req_{}", self.rng.uuid().simple()),
        );
        let usage = self.usage();
        let n = 300 + self.rng.below(500) as usize;
        let reply = self.rng.text(n);
        self.assistant(
            ts,
            &msg,
            &req,
            format!(r#"{{"type":"text","text":{}}}"#, json_str(&reply)),
            &usage,
        );
        self.requests += 1;
        if big && self.n.is_multiple_of(5) {
            let uuid = self.rng.uuid();
            let snapshot = self.rng.text(600);
            self.line(format!(
                r#"{{"type":"file-history-snapshot","messageId":"{uuid}","snapshot":{{"messageId":"{uuid}","trackedFileBackups":{{"{file}":{{"backupFileName":{},"version":1,"backupTime":"{}"}}}},"timestamp":"{}"}},"isSnapshotUpdate":false}}"#,
                json_str(&snapshot),
                rfc3339(ts),
                rfc3339(ts)
            ));
        }
    }
}

/// The `k`th session: its project's folder (one of 50, made), and a writer
/// for its lines.
fn session_file<'a>(
    dir: &Path,
    k: usize,
    rng: &'a mut Rng,
) -> std::io::Result<(PathBuf, Writer<'a>)> {
    let project = k % 50;
    let folder = dir
        .join("projects")
        .join(format!("-work-team-repo-{project}"));
    std::fs::create_dir_all(&folder)?;
    let w = Writer {
        session: rng.uuid(),
        rng,
        cwd: format!("/work/team/repo-{project}"),
        model: MODELS[k % 3],
        out: Vec::new(),
        lines: 0,
        requests: 0,
        n: 0,
    };
    Ok((folder, w))
}

/// Bytes per session file: about 40 turns, a long session's worth.
const FILE_BYTES: usize = 400 << 10;
/// Time between turns.
const TURN: Duration = Duration::from_secs(15);

/// About `bytes` of transcripts under `dir/projects/`, over 50 projects,
/// sessions starting evenly over the `spread` before `now` (the last one
/// ends before `now`).
pub fn generate(
    dir: &Path,
    bytes: u64,
    spread: Duration,
    now: SystemTime,
) -> std::io::Result<Made> {
    let files = (bytes as usize).div_ceil(FILE_BYTES).max(1);
    let turns_max = FILE_BYTES / (8 << 10) + 20;
    let room = spread.saturating_sub(TURN * turns_max as u32);
    if room.is_zero() {
        return Err(std::io::Error::other(format!(
            "--spread must be over {:?}: a session's turns must end before now",
            TURN * turns_max as u32
        )));
    }
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut made = Made {
        bytes: 0,
        files,
        lines: 0,
    };
    for k in 0..files {
        let (folder, mut w) = session_file(dir, k, &mut rng)?;
        let start = now - spread + room.mul_f64(k as f64 / files as f64);
        let mut ts = start;
        while w.out.len() < FILE_BYTES && w.n < turns_max as u64 {
            w.turn(ts, true);
            ts += TURN;
        }
        std::fs::write(folder.join(format!("{}.jsonl", w.session)), &w.out)?;
        made.bytes += w.out.len() as u64;
        made.lines += w.lines;
    }
    Ok(made)
}

/// `n` short transcripts (three turns each, ending a minute before `now`)
/// for `import --follow` to watch.
pub fn small_tree(dir: &Path, n: usize, now: SystemTime) -> std::io::Result<Vec<File>> {
    let mut rng = Rng(0x5eed_1234_abcd_0002);
    let mut files = Vec::with_capacity(n);
    for k in 0..n {
        let (folder, mut w) = session_file(dir, k, &mut rng)?;
        for t in 0..3u32 {
            w.turn(now - Duration::from_secs(300) + TURN * t, false);
        }
        let path = folder.join(format!("{}.jsonl", w.session));
        std::fs::write(&path, &w.out)?;
        files.push(File {
            path,
            session: w.session,
            cwd: w.cwd,
            requests: w.requests,
        });
    }
    Ok(files)
}

/// Appends one model call to `f`, as an agent writing it now would; the
/// id its row gets.
pub fn append_request(f: &File, i: usize, ts: SystemTime) -> std::io::Result<Uuid> {
    let req = format!("req_follow_{i}");
    let line = format!(
        r#"{{"parentUuid":null,"isSidechain":false,"userType":"external","cwd":{},"sessionId":"{}","version":"{VERSION}","gitBranch":"main","uuid":"{}","timestamp":"{}","type":"assistant","requestId":"{req}","message":{{"id":"msg_follow_{i}","type":"message","role":"assistant","model":"{}","content":[{{"type":"text","text":"done {i}"}}],"usage":{{"input_tokens":10,"cache_creation_input_tokens":0,"cache_read_input_tokens":100,"output_tokens":5}}}}}}"#,
        json_str(&f.cwd),
        f.session,
        Uuid::new_v4(),
        rfc3339(ts),
        MODELS[0]
    );
    let mut file = std::fs::OpenOptions::new().append(true).open(&f.path)?;
    file.write_all(format!("{line}\n").as_bytes())?;
    Ok(crate::ids::agent_row(
        crate::import::claude::AGENT,
        "request",
        &req,
    ))
}
