//! Claude Code's transcripts: `<config dir>/projects/<project>/<session>.jsonl`
//! and its subagents' `<session>/subagents/agent-<id>.jsonl`, one JSON
//! object a line, as Claude Code 2.1.328 writes them (read from the files
//! the real binary wrote in tests/import.rs). Lines of many types sit
//! beside the conversation (attachments, request snapshots, queue
//! operations, `cost-state`); what counts:
//! - `assistant` lines with `message.usage`: one model call per
//!   (`message.id`, `requestId`), the key Claude Code and ccusage dedupe on
//!   (a streamed reply is written a line per content block, each with the
//!   same usage); their `tool_use` blocks and text;
//! - `user` lines: the prompt (text, not a tool result, not a meta line)
//!   and the tool results (`tool_result` blocks, `is_error`).
//!
//! Every id derives from the transcript's own ids, so a file read twice, a
//! resumed session that repeats earlier lines in a new file, or two machines
//! sharing a home store nothing twice.

use std::{collections::BTreeMap, time::SystemTime};

use serde_json::{Value as Json, json};
use uuid::Uuid;

use super::{Origin, Read, Session, int, text};
use crate::ids;
use crate::{
    pb,
    price::{PriceTable, Tokens},
};

/// The agent id rows from Claude Code's transcripts carry, as its OTLP
/// export's do.
pub const AGENT: &str = "claude-code";

/// A model name Claude Code writes on messages it made itself (an
/// interruption, an API error shown to the user): no model call.
const SYNTHETIC: &str = "<synthetic>";

/// A tool call waiting for its result.
struct Call {
    event: pb::AgentEvent,
    started: SystemTime,
}

/// Reads one transcript file's lines into `out`. `path` names the file in
/// problems; `session_of_path` is the session its path names (a subagent's
/// file is its parent's session), used where a line names none.
pub fn read(
    path: &str,
    text: &str,
    session_of_path: Option<Uuid>,
    prices: &PriceTable,
    out: &mut Read,
) {
    let mut calls: BTreeMap<String, Call> = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let Some(v) = out.line(path, n, line) else {
            continue;
        };
        let kind = v.get("type").and_then(Json::as_str).unwrap_or_default();
        if kind != "assistant" && kind != "user" {
            continue;
        }
        let Some(ts) = v
            .get("timestamp")
            .and_then(Json::as_str)
            .and_then(|t| humantime::parse_rfc3339(t).ok())
        else {
            out.problem(format!(
                "{path}:{}: a {kind} line without a timestamp",
                n + 1
            ));
            continue;
        };
        let session = match v.get("sessionId").and_then(Json::as_str) {
            Some(s) => ids::session(AGENT, s),
            None => match session_of_path {
                Some(s) => s,
                None => {
                    out.problem(format!("{path}:{}: a line naming no session", n + 1));
                    continue;
                }
            },
        };
        let info = out.sessions.entry(session).or_insert_with(|| Session {
            agent: AGENT,
            ..Session::default()
        });
        info.saw(ts, &v);
        let message = v.get("message").unwrap_or(&Json::Null);
        match kind {
            "assistant" => assistant(&v, message, ts, session, prices, &mut calls, out),
            _ => user(&v, message, ts, session, &mut calls, out),
        }
    }
    // Calls whose result is not in the file (the session ended first);
    // while following, it may still come.
    if !out.following {
        for (_, call) in calls {
            out.push_event(call.event);
        }
    }
}

/// A text block's message key: its line's uuid (Claude Code writes a line
/// per block, and its OTLP `user_prompt` and `assistant_response` name that
/// uuid as `message.uuid`), with the block's place after the first.
fn block_key(line: &str, i: usize) -> String {
    if i == 0 {
        line.to_owned()
    } else {
        format!("{line}\0{i}")
    }
}

fn assistant(
    line: &Json,
    message: &Json,
    ts: SystemTime,
    session: Uuid,
    prices: &PriceTable,
    calls: &mut BTreeMap<String, Call>,
    out: &mut Read,
) {
    let model = text(message, "model").filter(|m| m != SYNTHETIC);
    let sidechain = line.get("isSidechain").and_then(Json::as_bool) == Some(true);
    let mut context = json!({ "source": "import", "is_sidechain": sidechain });
    for (key, to) in [
        ("agentId", "agent_id"),
        ("cwd", "cwd"),
        ("gitBranch", "git_branch"),
    ] {
        if let Some(t) = text(line, key) {
            context[to] = t.into();
        }
    }
    let version = text(line, "version").unwrap_or_default();
    let context = context.to_string();
    let origin = Origin {
        agent: AGENT,
        session,
        version: &version,
        context: &context,
    };
    if let (Some(model), Some(usage)) = (&model, message.get("usage")) {
        let message_id = text(message, "id").unwrap_or_default();
        let request_id = text(line, "requestId").unwrap_or_default();
        let fresh = int(usage, "input_tokens");
        let read = int(usage, "cache_read_input_tokens");
        let written = int(usage, "cache_creation_input_tokens");
        let output = int(usage, "output_tokens");
        // One definition throughout: input includes the cache.
        let tokens = Tokens {
            input: fresh + read + written,
            output,
            cached: read,
            written,
        };
        let mut data = json!({
            "message_id": message_id, "request_id": request_id,
            "cache_creation_tokens": written,
        });
        let cost = match line.get("costUSD").and_then(Json::as_f64) {
            Some(usd) => {
                data["cost_source"] = "agent".into();
                Some(usd)
            }
            None => {
                let usd = prices.priced(model, tokens);
                data["cost_source"] = if usd.is_some() {
                    "estimated"
                } else {
                    "unpriced"
                }
                .into();
                usd
            }
        };
        // The request id names one model call (its OTLP `api_request`
        // names the same: the two edges make one row); a line without it
        // (older versions) by its message id, else its own uuid.
        let key = [&request_id, &message_id]
            .into_iter()
            .find(|k| !k.is_empty())
            .cloned()
            .or_else(|| text(line, "uuid"))
            .unwrap_or_default();
        out.push_event(origin.request(&key, ts, model, (tokens, cost), data));
    }
    let blocks = message
        .get("content")
        .and_then(Json::as_array)
        .cloned()
        .unwrap_or_default();
    let line_id = text(line, "uuid").unwrap_or_default();
    for (i, block) in blocks.iter().enumerate() {
        match block.get("type").and_then(Json::as_str) {
            Some("text") => {
                if let Some(t) = text(block, "text") {
                    out.push_message(session, "assistant", t, ts, &block_key(&line_id, i));
                }
            }
            Some("tool_use") => {
                let Some(id) = text(block, "id") else {
                    continue;
                };
                let name = text(block, "name").unwrap_or_default();
                let mut data = json!({ "tool_name": name, "tool_use_id": id });
                if let Some(path) = block
                    .pointer("/input/file_path")
                    .or_else(|| block.pointer("/input/notebook_path"))
                    .and_then(Json::as_str)
                {
                    data["path"] = path.into();
                }
                calls.entry(id.clone()).or_insert(Call {
                    started: ts,
                    event: origin.event("tool", &id, "tool_use", ts, &data),
                });
            }
            _ => {}
        }
    }
}

fn user(
    line: &Json,
    message: &Json,
    ts: SystemTime,
    session: Uuid,
    calls: &mut BTreeMap<String, Call>,
    out: &mut Read,
) {
    let line_id = text(line, "uuid").unwrap_or_default();
    let meta = line.get("isMeta").and_then(Json::as_bool) == Some(true);
    match message.get("content") {
        Some(Json::String(prompt)) if !meta && !prompt.trim().is_empty() => {
            out.push_message(session, "user", prompt.clone(), ts, &line_id);
        }
        Some(Json::Array(blocks)) => {
            for (i, block) in blocks.iter().enumerate() {
                match block.get("type").and_then(Json::as_str) {
                    Some("tool_result") => {
                        let Some(id) = text(block, "tool_use_id") else {
                            continue;
                        };
                        if let Some(mut call) = calls.remove(&id) {
                            let failed =
                                block.get("is_error").and_then(Json::as_bool) == Some(true);
                            let mut data: Json =
                                serde_json::from_str(&call.event.data_json).unwrap_or_default();
                            data["success"] = (!failed).into();
                            call.event.data_json = data.to_string();
                            call.event.duration_ms = ts
                                .duration_since(call.started)
                                .ok()
                                .map(|d| d.as_millis() as i64);
                            out.push_event(call.event);
                        }
                    }
                    Some("text") if !meta => {
                        if let Some(t) = text(block, "text") {
                            out.push_message(session, "user", t, ts, &block_key(&line_id, i));
                        }
                    }
                    _ => {}
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines shaped as Claude Code 2.1.328 writes them (tests/import.rs
    /// reads the real ones): a prompt, a reply streamed as two lines of
    /// one message (a text block, then a tool use), the tool's result, a
    /// line of another type, and the final reply.
    fn transcript(session: &str) -> String {
        let common = format!(
            r#""sessionId":"{session}","cwd":"/work/acme/api","gitBranch":"main","version":"2.1.328","isSidechain":false"#
        );
        let usage = r#"{"input_tokens":1200,"cache_creation_input_tokens":100,"cache_read_input_tokens":300,"output_tokens":40,"cache_creation":{"ephemeral_5m_input_tokens":100,"ephemeral_1h_input_tokens":0}}"#;
        [
            format!(r#"{{"type":"user","uuid":"u1","timestamp":"2026-12-07T10:00:00.000Z","message":{{"role":"user","content":"fix the test"}},{common}}}"#),
            format!(r#"{{"type":"assistant","uuid":"a1","timestamp":"2026-12-07T10:00:01.000Z","requestId":"req_1","message":{{"id":"msg_1","model":"claude-sonnet-4-5","content":[{{"type":"text","text":"Running it."}}],"usage":{usage}}},{common}}}"#),
            format!(r#"{{"type":"assistant","uuid":"a2","timestamp":"2026-12-07T10:00:01.500Z","requestId":"req_1","message":{{"id":"msg_1","model":"claude-sonnet-4-5","content":[{{"type":"tool_use","id":"toolu_1","name":"Edit","input":{{"file_path":"src/lib.rs"}}}}],"usage":{usage}}},{common}}}"#),
            format!(r#"{{"type":"attachment","uuid":"x1","timestamp":"2026-12-07T10:00:02.000Z",{common}}}"#),
            format!(r#"{{"type":"user","uuid":"u2","timestamp":"2026-12-07T10:00:03.250Z","message":{{"role":"user","content":[{{"type":"tool_result","tool_use_id":"toolu_1","is_error":true,"content":"no such file"}}]}},{common}}}"#),
            format!(r#"{{"type":"assistant","uuid":"a3","timestamp":"2026-12-07T10:00:04.000Z","requestId":"req_2","message":{{"id":"msg_2","model":"<synthetic>","content":[{{"type":"text","text":"API Error"}}],"usage":{{"input_tokens":0,"output_tokens":0}}}},{common}}}"#),
        ]
        .join("\n")
    }

    const SESSION: &str = "6f1c2a7e-0d3b-4c1e-9a51-3b8e2f7d9c01";

    fn read_one(text: &str) -> Read {
        let mut out = Read::default();
        read("t.jsonl", text, None, &PriceTable::default(), &mut out);
        out
    }

    #[test]
    fn one_request_per_message_and_request_id_with_the_cache_in_its_input() {
        let out = read_one(&transcript(SESSION));
        let requests: Vec<&pb::AgentEvent> = out
            .events
            .iter()
            .filter(|e| e.event_type == "llm_request")
            .collect();
        assert_eq!(
            requests.len(),
            1,
            "a streamed reply is one call; <synthetic> is none"
        );
        let r = requests[0];
        assert_eq!(
            (r.input_tokens, r.output_tokens, r.cached_tokens),
            (Some(1600), Some(40), Some(300))
        );
        assert_eq!(r.session_id, SESSION, "the agent's own session id");
        assert_eq!(out.repeats, 1, "the second line of msg_1");
        let tool = out
            .events
            .iter()
            .find(|e| e.event_type == "tool_use")
            .unwrap();
        let data: Json = serde_json::from_str(&tool.data_json).unwrap();
        assert_eq!(
            (&data["tool_name"], &data["success"], &data["path"]),
            (&json!("Edit"), &json!(false), &json!("src/lib.rs"))
        );
        assert_eq!(tool.duration_ms, Some(1750));
        let said: Vec<(&str, &str)> = out
            .messages
            .iter()
            .map(|m| (m.role, m.content.as_str()))
            .collect();
        assert_eq!(
            said,
            [
                ("user", "fix the test"),
                ("assistant", "Running it."),
                ("assistant", "API Error")
            ]
        );
        let s = &out.sessions[&Uuid::parse_str(SESSION).unwrap()];
        assert_eq!(
            (s.cwd.as_deref(), s.branch.as_deref(), s.version.as_deref()),
            (Some("/work/acme/api"), Some("main"), Some("2.1.328"))
        );
    }

    #[test]
    fn a_file_read_twice_or_resumed_elsewhere_makes_the_same_ids() {
        let text = transcript(SESSION);
        let mut out = read_one(&text);
        let first: Vec<String> = out.events.iter().map(|e| e.id.clone()).collect();
        // The same lines again (a resumed session copies them into a new
        // file): every one a repeat.
        read(
            "resumed.jsonl",
            &text,
            None,
            &PriceTable::default(),
            &mut out,
        );
        assert_eq!(out.events.len(), first.len());
        let again = read_one(&text);
        assert_eq!(
            again
                .events
                .iter()
                .map(|e| e.id.clone())
                .collect::<Vec<_>>(),
            first
        );
    }

    #[test]
    fn a_bad_line_is_reported_with_its_file_and_number_and_the_rest_is_read() {
        let mut text = transcript(SESSION);
        text.insert_str(0, "{\"type\":\"user\",\n");
        text.push_str("\n{\"type\":\"assistant\",\"message\":{\"id\":\"msg_cut");
        let out = read_one(&text);
        assert_eq!(out.skipped, 2);
        assert!(
            out.problems[0].starts_with("t.jsonl:1: not a JSON line"),
            "{:?}",
            out.problems
        );
        assert!(
            out.problems[1].starts_with("t.jsonl:8: not a JSON line"),
            "{:?}",
            out.problems
        );
        assert_eq!(
            out.events
                .iter()
                .filter(|e| e.event_type == "llm_request")
                .count(),
            1
        );
    }
}
