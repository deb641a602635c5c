//! GitHub Copilot CLI's sessions: `<~/.copilot>/session-state/<session>/
//! events.jsonl`, one event a line (`{type, data, id, timestamp, parentId,
//! agentId?}`), as Copilot CLI 1.0.102 writes them (the files its binary
//! wrote offline against a mock model API, 2026-12-07, are the fixtures of
//! the tests below; the event shapes are its `session-events.schema.json`).
//! Events marked ephemeral in that schema (`assistant.usage`, deltas) are
//! never written; what counts:
//! - `session.usage_record`: one model call, `data.usage` with the model
//!   and tokens (`inputTokens` includes the cache, as here), keyed by its
//!   `accounting.usageId` (else `apiCallId`); a subagent's carry its
//!   `agentId`. Versions before it (1.0.92 and older) wrote the tokens only
//!   in `session.shutdown`'s per-model totals: read from there when a file
//!   has no usage record (one row per model and shutdown, the growth since
//!   the previous shutdown).
//! - `tool.execution_start` / `tool.execution_complete`, paired by
//!   `toolCallId`: name, success, edited files, duration (their times).
//! - `user.message` (what the developer typed, `content`; a parent agent's
//!   instructions to a subagent are not a prompt) and `assistant.message`.
//! - `session.start` / `session.resume` / `session.context_changed`: the
//!   version, the folder and the branch.
//!
//! A resumed session appends to the same file; nothing is written twice,
//! and ids from the events' own ids make a second import store nothing.

use std::{collections::BTreeMap, time::SystemTime};

use serde_json::{Value as Json, json};
use uuid::Uuid;

use super::{Origin, Read, Session, int, text};
use crate::{
    ids, pb,
    price::{PriceTable, Tokens},
};

/// The agent id of rows from Copilot CLI's sessions.
pub const AGENT: &str = "copilot-cli";

/// One file's state while it is read.
struct State {
    session: Uuid,
    version: String,
    /// Tool calls started and not yet complete.
    calls: BTreeMap<String, (pb::AgentEvent, SystemTime)>,
    /// Whether the file records each call (`session.usage_record`).
    by_records: bool,
    /// Each model's totals at the last `session.shutdown`.
    totals: BTreeMap<String, [i64; 4]>,
}

/// The rows' context: where they come from, and a subagent's id.
fn context(v: &Json) -> String {
    let mut c = json!({ "source": "import" });
    if let Some(a) = text(v, "/agentId") {
        c["agent_id"] = a.into();
        c["is_sidechain"] = true.into();
    }
    c.to_string()
}

pub fn read(
    path: &str,
    text_: &str,
    session_of_path: Option<Uuid>,
    prices: &PriceTable,
    out: &mut Read,
) {
    let mut st = State {
        session: session_of_path.unwrap_or_default(),
        version: String::new(),
        calls: BTreeMap::new(),
        by_records: text_.contains("\"session.usage_record\""),
        totals: BTreeMap::new(),
    };
    for (n, line) in text_.lines().enumerate() {
        let Some(v) = out.line(path, n, line) else {
            continue;
        };
        let Some(ts) = text(&v, "/timestamp").and_then(|t| humantime::parse_rfc3339(&t).ok())
        else {
            out.problem(format!("{path}:{}: an event without a timestamp", n + 1));
            continue;
        };
        let kind = v.get("type").and_then(Json::as_str).unwrap_or_default();
        if let (true, Some(id)) = (kind == "session.start", text(&v, "/data/sessionId")) {
            st.session = ids::session(AGENT, &id);
        }
        if st.session.is_nil() {
            out.problem(format!("{path}:{}: an event naming no session", n + 1));
            continue;
        }
        let info = out.sessions.entry(st.session).or_insert_with(|| Session {
            agent: AGENT,
            ..Session::default()
        });
        info.start = Some(info.start.map_or(ts, |s| s.min(ts)));
        info.end = Some(info.end.map_or(ts, |e| e.max(ts)));
        let data = v.get("data").unwrap_or(&Json::Null);
        match kind {
            "session.start" | "session.resume" | "session.context_changed" => {
                if let Some(version) = text(data, "/copilotVersion") {
                    info.version = Some(version.clone());
                    st.version = version;
                }
                let context = if kind == "session.context_changed" {
                    // A context still being worked out is followed by the
                    // settled one.
                    (data.get("pendingGitContext") != Some(&Json::Bool(true))).then_some(data)
                } else {
                    data.get("context")
                };
                if let Some(c) = context {
                    if let Some(cwd) = text(c, "/gitRoot").or_else(|| text(c, "/cwd")) {
                        info.cwd.get_or_insert(cwd);
                    }
                    if let Some(b) = text(c, "/branch") {
                        info.branch = Some(b);
                    }
                }
            }
            "session.usage_record" => usage(&st, &v, ts, prices, out),
            "session.shutdown" if !st.by_records => shutdown(&mut st, &v, ts, prices, out),
            "tool.execution_start" => {
                if let Some(id) = text(data, "/toolCallId") {
                    let name = text(data, "/toolName").unwrap_or_default();
                    let mut d = json!({ "tool_name": name, "tool_use_id": id });
                    if let Some(p) = text(data, "/arguments/path") {
                        d["path"] = p.into();
                    }
                    let context = context(&v);
                    let key = format!("{}\0{id}", st.session);
                    let e = origin(&st, &context).event("tool", &key, "tool_use", ts, &d);
                    st.calls.entry(id).or_insert((e, ts));
                }
            }
            "tool.execution_complete" => {
                if let Some((mut e, started)) =
                    text(data, "/toolCallId").and_then(|id| st.calls.remove(&id))
                {
                    let mut d: Json = serde_json::from_str(&e.data_json).unwrap_or_default();
                    d["success"] = (data.get("success") == Some(&Json::Bool(true))).into();
                    if let Some(err) = text(data, "/error/message") {
                        d["error"] = err.into();
                    }
                    let edited: Vec<&str> = data
                        .get("fileEdits")
                        .and_then(Json::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(|f| f.get("path").and_then(Json::as_str))
                        .collect();
                    if let Some(first) = edited.first() {
                        d["path"] = (*first).into();
                        d["files"] = edited.into();
                    }
                    if let Some(code) = data.pointer("/shellExecution/exitCode") {
                        d["exit_code"] = code.clone();
                    }
                    e.data_json = d.to_string();
                    e.duration_ms = ts
                        .duration_since(started)
                        .ok()
                        .map(|d| d.as_millis() as i64);
                    out.push_event(e);
                }
            }
            "user.message" => {
                // A parent agent's instructions to a subagent: no prompt.
                let from_agent = text(data, "/source").is_some_and(|s| s.starts_with("agent-"));
                if let (Some(said), false) = (text(data, "/content"), from_agent) {
                    let key = text(data, "/messageId").or_else(|| text(&v, "/id"));
                    let key = format!("{}\0{}", st.session, key.unwrap_or_default());
                    out.push_message_of(AGENT, st.session, "user", said, ts, &key);
                }
            }
            "assistant.message" => {
                if let Some(said) = text(data, "/content").filter(|s| !s.trim().is_empty()) {
                    let key = text(data, "/messageId").or_else(|| text(&v, "/id"));
                    let key = format!("{}\0{}", st.session, key.unwrap_or_default());
                    out.push_message_of(AGENT, st.session, "assistant", said, ts, &key);
                }
            }
            _ => {}
        }
    }
    // Calls whose end is not in the file; while following, it may come.
    if !out.following {
        for (_, (e, _)) in std::mem::take(&mut st.calls) {
            out.push_event(e);
        }
    }
}

fn origin<'a>(st: &'a State, context: &'a str) -> Origin<'a> {
    Origin {
        agent: AGENT,
        session: st.session,
        version: &st.version,
        context,
    }
}

/// One model call, from its usage record.
fn usage(st: &State, v: &Json, ts: SystemTime, prices: &PriceTable, out: &mut Read) {
    let Some(u) = v.pointer("/data/usage") else {
        return;
    };
    let model = text(u, "/model").unwrap_or_else(|| "unknown".into());
    let read = int(u, "cacheReadTokens");
    let written = int(u, "cacheWriteTokens");
    // `inputTokens` holds the whole prompt, cached or not (Copilot CLI
    // 1.0.51's changelog: "Ensure input token usage includes cached").
    let tokens = Tokens {
        input: int(u, "inputTokens").max(read + written),
        output: int(u, "outputTokens"),
        cached: read,
        written,
    };
    let cost = prices.priced(&model, tokens);
    let data = json!({
        "api_call_id": text(u, "/apiCallId"),
        "initiator": text(u, "/initiator"),
        "reasoning_tokens": int(u, "reasoningTokens"),
        "cache_creation_tokens": written,
        "duration_ms_api": int(u, "duration"),
    });
    let key = text(u, "/accounting/usageId")
        .or_else(|| text(u, "/apiCallId"))
        .or_else(|| text(v, "/id"))
        .unwrap_or_default();
    let key = format!("{}\0{key}", st.session);
    let context = context(v);
    let mut e = origin(st, &context).request(&key, ts, &model, (tokens, cost), data);
    e.duration_ms = u.get("duration").and_then(Json::as_i64);
    out.push_event(e);
}

/// Per-model totals of a `session.shutdown`, for versions that wrote no
/// usage record: the growth since the previous shutdown of the file (a
/// resumed session goes on counting), or the whole figure when it is
/// smaller (builds that counted each resumed stretch apart).
fn shutdown(st: &mut State, v: &Json, ts: SystemTime, prices: &PriceTable, out: &mut Read) {
    let Some(metrics) = v
        .pointer("/data/modelMetrics")
        .or_else(|| v.pointer("/data/accountingSnapshot/modelMetrics"))
        .and_then(Json::as_object)
    else {
        return;
    };
    let event = text(v, "/id").unwrap_or_default();
    for (model, m) in metrics {
        let u = m.get("usage").unwrap_or(&Json::Null);
        let now = [
            int(u, "inputTokens"),
            int(u, "outputTokens"),
            int(u, "cacheReadTokens"),
            int(u, "cacheWriteTokens"),
        ];
        let before = st.totals.insert(model.clone(), now).unwrap_or_default();
        let grew = now.iter().zip(before).all(|(n, b)| *n >= b);
        let d: Vec<i64> = if grew {
            now.iter().zip(before).map(|(n, b)| n - b).collect()
        } else {
            now.to_vec()
        };
        if d.iter().all(|x| *x == 0) {
            continue;
        }
        let tokens = Tokens {
            input: d[0].max(d[2] + d[3]),
            output: d[1],
            cached: d[2],
            written: d[3],
        };
        let cost = prices.priced(model, tokens);
        let data = json!({
            "requests": m.pointer("/requests/count"),
            "from": "session.shutdown",
            "cache_creation_tokens": d[3],
        });
        let key = format!("{}\0shutdown\0{event}\0{model}", st.session);
        let context = context(v);
        out.push_event(origin(st, &context).request(&key, ts, model, (tokens, cost), data));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Files the real Copilot CLI 1.0.102 wrote (tests/fixtures/
    /// copilot-cli-1.0.102/README.md says how).
    fn fixture(session: &str) -> String {
        let path = format!(
            "{}/tests/fixtures/copilot-cli-1.0.102/session-state/{session}/events.jsonl",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(path).unwrap()
    }

    const RESUMED: &str = "b764ecca-3419-4990-8e1b-453f7ee8c55f";
    const SUBAGENT: &str = "ec446fd6-c217-416c-b0b2-a5cf0aa88014";
    const FAILED: &str = "b6ffce14-eb73-4235-affb-69ae5a6c54d2";
    const ANTHROPIC: &str = "65777c96-7106-4c6b-9c9e-084db135a9d3";

    fn read_one(session: &str, text: &str) -> Read {
        let mut out = Read::default();
        read(
            "events.jsonl",
            text,
            Uuid::parse_str(session).ok(),
            &PriceTable::default(),
            &mut out,
        );
        out
    }

    fn requests(out: &Read) -> Vec<(i64, i64, i64)> {
        out.events
            .iter()
            .filter(|e| e.event_type == "llm_request")
            .map(|e| {
                (
                    e.input_tokens.unwrap(),
                    e.cached_tokens.unwrap(),
                    e.output_tokens.unwrap(),
                )
            })
            .collect()
    }

    fn data(e: &pb::AgentEvent) -> Json {
        serde_json::from_str(&e.data_json).unwrap()
    }

    #[test]
    fn one_request_per_usage_record_with_the_cache_in_its_input() {
        let out = read_one(RESUMED, &fixture(RESUMED));
        assert_eq!(
            requests(&out),
            vec![
                (1001, 601, 51),
                (1002, 602, 52),
                (1003, 603, 53),
                (1004, 604, 54)
            ],
            "the resumed stretch's call too; shutdown totals are not calls"
        );
        assert!(out.events.iter().all(|e| e.agent_id == AGENT
            && e.agent_version == "1.0.102"
            && e.session_id == RESUMED));
        let s = &out.sessions[&Uuid::parse_str(RESUMED).unwrap()];
        assert_eq!(s.cwd.as_deref(), Some("/tmp/copilot-research/work"));
        assert_eq!(s.branch.as_deref(), Some("feature-x"));
        assert_eq!(s.version.as_deref(), Some("1.0.102"));
        assert_eq!(out.skipped, 0, "{:?}", out.problems);
    }

    #[test]
    fn prompts_replies_and_tools_with_success_files_and_exit_codes() {
        let out = read_one(RESUMED, &fixture(RESUMED));
        let said: Vec<(&str, &str)> = out
            .messages
            .iter()
            .map(|m| (m.role, m.content.as_str()))
            .collect();
        assert_eq!(
            said,
            vec![
                ("user", "Create hello.txt then edit it"),
                ("assistant", "Done: created and edited hello.txt."),
                ("user", "Say done again"),
                ("assistant", "Done: created and edited hello.txt."),
            ],
            "what the developer typed, not the wrapped prompt; no empty replies"
        );
        let tools: Vec<Json> = out
            .events
            .iter()
            .filter(|e| e.event_type == "tool_use")
            .map(data)
            .collect();
        let named = |n: &str| tools.iter().find(|t| t["tool_name"] == n).unwrap().clone();
        assert_eq!(tools.len(), 3);
        assert_eq!(named("create")["success"], true);
        assert_eq!(
            named("create")["path"],
            "/tmp/copilot-research/work/hello.txt"
        );
        assert_eq!(
            named("edit")["files"],
            json!(["/tmp/copilot-research/work/hello.txt"])
        );
        assert_eq!(named("bash")["success"], true);
        assert_eq!(named("bash")["exit_code"], 2);
        assert!(
            out.events
                .iter()
                .filter(|e| e.event_type == "tool_use")
                .all(|e| e.duration_ms.is_some())
        );
    }

    #[test]
    fn a_failed_tool_is_a_failure_with_its_reason() {
        let out = read_one(FAILED, &fixture(FAILED));
        let tool = out
            .events
            .iter()
            .find(|e| e.event_type == "tool_use")
            .map(data)
            .unwrap();
        assert_eq!(tool["success"], false);
        assert!(tool["error"].as_str().unwrap().contains("ENOENT"), "{tool}");
    }

    #[test]
    fn a_subagents_calls_count_under_its_id_and_its_instructions_are_no_prompt() {
        let out = read_one(SUBAGENT, &fixture(SUBAGENT));
        assert_eq!(requests(&out).len(), 4);
        let sub: Vec<&pb::AgentEvent> = out
            .events
            .iter()
            .filter(|e| e.event_type == "llm_request" && e.context_json.contains("agent_id"))
            .collect();
        assert_eq!(sub.len(), 2, "the subagent's two calls");
        assert!(
            sub[0].context_json.contains("e4733972"),
            "{}",
            sub[0].context_json
        );
        let prompts: Vec<&str> = out
            .messages
            .iter()
            .filter(|m| m.role == "user")
            .map(|m| m.content.as_str())
            .collect();
        assert_eq!(prompts, vec!["RUN_SUBAGENT please"]);
    }

    #[test]
    fn anthropics_cache_write_and_read_are_inside_the_input() {
        let out = read_one(ANTHROPIC, &fixture(ANTHROPIC));
        let r = out
            .events
            .iter()
            .find(|e| e.event_type == "llm_request")
            .unwrap();
        assert_eq!(
            (r.input_tokens, r.cached_tokens, r.output_tokens),
            (Some(2311), Some(2000), Some(40))
        );
        assert_eq!(data(r)["cache_creation_tokens"], 300);
        assert_eq!(r.model.as_deref(), Some("claude-mock"));
    }

    #[test]
    fn read_twice_the_same_rows_are_repeats() {
        let text = fixture(RESUMED);
        let mut out = read_one(RESUMED, &text);
        let rows = out.events.len() + out.messages.len();
        read(
            "again.jsonl",
            &text,
            Uuid::parse_str(RESUMED).ok(),
            &PriceTable::default(),
            &mut out,
        );
        assert_eq!(out.events.len() + out.messages.len(), rows);
        assert_eq!(out.repeats as usize, rows);
    }

    /// Versions before 1.0.102 wrote no usage record: the shutdowns'
    /// totals give the same tokens (the resumed stretch's growth is its
    /// own row), and a truncated last line is skipped.
    #[test]
    fn without_usage_records_the_shutdown_totals_count_once() {
        let older: String = fixture(RESUMED)
            .lines()
            .filter(|l| !l.contains("\"session.usage_record\""))
            .map(|l| format!("{l}\n"))
            .collect::<String>()
            + r#"{"type":"assistant.message","data":{"con"#;
        let out = read_one(RESUMED, &older);
        let got = requests(&out);
        assert_eq!(got, vec![(3006, 1806, 156), (1004, 604, 54)], "{got:?}");
        assert_eq!(out.skipped, 1, "the cut line");
    }
}
