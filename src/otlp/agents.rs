//! The per-agent rules: which agent sent a record, and what each agent's
//! records mean — the event type, model, tokens (normalised to one
//! definition: input includes cached, output includes reasoning), cost,
//! duration, tool and the texts to keep as chat messages. docs/otlp.md has
//! the table; a new agent is a new function here.

use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use serde_json::Value as Json;

use super::attrs::{self, boolean, float, int, text};

/// The agents whose telemetry is mapped field by field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Agent {
    ClaudeCode,
    GeminiCli,
    Codex,
    Copilot,
    /// Anything else, by its `service.name`.
    Other(String),
}

impl Agent {
    pub fn id(&self) -> &str {
        match self {
            Agent::ClaudeCode => "claude-code",
            Agent::GeminiCli => "gemini-cli",
            Agent::Codex => "codex",
            Agent::Copilot => "github-copilot",
            Agent::Other(name) => name,
        }
    }

    /// Claude Code, Gemini CLI and Codex put each request's figures in
    /// their log events: their spans and metrics repeat them.
    pub fn logs_carry_figures(&self) -> bool {
        matches!(self, Agent::ClaudeCode | Agent::GeminiCli | Agent::Codex)
    }

    pub(super) fn detect(resource: &[KeyValue], name: &str, record: &[KeyValue]) -> Agent {
        let service = text(resource, &["service.name"])
            .unwrap_or_default()
            .to_ascii_lowercase();
        let by_service = match service.as_str() {
            s if s.starts_with("claude-code") || s.starts_with("claude_code") => {
                Some(Agent::ClaudeCode)
            }
            s if s.starts_with("gemini-cli") || s.starts_with("gemini_cli") => {
                Some(Agent::GeminiCli)
            }
            s if s.starts_with("codex") => Some(Agent::Codex),
            s if s.contains("copilot") => Some(Agent::Copilot),
            _ => None,
        };
        by_service.unwrap_or_else(|| {
            if name.starts_with("claude_code.") {
                Agent::ClaudeCode
            } else if name.starts_with("gemini_cli.") {
                Agent::GeminiCli
            } else if name.starts_with("codex.") {
                Agent::Codex
            } else if name.starts_with("copilot_chat.")
                || record.iter().any(|kv| {
                    kv.key.starts_with("github.copilot.") || kv.key.starts_with("copilot_chat.")
                })
            {
                Agent::Copilot
            } else if service.is_empty() || service.starts_with("unknown_service") {
                Agent::Other("unknown".into())
            } else {
                Agent::Other(service)
            }
        })
    }
}

/// Event types of the native API that OTLP records map to.
pub mod kind {
    pub const LLM_REQUEST: &str = "llm_request";
    pub const TOOL_USE: &str = "tool_use";
    pub const TOOL_DECISION: &str = "tool_decision";
    pub const USER_PROMPT: &str = "user_prompt";
    pub const ERROR: &str = "error_encountered";
    pub const AGENT_INVOCATION: &str = "agent_invocation";
    pub const METRIC: &str = "metric";
}

/// What the agent-specific rules found in a record.
#[derive(Default)]
pub struct Found {
    pub event_type: Option<&'static str>,
    pub model: Option<String>,
    /// (input including cached, output including reasoning, cached).
    pub tokens: Option<(Option<i64>, Option<i64>, Option<i64>)>,
    /// Input tokens written to the cache (part of input), where the record
    /// says: priced apart when the cost is estimated.
    pub cache_written: Option<i64>,
    pub cost: Option<f64>,
    pub duration_ms: Option<i64>,
    pub tool_name: Option<String>,
    pub success: Option<bool>,
    pub error: bool,
    /// (role, text) to store as chat messages.
    pub texts: Vec<(&'static str, String)>,
    /// A permission decision on a tool call: `data.accepted`, which the
    /// productivity figures count (docs/api.md, "Keys the dashboards read").
    pub accepted: Option<bool>,
    /// Productivity counts a metric point carries (`lines_added`,
    /// `lines_removed`, `commits`, `pull_requests`), for `data`.
    pub counts: Vec<(&'static str, i64)>,
    /// Not stored at all: the record repeats what another record of the
    /// same agent carries, or says nothing about the work (docs/otlp.md,
    /// "What is not stored").
    pub ignored: bool,
    /// The agent's own id of what the row is (`request`, request id): the
    /// row's id derives from it, as the transcript importer's does
    /// ([`crate::ids`]), so that the two edges make one row.
    pub row_key: Option<(&'static str, String)>,
    /// The same for the record's one text: the transcript line's uuid.
    pub message_key: Option<String>,
}

impl Found {
    /// A record that is not stored.
    pub fn ignored() -> Self {
        Found {
            ignored: true,
            ..Found::default()
        }
    }
}

/// What an agent sends in place of a text it was told not to log: Claude
/// Code `<REDACTED>`, Codex `[REDACTED]`. Never content: no chat message
/// is made of it (the event keeps the text's length the agent sends).
pub fn is_placeholder(text: &str) -> bool {
    let t = text.trim();
    ["<redacted>", "[redacted]", "redacted"]
        .iter()
        .any(|p| t.eq_ignore_ascii_case(p))
}

/// Whether a tool-permission decision let the call run. Each agent has its
/// own words: Claude Code `accept` / `reject` (in `decision`, which
/// 2.1.328 sends, or `decision_type`); Codex `approved`,
/// `approved_for_session`, `approved_with_amendment` (an approval that
/// also amends the exec policy), the MCP and network policies'
/// `approved_…` / `denied`, `denied_with_network_policy_deny`, `abort`,
/// `timed_out`; Gemini CLI
/// `accept`, `auto_accept`, `modify` (the user edited the call and ran it)
/// / `reject`. An unknown word is no decision rather than a guess.
fn decision(a: &[KeyValue]) -> Option<bool> {
    let word = text(a, &["decision", "decision_type"])?.to_ascii_lowercase();
    match word.as_str() {
        "accept" | "accepted" | "auto_accept" | "modify" | "allow" => Some(true),
        "reject" | "rejected" | "deny" | "abort" | "timed_out" | "timeout" => Some(false),
        // Codex 0.169's words beyond the plain ones: `approved_for_session`,
        // `approved_with_amendment`, `approved_mcp_policy_amendment`,
        // `approved_with_network_policy_allow` /
        // `denied_with_network_policy_deny`.
        w if w.starts_with("approved") => Some(true),
        w if w.starts_with("denied") => Some(false),
        _ => None,
    }
}

/// Claude Code: `input_tokens` excludes the cache, so input is
/// input + cache read + cache creation.
pub(super) fn claude(name: &str, a: &[KeyValue]) -> Found {
    match name {
        "claude_code.api_request" => {
            let fresh = int(a, &["input_tokens"]);
            let row_key = text(a, &["request_id"]).map(|r| ("request", r));
            let read = int(a, &["cache_read_tokens"]);
            let created = int(a, &["cache_creation_tokens"]);
            let input = (fresh.is_some() || read.is_some() || created.is_some())
                .then(|| fresh.unwrap_or(0) + read.unwrap_or(0) + created.unwrap_or(0));
            Found {
                event_type: Some(kind::LLM_REQUEST),
                model: text(a, &["model"]),
                tokens: Some((input, int(a, &["output_tokens"]), read)),
                cache_written: created,
                cost: float(a, &["cost_usd"]),
                duration_ms: int(a, &["duration_ms"]),
                row_key,
                ..Found::default()
            }
        }
        "claude_code.api_error" => Found {
            event_type: Some(kind::ERROR),
            model: text(a, &["model"]),
            duration_ms: int(a, &["duration_ms"]),
            error: true,
            ..Found::default()
        },
        // Keyed by the call's `tool_use_id`, as the transcript's
        // `tool_use` block: exported and imported, one row.
        "claude_code.tool_result" => Found {
            event_type: Some(kind::TOOL_USE),
            duration_ms: int(a, &["duration_ms"]),
            row_key: text(a, &["tool_use_id"]).map(|k| ("tool", k)),
            ..tool(a, &["tool_name"])
        },
        "claude_code.tool_decision" => Found {
            event_type: Some(kind::TOOL_DECISION),
            tool_name: text(a, &["tool_name"]),
            accepted: decision(a),
            ..Found::default()
        },
        "claude_code.user_prompt" => Found {
            message_key: text(a, &["message.uuid"]),
            ..prompt(a)
        },
        // The reply of a turn: its text is the session's assistant message.
        "claude_code.assistant_response" => Found {
            texts: text(a, &["response"])
                .map(|t| vec![("assistant", t)])
                .unwrap_or_default(),
            message_key: text(a, &["message.uuid"]),
            ..Found::default()
        },
        // The model refused: an error of the request, whose tokens and
        // cost its `api_request` carries. No model on the row: the
        // dashboards count rows with a model as requests, and its request
        // is counted already (the model stays in `data`).
        "claude_code.api_refusal" => Found {
            event_type: Some(kind::ERROR),
            error: true,
            ..Found::default()
        },
        _ => Found::default(),
    }
}

/// Gemini CLI: `input_token_count` is the whole prompt (cached included);
/// thoughts are output the model generated, so they join output.
pub(super) fn gemini(name: &str, a: &[KeyValue]) -> Found {
    match name {
        "gemini_cli.api_response" => {
            let out = int(a, &["output_token_count"]);
            let thoughts = int(a, &["thoughts_token_count"]);
            let output = (out.is_some() || thoughts.is_some())
                .then(|| out.unwrap_or(0) + thoughts.unwrap_or(0));
            let failed =
                int(a, &["status_code"]).is_some_and(|c| c >= 400) || text(a, &["error"]).is_some();
            Found {
                event_type: Some(kind::LLM_REQUEST),
                model: text(a, &["model"]),
                tokens: Some((
                    int(a, &["input_token_count"]),
                    output,
                    int(a, &["cached_content_token_count"]),
                )),
                duration_ms: int(a, &["duration_ms"]),
                error: failed,
                texts: text(a, &["response_text"])
                    .and_then(|t| gemini_reply(&t))
                    .map(|t| vec![("assistant", t)])
                    .unwrap_or_default(),
                ..Found::default()
            }
        }
        // The same request and reply as `api_request` and `api_response`,
        // with the whole system prompt (32 KiB) on every call.
        "gen_ai.client.inference.operation.details" => Found::ignored(),
        "gemini_cli.api_error" => Found {
            event_type: Some(kind::ERROR),
            model: text(a, &["model"]),
            duration_ms: int(a, &["duration_ms"]),
            error: true,
            ..Found::default()
        },
        // Gemini CLI reports the permission decision on the call itself.
        "gemini_cli.tool_call" => Found {
            event_type: Some(kind::TOOL_USE),
            duration_ms: int(a, &["duration_ms"]),
            accepted: decision(a),
            ..tool(a, &["function_name", "tool_name"])
        },
        "gemini_cli.user_prompt" => prompt(a),
        _ => Found::default(),
    }
}

/// Codex: tokens come on the `sse_event` of kind `response.completed`
/// (OpenAI's input includes cached tokens, output includes reasoning);
/// numbers arrive as strings. Codex 0.169 logs each `response.completed`
/// twice: once as one of the stream's events (only `duration_ms`, always
/// 0), once with the token counts; a stream that fails ends in a
/// `response.completed` with only `error.message`. So one model call is one
/// row: the counted one, or the failed one; the stream's other events are
/// not stored.
pub(super) fn codex(name: &str, a: &[KeyValue]) -> Found {
    const TOKENS: [&str; 3] = [
        "input_token_count",
        "output_token_count",
        "cached_token_count",
    ];
    match name {
        "codex.sse_event" if text(a, &["event.kind"]).as_deref() == Some("response.completed") => {
            let counted = TOKENS.iter().any(|k| attrs::get(a, k).is_some());
            let failed = text(a, &["error.message"]).is_some();
            if !counted && !failed {
                return Found::ignored();
            }
            Found {
                event_type: Some(kind::LLM_REQUEST),
                model: text(a, &["model"]),
                tokens: counted.then(|| {
                    (
                        int(a, &[TOKENS[0]]),
                        int(a, &[TOKENS[1]]),
                        int(a, &[TOKENS[2]]),
                    )
                }),
                cache_written: int(a, &["cache_write_token_count"]).filter(|n| *n > 0),
                duration_ms: int(a, &["duration_ms"]),
                error: failed && !counted,
                ..Found::default()
            }
        }
        // Progress of the stream (deltas, `response.created`, and
        // `response.failed`, whose failure the `response.completed` after
        // it carries): no figure of its own.
        "codex.sse_event" => Found::ignored(),
        "codex.api_request" if text(a, &["error.message"]).is_some() => Found {
            model: text(a, &["model"]),
            error: true,
            ..Found::default()
        },
        "codex.tool_result" => Found {
            event_type: Some(kind::TOOL_USE),
            duration_ms: int(a, &["duration_ms"]),
            ..tool(a, &["tool_name"])
        },
        "codex.tool_decision" => Found {
            event_type: Some(kind::TOOL_DECISION),
            tool_name: text(a, &["tool_name"]),
            accepted: decision(a),
            ..Found::default()
        },
        "codex.user_prompt" => prompt(a),
        _ => Found::default(),
    }
}

/// A GenAI semantic-conventions request (a `chat` span, an inference
/// event): `gen_ai.usage.input_tokens` includes cached tokens by the
/// conventions' definition.
pub(super) fn genai_request(a: &[KeyValue]) -> Found {
    Found {
        event_type: Some(kind::LLM_REQUEST),
        model: text(a, &["gen_ai.response.model", "gen_ai.request.model"]),
        tokens: Some((
            int(
                a,
                &["gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens"],
            ),
            int(
                a,
                &[
                    "gen_ai.usage.output_tokens",
                    "gen_ai.usage.completion_tokens",
                ],
            ),
            int(a, &["gen_ai.usage.cache_read.input_tokens"]),
        )),
        cache_written: int(a, &["gen_ai.usage.cache_creation.input_tokens"]),
        error: attrs::get(a, "error.type").is_some(),
        ..Found::default()
    }
}

/// OpenInference spans: `llm.token_count.prompt` includes cached tokens.
pub(super) fn openinference(kind_: &str, a: &[KeyValue]) -> Found {
    match kind_ {
        "LLM" => Found {
            event_type: Some(kind::LLM_REQUEST),
            model: text(a, &["llm.model_name"]),
            tokens: Some((
                int(a, &["llm.token_count.prompt"]),
                int(a, &["llm.token_count.completion"]),
                int(a, &["llm.token_count.prompt_details.cache_read"]),
            )),
            cache_written: int(a, &["llm.token_count.prompt_details.cache_write"]),
            cost: float(a, &["llm.cost.total"]),
            ..Found::default()
        },
        "TOOL" => Found {
            event_type: Some(kind::TOOL_USE),
            ..tool(a, &["tool.name"])
        },
        "AGENT" => Found {
            event_type: Some(kind::AGENT_INVOCATION),
            texts: [("user", "input.value"), ("assistant", "output.value")]
                .into_iter()
                .filter_map(|(role, key)| text(a, &[key]).map(|t| (role, t)))
                .collect(),
            ..Found::default()
        },
        _ => Found::default(),
    }
}

pub(super) fn tool(a: &[KeyValue], name_keys: &[&str]) -> Found {
    Found {
        tool_name: text(a, name_keys),
        success: boolean(a, &["success"]),
        duration_ms: int(a, &["duration_ms"]),
        ..Found::default()
    }
}

/// A user prompt: `prompt`, else Claude Code's `prompt_text` (2.1.328
/// sends both, the same text).
pub(super) fn prompt(a: &[KeyValue]) -> Found {
    Found {
        event_type: Some(kind::USER_PROMPT),
        texts: text(a, &["prompt", "prompt_text"])
            .map(|t| vec![("user", t)])
            .unwrap_or_default(),
        ..Found::default()
    }
}

/// Gemini CLI's `response_text`: the JSON of the streamed
/// GenerateContentResponse chunks (an array; one object for a call that
/// was not streamed). The reply is the text of their candidates' parts,
/// in order, without the model's thoughts (`"thought": true`); a reply of
/// function calls only has no text. Text that is not such JSON (older
/// versions sent the reply itself) is the reply as it is.
pub(super) fn gemini_reply(raw: &str) -> Option<String> {
    let json: Json = match serde_json::from_str(raw) {
        Ok(j @ (Json::Array(_) | Json::Object(_))) => j,
        _ => return Some(raw.to_owned()),
    };
    let chunks = match &json {
        Json::Array(a) => a.iter().collect::<Vec<_>>(),
        one => vec![one],
    };
    let mut out = String::new();
    for chunk in chunks {
        let candidates = chunk.get("candidates").and_then(Json::as_array);
        // The first candidate is the reply (the CLI asks for one).
        let Some(parts) = candidates
            .and_then(|c| c.first())
            .and_then(|c| c.pointer("/content/parts"))
            .and_then(Json::as_array)
        else {
            continue;
        };
        for part in parts {
            if part.get("thought").and_then(Json::as_bool) == Some(true) {
                continue;
            }
            if let Some(t) = part.get("text").and_then(Json::as_str) {
                out.push_str(t);
            }
        }
    }
    (!out.trim().is_empty()).then_some(out)
}

/// The last user message of `gen_ai.input.messages` and the assistant's
/// reply in `gen_ai.output.messages` (JSON text, or structured values).
pub(super) fn genai_texts(a: &[KeyValue]) -> Vec<(&'static str, String)> {
    let parse = |key: &str| -> Option<Json> {
        match attrs::get(a, key)? {
            Value::StringValue(s) => serde_json::from_str(s).ok(),
            other => Some(attrs::to_json(&AnyValue {
                value: Some(other.clone()),
            })),
        }
    };
    let text_of = |msg: &Json| -> Option<String> {
        let parts = msg.get("parts").and_then(Json::as_array)?;
        let t: Vec<&str> = parts
            .iter()
            .filter_map(|p| p.get("content").and_then(Json::as_str))
            .collect();
        (!t.is_empty()).then(|| t.join("\n"))
    };
    let last_of = |v: Option<Json>, role: &str| -> Option<String> {
        v?.as_array()?
            .iter()
            .rev()
            .find(|m| m.get("role").and_then(Json::as_str) == Some(role))
            .and_then(text_of)
    };
    let mut out = Vec::new();
    if let Some(t) = last_of(parse("gen_ai.input.messages"), "user") {
        out.push(("user", t));
    }
    if let Some(t) = last_of(parse("gen_ai.output.messages"), "assistant") {
        out.push(("assistant", t));
    }
    out
}

/// The productivity counters an agent exports as metrics, as the `data`
/// keys the productivity figures sum: Claude Code's lines of code (by
/// `type`), commits and pull requests; Copilot Chat's lines of code and
/// pull requests. Only a delta point is a count of its
/// own; a cumulative point repeats the running total at every export, and
/// summing those would count each line again every minute.
pub(super) fn metric_counts(
    name: &str,
    delta: bool,
    value: Option<i64>,
    a: &[KeyValue],
) -> Vec<(&'static str, i64)> {
    let Some(v) = value.filter(|v| delta && *v >= 0) else {
        return Vec::new();
    };
    let key = match name {
        // Copilot Chat counts the lines of an edit hunk the user accepted.
        "claude_code.lines_of_code.count" | "copilot_chat.lines_of_code.count" => {
            match text(a, &["type"]).as_deref() {
                Some("added") => "lines_added",
                Some("removed") => "lines_removed",
                _ => return Vec::new(),
            }
        }
        "claude_code.commit.count" => "commits",
        "claude_code.pull_request.count" | "copilot_chat.pull_request.count" => "pull_requests",
        _ => return Vec::new(),
    };
    vec![(key, v)]
}
