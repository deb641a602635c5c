//! Gemini CLI's chats: `<~/.gemini>/tmp/<project>/chats/session-*.jsonl`,
//! as Gemini CLI 0.61.0 writes them (read from the files the real binary
//! wrote in tests/import.rs): a header line (`sessionId`, `startTime`,
//! `kind`), then messages (`{id, timestamp, type: "user"|"gemini", content,
//! tokens, model, toolCalls}`) and `$set` patches. A message is appended
//! again under the same id once its tool calls' results arrive, and a
//! `$set` of `messages` rewrites the whole history (after a failed turn,
//! without it): every message is read once, by its id. The folder's
//! `.project_root` names the directory the session ran in.
//!
//! Per `gemini` message with `tokens`: one model call (input includes the
//! cached part; its thoughts are output it generated, as the OTLP edge
//! counts them); its text is the assistant's reply, its `toolCalls` tool
//! uses. The user's text is the prompt (not the `<session_context>` the CLI
//! sends first).

use std::time::SystemTime;

use serde_json::{Value as Json, json};
use uuid::Uuid;

use super::{Origin, Read, Session, int};
use crate::{
    ids, pb,
    price::{PriceTable, Tokens},
};

pub const AGENT: &str = "gemini-cli";

/// The rows of a session: Gemini CLI's chats name no version of it.
fn origin(session: Uuid) -> Origin<'static> {
    Origin {
        agent: AGENT,
        session,
        version: "",
        context: r#"{"source":"import"}"#,
    }
}

fn time(v: &Json) -> Option<SystemTime> {
    v.get("timestamp")
        .and_then(Json::as_str)
        .and_then(|t| humantime::parse_rfc3339(t).ok())
}

pub fn read(path: &str, text: &str, cwd: Option<&str>, prices: &PriceTable, out: &mut Read) {
    let mut session: Option<Uuid> = None;
    for (n, line) in text.lines().enumerate() {
        let Some(v) = out.line(path, n, line) else {
            continue;
        };
        if let Some(id) = v.get("sessionId").and_then(Json::as_str) {
            let s = ids::session(AGENT, id);
            session = Some(s);
            let info = out.sessions.entry(s).or_insert_with(|| Session {
                agent: AGENT,
                ..Session::default()
            });
            if info.cwd.is_none() {
                info.cwd = cwd.map(str::to_owned);
            }
            continue;
        }
        let Some(s) = session else {
            out.problem(format!(
                "{path}:{}: a line before the session's header",
                n + 1
            ));
            continue;
        };
        let messages: Vec<&Json> = match v.pointer("/$set/messages").and_then(Json::as_array) {
            Some(all) => all.iter().collect(),
            None if v.get("type").is_some() => vec![&v],
            None => continue,
        };
        for m in messages {
            message(path, n + 1, m, s, prices, out);
        }
    }
}

fn message(path: &str, line: usize, m: &Json, session: Uuid, prices: &PriceTable, out: &mut Read) {
    let (Some(id), Some(ts)) = (m.get("id").and_then(Json::as_str), time(m)) else {
        out.problem(format!(
            "{path}:{line}: a message without an id or a timestamp"
        ));
        return;
    };
    if let Some(info) = out.sessions.get_mut(&session) {
        info.start = Some(info.start.map_or(ts, |t| t.min(ts)));
        info.end = Some(info.end.map_or(ts, |t| t.max(ts)));
    }
    // Gemini CLI's ids are unique in a session, not across them (its
    // session context message has the same id in every session).
    let key = format!("{session}\0{id}");
    match m.get("type").and_then(Json::as_str) {
        Some("user") => {
            let said: Vec<&str> = m
                .get("content")
                .and_then(Json::as_array)
                .into_iter()
                .flatten()
                .filter_map(|p| p.get("text").and_then(Json::as_str))
                .filter(|t| !t.trim_start().starts_with("<session_context>"))
                .collect();
            if !said.is_empty() {
                out.push_message_of(AGENT, session, "user", said.join("\n"), ts, &key);
            }
        }
        Some("gemini") => {
            let model = m
                .get("model")
                .and_then(Json::as_str)
                .unwrap_or("unknown")
                .to_owned();
            if let Some(t) = m.get("tokens").filter(|t| t.is_object()) {
                let input = int(t, "input");
                let cached = int(t, "cached").min(input);
                let output = int(t, "output") + int(t, "thoughts");
                let tokens = Tokens {
                    input,
                    output,
                    cached,
                    written: 0,
                };
                let cost = prices.priced(&model, tokens);
                let data =
                    json!({ "thoughts_tokens": int(t, "thoughts"), "tool_tokens": int(t, "tool") });
                out.push_event(origin(session).request(&key, ts, &model, (tokens, cost), data));
            }
            if let Some(reply) = m
                .get("content")
                .and_then(Json::as_str)
                .filter(|c| !c.trim().is_empty())
            {
                out.push_message_of(AGENT, session, "assistant", reply.to_owned(), ts, &key);
            }
            for call in m
                .get("toolCalls")
                .and_then(Json::as_array)
                .into_iter()
                .flatten()
            {
                tool(call, session, ts, out);
            }
        }
        _ => {}
    }
}

/// A tool call of a reply, once it has ended (a final status: the message
/// is written again as its calls end, and is read once).
fn tool(call: &Json, session: Uuid, asked: SystemTime, out: &mut Read) {
    let (Some(id), Some(status)) = (
        call.get("id").and_then(Json::as_str),
        call.get("status")
            .and_then(Json::as_str)
            .filter(|s| matches!(*s, "success" | "error" | "cancelled")),
    ) else {
        return;
    };
    let name = call.get("name").and_then(Json::as_str).unwrap_or_default();
    let mut data = json!({ "tool_name": name, "tool_call_id": id, "status": status });
    if matches!(status, "success" | "error") {
        data["success"] = (status == "success").into();
    }
    if let Some(path) = call.pointer("/args/file_path").and_then(Json::as_str) {
        data["path"] = path.into();
    }
    let ended = time(call);
    let key = format!("{session}\0{id}");
    out.push_event(pb::AgentEvent {
        duration_ms: ended
            .and_then(|e| e.duration_since(asked).ok())
            .map(|d| d.as_millis() as i64),
        ..origin(session).event("tool", &key, "tool_use", asked, &data)
    });
}
