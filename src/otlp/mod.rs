//! Stage 1 for agents' built-in telemetry: **receive** OpenTelemetry (OTLP)
//! exports. Claude Code, Gemini CLI, Codex and Copilot export OTLP on their
//! own; pointing them here needs no extension and no SDK.
//!
//! In: `ExportLogsServiceRequest`, `ExportTraceServiceRequest` and
//! `ExportMetricsServiceRequest`, over gRPC ([`grpc`], port 4317) or HTTP
//! with protobuf or JSON ([`http`], port 4318). [`map`] turns each record
//! into the native API's rows; this module resolves their project, cuts them
//! into batches and hands those to the same [`Intake`] as the native API
//! (validate → buffer → COPY → ack). The answer comes once the rows are
//! committed (or spooled): OTLP partial success for rows that failed
//! validation, an error only for what a retry can fix.
//!
//! Errors are [`OtlpError`]; the two edges map them to a gRPC status or an
//! HTTP status.

pub mod agents;
pub mod attrs;
pub mod grpc;
pub mod http;
pub mod map;
mod rows;
pub mod serve;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::SystemTime,
};

use opentelemetry_proto::tonic::{
    collector::{
        logs::v1::ExportLogsServiceRequest, metrics::v1::ExportMetricsServiceRequest,
        trace::v1::ExportTraceServiceRequest,
    },
    common::v1::{InstrumentationScope, KeyValue},
};
use uuid::Uuid;

use self::map::{Context, Mapped};
use crate::{
    ack::{BatchOutcome, RejectionKind},
    auth::{AuthError, Authenticator, Scope},
    codes::ErrorKind,
    intake::{Batch, IngestError, Intake, Rows},
    pb,
    price::PriceTable,
};

/// Why an export was refused as a whole.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Refused(#[from] IngestError),
    /// Accepted rows could not be committed (the database is down and no
    /// spool is configured): retry the export; stored rows are recognised.
    #[error("rows not stored: {0}; retry the export")]
    NotStored(String),
    /// Every row names a project the API key may not write to.
    #[error("{0}")]
    Denied(String),
}

impl OtlpError {
    /// Its line in the code table, which gives both edges their status and
    /// retry hint.
    pub fn kind(&self) -> ErrorKind {
        match self {
            OtlpError::Auth(e) => e.kind(),
            OtlpError::Refused(e) => e.kind(),
            OtlpError::NotStored(_) => ErrorKind::Unavailable,
            OtlpError::Denied(_) => ErrorKind::PermissionDenied,
        }
    }

    /// After how long a retry of the same export can succeed (None: never).
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        self.kind().codes().retry_after
    }
}

/// What an export returns when it is not refused: the rows that failed
/// validation (OTLP partial success).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Outcome {
    pub rejected: i64,
    pub message: String,
}

impl Outcome {
    /// OTLP's `partial_success`: set only when some rows were rejected or
    /// there is something to say; `make` builds the signal's own message.
    pub fn partial<P>(self, make: impl FnOnce(i64, String) -> P) -> Option<P> {
        (self.rejected > 0 || !self.message.is_empty()).then(|| make(self.rejected, self.message))
    }
}

/// The request's headers that matter here.
#[derive(Debug, Default, Clone)]
pub struct RequestMeta {
    pub authorization: Option<String>,
    /// `x-project`: the project of rows that name none themselves.
    pub project: Option<String>,
}

/// Settings of the OTLP receivers (the listen addresses are in `ServeConfig`).
#[derive(Debug, Clone)]
pub struct OtlpSettings {
    /// Swapped whole on SIGHUP ([`serve`]): a request prices all its
    /// records with the table it started with.
    pub prices: Arc<arc_swap::ArcSwap<PriceTable>>,
    /// Project of rows with no project from attributes, header or key.
    pub default_project: String,
}

/// Sessions remembered with the project a record of theirs named (Copilot
/// names the repository on `invoke_agent` spans only): later records of the
/// session, without it, get the same project.
const SESSION_PROJECTS_MAX: usize = 100_000;

pub struct OtlpIntake {
    intake: Arc<Intake>,
    auth: Arc<Authenticator>,
    settings: OtlpSettings,
    session_projects: Mutex<HashMap<Uuid, String>>,
}

/// One mapped record and where it came from.
struct Item {
    mapped: Mapped,
    /// e.g. "resourceLogs[0].scopeLogs[1].logRecords[2]".
    locator: String,
    host: Host,
}

/// The machine a record came from, from its resource.
#[derive(Clone)]
struct Host {
    /// `host.id`, else `host.name`; None when the resource names neither
    /// (Claude Code sends no host attribute): the agent's installation
    /// stands for the machine then, so that every developer's machine does
    /// not become one workspace.
    machine_id: Option<String>,
    hostname: String,
    username: String,
    os_type: String,
}

impl Host {
    fn of(resource: &[KeyValue]) -> Self {
        let t = |keys: &[&str]| attrs::text(resource, keys).unwrap_or_default();
        let hostname = t(&["host.name"]);
        let machine_id = attrs::text(resource, &["host.id", "host.name"]);
        Self {
            machine_id,
            hostname,
            username: t(&["process.owner", "process.user.name", "user.name"]),
            os_type: t(&["os.type"]),
        }
    }
}

fn scope_name(scope: &Option<InstrumentationScope>) -> &str {
    scope.as_ref().map(|s| s.name.as_str()).unwrap_or("")
}

impl OtlpIntake {
    pub fn new(intake: Arc<Intake>, auth: Arc<Authenticator>, settings: OtlpSettings) -> Self {
        Self {
            intake,
            auth,
            settings,
            session_projects: Mutex::default(),
        }
    }

    fn context<'a>(
        &'a self,
        prices: &'a PriceTable,
        resource: &'a [KeyValue],
        scope: &'a str,
    ) -> Context<'a> {
        Context::new(
            resource,
            scope,
            prices,
            SystemTime::now(),
            self.intake.pseudonyms.is_some(),
        )
    }

    pub async fn logs(
        &self,
        req: ExportLogsServiceRequest,
        meta: &RequestMeta,
    ) -> Result<Outcome, OtlpError> {
        let scope = self.scope(meta).await?;
        let prices = self.settings.prices.load_full();
        let mut items = Vec::new();
        let mut ignored = 0;
        for (r, rl) in req.resource_logs.iter().enumerate() {
            let resource = rl.resource.as_ref().map(|r| r.attributes.as_slice());
            let resource = resource.unwrap_or_default();
            let host = Host::of(resource);
            for (s, sl) in rl.scope_logs.iter().enumerate() {
                let ctx = self.context(&prices, resource, scope_name(&sl.scope));
                for (l, rec) in sl.log_records.iter().enumerate() {
                    let Some(mapped) = map::log_record(&ctx, rec) else {
                        ignored += 1;
                        continue;
                    };
                    items.push(Item {
                        mapped,
                        locator: format!("resourceLogs[{r}].scopeLogs[{s}].logRecords[{l}]"),
                        host: host.clone(),
                    });
                }
            }
        }
        crate::metrics::otlp_ignored("logs", ignored);
        self.store("logs", items, &scope, meta).await
    }

    pub async fn traces(
        &self,
        req: ExportTraceServiceRequest,
        meta: &RequestMeta,
    ) -> Result<Outcome, OtlpError> {
        let scope = self.scope(meta).await?;
        let prices = self.settings.prices.load_full();
        let mut items = Vec::new();
        let mut ignored = 0;
        for (r, rs) in req.resource_spans.iter().enumerate() {
            let resource = rs.resource.as_ref().map(|r| r.attributes.as_slice());
            let resource = resource.unwrap_or_default();
            let host = Host::of(resource);
            for (s, ss) in rs.scope_spans.iter().enumerate() {
                let ctx = self.context(&prices, resource, scope_name(&ss.scope));
                for (i, span) in ss.spans.iter().enumerate() {
                    let Some(mapped) = map::span(&ctx, span) else {
                        ignored += 1;
                        continue;
                    };
                    items.push(Item {
                        mapped,
                        locator: format!("resourceSpans[{r}].scopeSpans[{s}].spans[{i}]"),
                        host: host.clone(),
                    });
                }
            }
        }
        crate::metrics::otlp_ignored("traces", ignored);
        self.store("traces", items, &scope, meta).await
    }

    pub async fn metrics(
        &self,
        req: ExportMetricsServiceRequest,
        meta: &RequestMeta,
    ) -> Result<Outcome, OtlpError> {
        let scope = self.scope(meta).await?;
        let prices = self.settings.prices.load_full();
        let mut items = Vec::new();
        let mut ignored = 0;
        for (r, rm) in req.resource_metrics.iter().enumerate() {
            let resource = rm.resource.as_ref().map(|r| r.attributes.as_slice());
            let resource = resource.unwrap_or_default();
            let host = Host::of(resource);
            for (s, sm) in rm.scope_metrics.iter().enumerate() {
                let ctx = self.context(&prices, resource, scope_name(&sm.scope));
                for (m, metric) in sm.metrics.iter().enumerate() {
                    let points = map::metric(&ctx, metric);
                    ignored += map::metric_points(metric).saturating_sub(points.len());
                    for (p, mapped) in points.into_iter().enumerate() {
                        items.push(Item {
                            mapped,
                            locator: format!(
                                "resourceMetrics[{r}].scopeMetrics[{s}].metrics[{m}] ({:?}) data point {p}",
                                metric.name
                            ),
                            host: host.clone(),
                        });
                    }
                }
            }
        }
        crate::metrics::otlp_ignored("metrics", ignored);
        self.store("metrics", items, &scope, meta).await
    }

    async fn scope(&self, meta: &RequestMeta) -> Result<Scope, OtlpError> {
        self.auth
            .scope(meta.authorization.as_deref())
            .await
            .map_err(|e| {
                e.count();
                OtlpError::Auth(e)
            })
    }

    /// The project of rows that name none: `x-project`, else the key's
    /// (its first by name when it has several), else the default.
    fn fallback_project(&self, scope: &Scope, meta: &RequestMeta) -> String {
        if let Some(p) = meta
            .project
            .as_deref()
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            return p.to_owned();
        }
        match scope {
            Scope::Key(k) => k
                .projects
                .iter()
                .map(|(_, name)| name)
                .min()
                .cloned()
                .unwrap_or_else(|| self.settings.default_project.clone()),
            Scope::Any => self.settings.default_project.clone(),
        }
    }

    fn resolve_projects(&self, items: &mut [Item], fallback: &str) {
        let mut known = self.session_projects.lock().expect("session projects");
        // Two passes: a record naming the project may come after the
        // records of its session that do not (a parent span ends last).
        for item in items.iter() {
            if let Some(p) = &item.mapped.project {
                if known.len() >= SESSION_PROJECTS_MAX && !known.contains_key(&item.mapped.session)
                {
                    known.clear();
                }
                known.insert(item.mapped.session, p.clone());
            }
        }
        for item in items.iter_mut() {
            let project = item
                .mapped
                .project
                .clone()
                .or_else(|| known.get(&item.mapped.session).cloned())
                .unwrap_or_else(|| fallback.to_owned());
            item.mapped.event.project = project;
        }
    }

    /// Stores the rows of one export and counts its result.
    async fn store(
        &self,
        signal: &'static str,
        items: Vec<Item>,
        scope: &Scope,
        meta: &RequestMeta,
    ) -> Result<Outcome, OtlpError> {
        let mut agents: BTreeMap<&str, usize> = BTreeMap::new();
        for i in &items {
            *agents.entry(i.mapped.agent.as_str()).or_default() += 1;
        }
        for (agent, n) in agents {
            crate::metrics::otlp_records(signal, agent, n);
        }
        let result = self.store_rows(items, scope, meta).await;
        crate::metrics::otlp_export(
            signal,
            match &result {
                Ok(o) if o.rejected > 0 => "partial",
                Ok(_) => "ok",
                Err(OtlpError::Auth(_)) => "unauthenticated",
                Err(OtlpError::Denied(_)) => "permission_denied",
                Err(e) if e.kind().retryable() => "retry",
                Err(_) => "refused",
            },
        );
        result
    }

    async fn store_rows(
        &self,
        mut items: Vec<Item>,
        scope: &Scope,
        meta: &RequestMeta,
    ) -> Result<Outcome, OtlpError> {
        if items.is_empty() {
            return Ok(Outcome::default());
        }
        let fallback = self.fallback_project(scope, meta);
        self.resolve_projects(&mut items, &fallback);
        machine_developers(&mut items, scope);
        let max = self.intake.limits.max_batch_rows.max(2);

        // Events: all chunks go into the buffer first, then their commits
        // are awaited together.
        let mut accepted = Vec::new();
        for (c, chunk) in items.chunks(max).enumerate() {
            // Handed over decoded: intake validates the rows as they are.
            let batch = Batch {
                sequence: c as u64,
                sessions: Vec::new(),
                rows: Rows::Decoded(chunk.iter().map(|i| i.mapped.event.clone()).collect()),
            };
            accepted.push((c * max, self.intake.take(batch, scope).await?));
        }
        let mut problems = Problems::default();
        for (offset, a) in accepted {
            let ack = a.ack().await;
            problems.ack(&ack, offset, &items)?;
        }

        // Prompt and response texts, with the sessions they belong to.
        let messages: Vec<(&Item, &pb::ChatMessage)> = items
            .iter()
            .flat_map(|i| i.mapped.messages.iter().map(move |m| (i, m)))
            .collect();
        let mut message_accepted = Vec::new();
        for (c, chunk) in messages.chunks(max / 2).enumerate() {
            let mut sessions: BTreeMap<Uuid, pb::ChatSession> = BTreeMap::new();
            for (item, m) in chunk {
                let s = sessions
                    .entry(item.mapped.session)
                    .or_insert_with(|| chat_session(item, m.timestamp));
                if s.model_id.is_none() {
                    s.model_id = item.mapped.event.model.clone();
                }
            }
            let batch = Batch {
                sequence: c as u64,
                sessions: sessions.into_values().collect(),
                rows: Rows::Decoded(chunk.iter().map(|(_, m)| (*m).clone()).collect()),
            };
            message_accepted.push((c, self.intake.take(batch, scope).await?));
        }
        for (c, a) in message_accepted {
            let ack = a.ack().await;
            let locators: Vec<String> = messages
                .iter()
                .skip(c * (max / 2))
                .take(max / 2)
                .map(|(item, m)| format!("{} (its {} text)", item.locator, m.role))
                .collect();
            problems.message_ack(&ack, &locators)?;
        }
        let (reports, ids) = self.sessions(&items);
        let (intake, scope) = (self.intake.clone(), scope.clone());
        let record = record_sessions(intake, reports, ids, scope);
        if self.intake.spool.is_some() {
            // The spool's promise: an answer that does not wait for the
            // database, which these upserts need.
            tokio::spawn(record);
        } else {
            record.await;
        }
        problems.outcome(items.len())
    }

    /// The agent sessions of an export's records (as reports to upsert),
    /// and the sessions whose chat sessions to count again.
    fn sessions(&self, items: &[Item]) -> (Vec<pb::SessionReport>, Vec<Uuid>) {
        let mut sessions: BTreeMap<Uuid, pb::AgentSession> = BTreeMap::new();
        for item in items.iter().filter(|i| i.mapped.session_named) {
            let e = &item.mapped.event;
            let s = sessions
                .entry(item.mapped.session)
                .or_insert_with(|| agent_session(item));
            let key = |t: &prost_types::Timestamp| (t.seconds, t.nanos);
            if let Some(ts) = e.timestamp {
                if s.start_time.is_none_or(|t| key(&ts) < key(&t)) {
                    s.start_time = Some(ts);
                }
                if s.end_time.is_none_or(|t| key(&ts) > key(&t)) {
                    s.end_time = Some(ts);
                }
            }
            if s.agent_version.is_empty() {
                s.agent_version.clone_from(&e.agent_version);
            }
            if s.user.is_none() {
                s.user.clone_from(&e.user);
            }
        }
        // Every session of the export: a later export of a session adds
        // tokens to its chat session without a message (a session with
        // no chat session is no row to update).
        let ids: Vec<Uuid> = items
            .iter()
            .map(|i| i.mapped.session)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let reports = sessions
            .into_values()
            .collect::<Vec<_>>()
            .chunks(self.intake.limits.max_batch_rows.max(1))
            .map(|chunk| pb::SessionReport {
                chat_sessions: Vec::new(),
                agent_sessions: chunk.to_vec(),
            })
            .collect();
        (reports, ids)
    }
}

/// Upserts an export's agent sessions and counts its chat sessions again.
/// Each export of a session does it again (its start only moves earlier,
/// its end later), so one that fails here (the database away while the
/// spool takes the rows) is made good by the session's next export; it
/// costs the export nothing.
async fn record_sessions(
    intake: Arc<Intake>,
    reports: Vec<pb::SessionReport>,
    ids: Vec<Uuid>,
    scope: Scope,
) {
    for report in reports {
        match intake.report_sessions(&report, &scope).await {
            Ok(out) if !out.agent_sessions_rejected.is_empty() => {
                tracing::warn!(rejected = ?out.agent_sessions_rejected, "OTLP: agent sessions not stored");
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "OTLP: agent sessions not stored now; the session's next export stores them");
            }
        }
    }
    if let Err(e) = intake.recount_chat_sessions(&ids).await {
        tracing::warn!(error = %e, "OTLP: chat sessions not counted now; the session's next export counts them");
    }
}

/// The agent session an OTLP record belongs to: OTLP has no session
/// start or end of its own, so its records' times bound it; its figures
/// are its events' (`agent_session_results`).
fn agent_session(item: &Item) -> pb::AgentSession {
    let e = &item.mapped.event;
    pb::AgentSession {
        id: item.mapped.session.to_string(),
        agent_id: item.mapped.agent.clone(),
        agent_version: e.agent_version.clone(),
        project: e.project.clone(),
        start_time: None,
        end_time: None,
        duration_s: None,
        context_json: r#"{"source":"otlp"}"#.into(),
        metrics_json: String::new(),
        outcome: String::new(),
        quality_score: None,
        user: e.user.clone(),
        organization: e.organization.clone(),
    }
}

/// Rows that name no developer, from a key that names none either, get
/// their agent installation's identity (Claude Code's `user.id`, Gemini
/// CLI's `installation.id`) as a machine's developer of last resort: the
/// key's developer ranks above it (intake fills that in), and a person's
/// account or email above both.
fn machine_developers(items: &mut [Item], scope: &Scope) {
    if scope.user().is_some() {
        return;
    }
    for item in items {
        let m = &mut item.mapped;
        if m.event.user.is_none()
            && let Some(id) = &m.installation
        {
            m.event.user = Some(pb::User {
                key: format!("{}{}:{id}", map::MACHINE_PREFIX, m.agent),
                display_name: format!("{} installation {}", m.agent, id.get(..8).unwrap_or(id)),
                email: String::new(),
            });
        }
    }
}

/// The chat session a prompt of `item` belongs to, with the workspace and
/// machine its resource describes.
fn chat_session(item: &Item, started: Option<prost_types::Timestamp>) -> pb::ChatSession {
    let agent = &item.mapped.agent;
    let project = &item.mapped.event.project;
    let h = &item.host;
    let machine_id = h
        .machine_id
        .clone()
        .or_else(|| {
            item.mapped
                .installation
                .as_ref()
                .map(|i| format!("{agent}-installation:{i}"))
        })
        .unwrap_or_else(|| "unknown".into());
    pb::ChatSession {
        session_id: item.mapped.session.to_string(),
        workspace: Some(pb::Workspace {
            // No editor workspace id in OTLP: one workspace per agent,
            // machine and project.
            workspace_id: format!("otlp:{agent}:{machine_id}:{project}"),
            workspace_path: String::new(),
            workspace_type: "otlp".into(),
            branch: None,
            commit: None,
            project: Some(pb::Project {
                name: project.clone(),
                repo_url: None,
                description: None,
                organization: item.mapped.event.organization.clone(),
            }),
            machine: Some(pb::Machine {
                machine_id,
                hostname: h.hostname.clone(),
                username: h.username.clone(),
                os_type: h.os_type.clone(),
                os_version: None,
                machine_type: "local".into(),
                ip_address: None,
                metadata_json: String::new(),
            }),
        }),
        agent_type: agent.clone(),
        model_id: item.mapped.event.model.clone(),
        started_at: started,
        ended_at: None,
        message_count: None,
        total_tokens: None,
        user: item.mapped.event.user.clone(),
    }
}

/// Rejected rows, collected across the batches of one export.
#[derive(Default)]
struct Problems {
    rejected: i64,
    denied: i64,
    lines: Vec<String>,
}

/// The first this many rejections are described in the message; the rest
/// are counted.
const DESCRIBED: usize = 20;

impl Problems {
    fn note(&mut self, line: String) {
        if self.lines.len() < DESCRIBED {
            self.lines.push(line);
        } else if self.lines.len() == DESCRIBED {
            self.lines.push("…".into());
        }
    }

    fn ack(&mut self, ack: &BatchOutcome, offset: usize, items: &[Item]) -> Result<(), OtlpError> {
        if let Some(f) = &ack.failure {
            if f.retryable() {
                return Err(OtlpError::NotStored(f.message.clone()));
            }
            // Rows the database refused for good: neither stored nor
            // rejected by validation.
            let lost = ack.lost();
            self.rejected += i64::from(lost);
            self.note(format!("{lost} rows not stored: {}", f.message));
        }
        for r in &ack.rejected {
            self.rejected += 1;
            if r.kind == RejectionKind::Denied {
                self.denied += 1;
            }
            let at = items
                .get(offset + r.index as usize)
                .map(|i| i.locator.as_str())
                .unwrap_or("?");
            self.note(format!("{at}: {}: {}", r.field, r.reason));
        }
        Ok(())
    }

    /// A text that fails validation does not cost its record: it is
    /// described, not counted.
    fn message_ack(&mut self, ack: &BatchOutcome, locators: &[String]) -> Result<(), OtlpError> {
        if let Some(f) = &ack.failure {
            if f.retryable() {
                return Err(OtlpError::NotStored(f.message.clone()));
            }
            self.note(format!("chat messages not stored: {}", f.message));
        }
        let sessions = ack
            .sessions_rejected
            .iter()
            .map(|r| ("its session".to_owned(), r));
        let rows = ack.rejected.iter().map(|r| {
            let at = locators.get(r.index as usize).cloned();
            (at.unwrap_or_else(|| "?".into()), r)
        });
        for (at, r) in rows.chain(sessions) {
            self.note(format!(
                "{at}: not stored as a chat message: {}: {}",
                r.field, r.reason
            ));
        }
        Ok(())
    }

    fn outcome(self, rows: usize) -> Result<Outcome, OtlpError> {
        let message = self.lines.join("; ");
        if self.denied > 0 && self.denied as usize == rows {
            return Err(OtlpError::Denied(message));
        }
        Ok(Outcome {
            rejected: self.rejected,
            message,
        })
    }
}
