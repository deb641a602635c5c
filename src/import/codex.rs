//! Codex's rollouts: `<CODEX_HOME>/sessions/YYYY/MM/DD/rollout-*.jsonl` (and
//! `archived_sessions/`), one JSON object a line (`{timestamp, type,
//! payload}`), as Codex 0.169.0 writes them (read from the files the real
//! binary wrote in tests/import.rs):
//! - `session_meta`: the session's id (the conversation id its OTLP export
//!   names), `cwd`, `cli_version`, `git.repository_url` and `git.branch`;
//! - `turn_context`: the model of the turns that follow;
//! - `token_usage_record`: one model call, by its `response_id`, with its
//!   usage (input including cached, output including reasoning). Rollouts
//!   of versions that do not write it are read from the `token_count`
//!   events instead, as ccusage reads them: `last_token_usage`, a repeat
//!   with an unchanged total or with `info` null counting nothing;
//! - `response_item`s: the user's prompts and the assistant's replies, and
//!   function calls with their outputs (a tool use each);
//! - `event_msg` `task_complete` with an `error`: a failed turn, which
//!   `codex exec` exports no telemetry of at all.

use std::{collections::BTreeMap, time::SystemTime};

use serde_json::{Value as Json, json};
use uuid::Uuid;

use super::{Origin, Read, Session, int, text};
use crate::{
    ids, pb,
    price::{PriceTable, Tokens},
};

pub const AGENT: &str = "codex";

/// Text Codex puts in user messages that the user did not type.
const CONTEXT_PREFIXES: &[&str] = &[
    "<environment_context>",
    "<user_instructions>",
    "<permissions",
];

/// The context of every row read from a rollout.
const CONTEXT: &str = r#"{"source":"import"}"#;

/// What one rollout file is reading through.
struct State {
    session: Option<Uuid>,
    model: Option<String>,
    version: String,
    /// The last cumulative total a `token_count` said (fallback reading).
    total: Option<i64>,
    /// Function calls waiting for their output, by call id.
    calls: BTreeMap<String, (pb::AgentEvent, SystemTime)>,
}

impl State {
    fn origin(&self, session: Uuid) -> Origin<'_> {
        Origin {
            agent: AGENT,
            session,
            version: &self.version,
            context: CONTEXT,
        }
    }
}

pub fn read(path: &str, text_: &str, prices: &PriceTable, out: &mut Read) {
    // Rollouts that record each response's usage are read by it; others
    // by their token_count events.
    let by_records = text_.contains("\"token_usage_record\"");
    let mut st = State {
        session: None,
        model: None,
        version: String::new(),
        total: None,
        calls: BTreeMap::new(),
    };
    for (n, line) in text_.lines().enumerate() {
        let Some(v) = out.line(path, n, line) else {
            continue;
        };
        let Some(ts) = v
            .get("timestamp")
            .and_then(Json::as_str)
            .and_then(|t| humantime::parse_rfc3339(t).ok())
        else {
            out.problem(format!("{path}:{}: a line without a timestamp", n + 1));
            continue;
        };
        let p = v.get("payload").unwrap_or(&Json::Null);
        let kind = v.get("type").and_then(Json::as_str).unwrap_or_default();
        if kind == "session_meta" {
            let Some(id) = text(p, "id") else {
                out.problem(format!("{path}:{}: session_meta without an id", n + 1));
                continue;
            };
            let session = ids::session(AGENT, &id);
            st.session = Some(session);
            st.version = text(p, "cli_version").unwrap_or_default();
            let s = out.sessions.entry(session).or_insert_with(|| Session {
                agent: AGENT,
                ..Session::default()
            });
            s.cwd = s.cwd.take().or_else(|| text(p, "cwd"));
            s.branch = p
                .pointer("/git/branch")
                .and_then(Json::as_str)
                .map(str::to_owned);
            s.repository = p
                .pointer("/git/repository_url")
                .and_then(Json::as_str)
                .map(str::to_owned);
            s.version = Some(st.version.clone()).filter(|v| !v.is_empty());
        }
        let Some(session) = st.session else {
            continue;
        };
        if let Some(s) = out.sessions.get_mut(&session) {
            s.start = Some(s.start.map_or(ts, |t| t.min(ts)));
            s.end = Some(s.end.map_or(ts, |t| t.max(ts)));
        }
        let ptype = p.get("type").and_then(Json::as_str).unwrap_or_default();
        match (kind, ptype) {
            ("turn_context", _) => st.model = text(p, "model").or(st.model.take()),
            ("token_usage_record", _) if by_records => {
                let key = text(p, "response_id").unwrap_or_else(|| format!("{session}\0{}", n + 1));
                let usage = p.get("usage").unwrap_or(&Json::Null);
                request(&st, session, ts, &key, usage, prices, out);
            }
            ("event_msg", "token_count") if !by_records => {
                let Some(info) = p.get("info").filter(|i| !i.is_null()) else {
                    continue;
                };
                let total = info
                    .pointer("/total_token_usage/total_tokens")
                    .and_then(Json::as_i64);
                if total.is_some() && total == st.total {
                    continue; // the same total again: no new call
                }
                st.total = total.or(st.total);
                let Some(usage) = info.get("last_token_usage") else {
                    continue;
                };
                let key = format!("{session}\0{}", total.unwrap_or(n as i64));
                request(&st, session, ts, &key, usage, prices, out);
            }
            ("event_msg", "task_complete") => {
                if let Some(message) = p.pointer("/error/message").and_then(Json::as_str) {
                    let turn = text(p, "turn_id").unwrap_or_else(|| (n + 1).to_string());
                    let data = json!({ "message": message, "turn_id": turn });
                    let key = format!("{session}\0{turn}");
                    out.push_event(pb::AgentEvent {
                        severity: pb::Severity::Error as i32,
                        ..st.origin(session)
                            .event("error", &key, "error_encountered", ts, &data)
                    });
                }
            }
            ("response_item", "message") => {
                let role = match text(p, "role").as_deref() {
                    Some("user") => "user",
                    Some("assistant") => "assistant",
                    _ => continue,
                };
                let said: Vec<&str> = p
                    .get("content")
                    .and_then(Json::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c.get("text").and_then(Json::as_str))
                    .filter(|t| {
                        !CONTEXT_PREFIXES
                            .iter()
                            .any(|pre| t.trim_start().starts_with(pre))
                    })
                    .collect();
                if said.is_empty() {
                    continue;
                }
                let key = text(p, "id").unwrap_or_else(|| format!("{session}\0{}", n + 1));
                out.push_message_of(AGENT, session, role, said.join("\n"), ts, &key);
            }
            ("response_item", "function_call" | "custom_tool_call" | "local_shell_call") => {
                let Some(call) = text(p, "call_id") else {
                    continue;
                };
                let name = text(p, "name").unwrap_or_else(|| ptype.to_owned());
                let data = json!({ "tool_name": name, "call_id": call });
                let event = st
                    .origin(session)
                    .event("tool", &call, "tool_use", ts, &data);
                st.calls.entry(call).or_insert((event, ts));
            }
            ("response_item", "function_call_output" | "custom_tool_call_output") => {
                let Some(call) = text(p, "call_id") else {
                    continue;
                };
                if let Some((mut event, started)) = st.calls.remove(&call) {
                    let output = p.get("output").and_then(Json::as_str).unwrap_or_default();
                    let mut data: Json = serde_json::from_str(&event.data_json).unwrap_or_default();
                    if let Some(code) = exit_code(output) {
                        data["success"] = (code == 0).into();
                        data["exit_code"] = code.into();
                    }
                    event.data_json = data.to_string();
                    event.duration_ms = ts
                        .duration_since(started)
                        .ok()
                        .map(|d| d.as_millis() as i64);
                    out.push_event(event);
                }
            }
            _ => {}
        }
    }
    if !out.following {
        for (_, (event, _)) in st.calls {
            out.push_event(event);
        }
    }
}

/// "Process exited with code 0", as Codex's command tool reports it.
fn exit_code(output: &str) -> Option<i64> {
    let rest = output.split("Process exited with code ").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

fn request(
    st: &State,
    session: Uuid,
    ts: SystemTime,
    key: &str,
    usage: &Json,
    prices: &PriceTable,
    out: &mut Read,
) {
    let model = st.model.clone().unwrap_or_else(|| "unknown".into());
    // OpenAI's input includes the cached tokens, its output the reasoning.
    let input = int(usage, "input_tokens");
    let cached = int(usage, "cached_input_tokens").min(input);
    let output = int(usage, "output_tokens");
    let tokens = Tokens {
        input,
        output,
        cached,
        written: 0,
    };
    let cost = prices.priced(&model, tokens);
    let data = json!({ "reasoning_output_tokens": int(usage, "reasoning_output_tokens") });
    out.push_event(
        st.origin(session)
            .request(key, ts, &model, (tokens, cost), data),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const SESSION: &str = "01a25155-29e3-75d2-b836-e50ff9180b0f";

    fn line(ts: &str, kind: &str, payload: Json) -> String {
        json!({ "timestamp": ts, "type": kind, "payload": payload }).to_string()
    }

    fn meta() -> String {
        line(
            "2026-12-07T10:00:00.000Z",
            "session_meta",
            json!({ "id": SESSION, "cwd": "/work/api", "cli_version": "0.169.0",
                    "git": { "repository_url": "https://tok@github.com/acme/api.git", "branch": "main" } }),
        )
    }

    fn usage(input: i64, cached: i64, output: i64) -> Json {
        json!({ "input_tokens": input, "cached_input_tokens": cached, "output_tokens": output })
    }

    #[test]
    fn responses_are_read_by_their_usage_records() {
        let text = [
            meta(),
            line("2026-12-07T10:00:01.000Z", "turn_context", json!({ "model": "gpt-5-codex" })),
            line("2026-12-07T10:00:02.000Z", "response_item",
                 json!({ "type": "message", "id": "m1", "role": "user",
                         "content": [{ "type": "input_text", "text": "<environment_context>cwd</environment_context>" }] })),
            line("2026-12-07T10:00:02.100Z", "response_item",
                 json!({ "type": "message", "id": "m2", "role": "user",
                         "content": [{ "type": "input_text", "text": "run the tests" }] })),
            line("2026-12-07T10:00:03.000Z", "token_usage_record",
                 json!({ "response_id": "resp_1", "usage": usage(1000, 200, 50) })),
            // The token_count events beside the records repeat them.
            line("2026-12-07T10:00:03.100Z", "event_msg",
                 json!({ "type": "token_count", "info": { "total_token_usage": { "total_tokens": 1050 },
                                                          "last_token_usage": usage(1000, 200, 50) } })),
        ]
        .join("\n");
        let mut out = Read::default();
        read("r.jsonl", &text, &PriceTable::default(), &mut out);
        let requests: Vec<_> = out
            .events
            .iter()
            .filter(|e| e.event_type == "llm_request")
            .collect();
        assert_eq!(requests.len(), 1);
        assert_eq!(
            (
                requests[0].input_tokens,
                requests[0].cached_tokens,
                requests[0].output_tokens
            ),
            (Some(1000), Some(200), Some(50))
        );
        assert_eq!(requests[0].session_id, SESSION);
        let said: Vec<&str> = out.messages.iter().map(|m| m.content.as_str()).collect();
        assert_eq!(said, ["run the tests"], "not the context Codex adds");
        let s = &out.sessions[&Uuid::parse_str(SESSION).unwrap()];
        assert_eq!(
            s.repository.as_deref(),
            Some("https://tok@github.com/acme/api.git")
        );
    }

    #[test]
    fn without_records_token_counts_count_once_each() {
        let count = |total: i64, last: Json| {
            json!({ "type": "token_count", "info": { "total_token_usage": { "total_tokens": total },
                                                     "last_token_usage": last } })
        };
        let text = [
            meta(),
            line(
                "2026-12-07T10:00:01.000Z",
                "turn_context",
                json!({ "model": "gpt-5" }),
            ),
            line(
                "2026-12-07T10:00:02.000Z",
                "event_msg",
                json!({ "type": "token_count", "info": null }),
            ),
            line(
                "2026-12-07T10:00:03.000Z",
                "event_msg",
                count(1050, usage(1000, 200, 50)),
            ),
            // The same total again: no new call.
            line(
                "2026-12-07T10:00:03.500Z",
                "event_msg",
                count(1050, usage(1000, 200, 50)),
            ),
            line(
                "2026-12-07T10:00:04.000Z",
                "event_msg",
                count(2420, usage(1300, 300, 70)),
            ),
            line(
                "2026-12-07T10:00:05.000Z",
                "event_msg",
                json!({ "type": "task_complete", "turn_id": "t1",
                         "error": { "message": "stream disconnected before completion" } }),
            ),
        ]
        .join("\n");
        let mut out = Read::default();
        read("r.jsonl", &text, &PriceTable::default(), &mut out);
        let inputs: Vec<Option<i64>> = out
            .events
            .iter()
            .filter(|e| e.event_type == "llm_request")
            .map(|e| e.input_tokens)
            .collect();
        assert_eq!(inputs, [Some(1000), Some(1300)]);
        let errors: Vec<_> = out
            .events
            .iter()
            .filter(|e| e.event_type == "error_encountered")
            .collect();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].severity, pb::Severity::Error as i32);
    }
}
