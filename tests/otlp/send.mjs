// Sends one agent's documented OpenTelemetry records to the service with the
// official OpenTelemetry JS SDK and its OTLP exporters, as the agent itself
// would (Claude Code, Gemini CLI and Copilot are Node programs using this
// SDK; Codex's Rust exporter speaks the same protocol). Run by tests/otlp.rs.
//
//   node send.mjs <fixture> <grpc|http-proto|http-json> <endpoint> <now-ms>
//                 [--gzip] [--header name=value]...
//
// Fixtures: claude, gemini, codex, copilot, unknown, metrics. Attribute
// types follow what each agent sends: Claude Code and Codex send numbers as
// strings, Gemini CLI and Copilot as numbers. Timestamps derive from
// <now-ms> so that two runs with the same value send identical records.
// Exits non-zero if any export failed.
//
// What each fixture follows, as published for the version it names (late
// 2025): Claude Code 2.0.14, its "Monitoring" documentation; Gemini CLI,
// docs/telemetry.md of google-gemini/gemini-cli; Codex 0.46.0, the [otel]
// section of openai/codex's docs/config.md; Copilot Chat, which cannot run
// here, the OpenTelemetry GenAI semantic conventions and
// vscode-copilot-chat's docs/monitoring/agent_monitoring.md. The real Claude
// Code 2.1.328, Codex 0.169.0 and Gemini CLI 0.61.0 binaries are run by
// tests/agents.rs.

import { Metadata } from '@grpc/grpc-js';
import { DiagConsoleLogger, DiagLogLevel, SpanKind, SpanStatusCode, context, diag, trace } from '@opentelemetry/api';
import { setGlobalErrorHandler } from '@opentelemetry/core';
import { Resource } from '@opentelemetry/resources';
import { LoggerProvider, SimpleLogRecordProcessor } from '@opentelemetry/sdk-logs';
import { MeterProvider, PeriodicExportingMetricReader } from '@opentelemetry/sdk-metrics';
import { BasicTracerProvider, BatchSpanProcessor } from '@opentelemetry/sdk-trace-base';

import { OTLPLogExporter as LogsGrpc } from '@opentelemetry/exporter-logs-otlp-grpc';
import { OTLPLogExporter as LogsJson } from '@opentelemetry/exporter-logs-otlp-http';
import { OTLPLogExporter as LogsProto } from '@opentelemetry/exporter-logs-otlp-proto';
import { OTLPMetricExporter as MetricsGrpc } from '@opentelemetry/exporter-metrics-otlp-grpc';
import { AggregationTemporalityPreference, OTLPMetricExporter as MetricsJson } from '@opentelemetry/exporter-metrics-otlp-http';
import { OTLPMetricExporter as MetricsProto } from '@opentelemetry/exporter-metrics-otlp-proto';
import { OTLPTraceExporter as TraceGrpc } from '@opentelemetry/exporter-trace-otlp-grpc';
import { OTLPTraceExporter as TraceJson } from '@opentelemetry/exporter-trace-otlp-http';
import { OTLPTraceExporter as TraceProto } from '@opentelemetry/exporter-trace-otlp-proto';

const [fixture, protocol, endpoint, nowArg, ...rest] = process.argv.slice(2);
const now = Number(nowArg);
if (!fixture || !protocol || !endpoint || !Number.isFinite(now)) {
  console.error('usage: send.mjs <fixture> <grpc|http-proto|http-json> <endpoint> <now-ms> [--gzip] [--header k=v]...');
  process.exit(2);
}
let gzip = false;
const headers = {};
for (let i = 0; i < rest.length; i++) {
  if (rest[i] === '--gzip') gzip = true;
  else if (rest[i] === '--header') {
    const [k, ...v] = rest[++i].split('=');
    headers[k] = v.join('=');
  }
}

// The session ids the test looks the rows up by.
const SESSIONS = {
  claude: '6f1c2a7e-0d3b-4c1e-9a51-3b8e2f7d9c01',
  gemini: '2b7d9e41-5c6a-4f3b-8e2d-1a9c7b5e3f02',
  codex: '019a9776-0a34-7842-8627-112b63d66e90',
  copilot: 'c0c0a11d-7e3f-4b2a-9d6c-5e4f3a2b1c04',
};

const errors = [];
// The exporters report a partial success only as a warning: count it as a
// failure, the fixtures hold no bad record.
const console_ = new DiagConsoleLogger();
diag.setLogger({
  ...Object.fromEntries(['error', 'info', 'debug', 'verbose'].map((l) => [l, (...a) => console_[l](...a)])),
  warn: (msg, ...a) => {
    if (String(msg).includes('Partial Success')) errors.push(`${msg} ${a.map(String).join(' ')}`);
    console_.warn(msg, ...a);
  },
}, process.env.OTEL_LOG_LEVEL === 'debug' ? DiagLogLevel.DEBUG : DiagLogLevel.WARN);
setGlobalErrorHandler((e) => errors.push(String(e?.message ?? e)));

function exporterOptions(path) {
  if (protocol === 'grpc') {
    const metadata = new Metadata();
    for (const [k, v] of Object.entries(headers)) metadata.set(k, v);
    return { url: endpoint, metadata, ...(gzip ? { compression: 'gzip' } : {}) };
  }
  return { url: `${endpoint}${path}`, headers, ...(gzip ? { compression: 'gzip' } : {}) };
}

function logExporter() {
  const o = exporterOptions('/v1/logs');
  return protocol === 'grpc' ? new LogsGrpc(o) : protocol === 'http-proto' ? new LogsProto(o) : new LogsJson(o);
}
function traceExporter() {
  const o = exporterOptions('/v1/traces');
  return protocol === 'grpc' ? new TraceGrpc(o) : protocol === 'http-proto' ? new TraceProto(o) : new TraceJson(o);
}
// Delta, as Claude Code exports by default: each point counts only what
// happened since the last export.
function metricExporter() {
  const o = { ...exporterOptions('/v1/metrics'), temporalityPreference: AggregationTemporalityPreference.DELTA };
  return protocol === 'grpc' ? new MetricsGrpc(o) : protocol === 'http-proto' ? new MetricsProto(o) : new MetricsJson(o);
}

/** Emits log records: [name (body), attributes, ms after `now`]. */
async function emitLogs(resource, scope, records) {
  const provider = new LoggerProvider({ resource: new Resource(resource) });
  provider.addLogRecordProcessor(new SimpleLogRecordProcessor(logExporter()));
  const logger = provider.getLogger(scope.name, scope.version);
  for (const [body, attributes, offset] of records) {
    // A Date: the SDK takes a small number for an offset from process start.
    const t = new Date(now - 60_000 + offset);
    logger.emit({ timestamp: t, observedTimestamp: t, severityNumber: 9, severityText: 'INFO', body, attributes });
  }
  await provider.forceFlush();
  await provider.shutdown();
}

const claudeResource = {
  'service.name': 'claude-code',
  'service.version': '2.0.14',
  'os.type': 'linux',
  'os.version': '6.8.0',
  'host.arch': 'amd64',
  // Set by the user through OTEL_RESOURCE_ATTRIBUTES (docs/otlp.md).
  'project.name': 'acme/web',
};

function claudeStandard(seq) {
  return {
    'session.id': SESSIONS.claude,
    'organization.id': '9d2f6a3c-1111-4c2e-8a4b-5e6f7a8b9c0d',
    'user.account_uuid': '4a5b6c7d-2222-4e8f-9a0b-1c2d3e4f5a6b',
    'terminal.type': 'vscode',
    'event.timestamp': new Date(now - 60_000 + seq * 1000).toISOString(),
    'event.sequence': seq,
  };
}

async function claude() {
  await emitLogs(claudeResource, { name: 'com.anthropic.claude_code.events', version: '2.0.14' }, [
    ['claude_code.user_prompt', { ...claudeStandard(1), 'event.name': 'user_prompt', 'prompt.id': 'p-1', prompt_length: '27', prompt: 'Fix the failing date parser' }, 1000],
    ['claude_code.api_request', {
      ...claudeStandard(2), 'event.name': 'api_request', 'prompt.id': 'p-1',
      model: 'claude-sonnet-4-5-20250929', cost_usd: '0.0213', duration_ms: '2345',
      input_tokens: '120', output_tokens: '340', cache_read_tokens: '5000', cache_creation_tokens: '800',
    }, 2000],
    ['claude_code.tool_result', {
      ...claudeStandard(3), 'event.name': 'tool_result', tool_name: 'Edit', success: 'true', duration_ms: '45',
      decision: 'accept', source: 'config', tool_parameters: '{"file_path":"src/date.ts"}',
    }, 3000],
    ['claude_code.tool_decision', { ...claudeStandard(4), 'event.name': 'tool_decision', tool_name: 'Bash', decision: 'reject', source: 'user_reject' }, 4000],
    ['claude_code.api_error', {
      ...claudeStandard(5), 'event.name': 'api_error', model: 'claude-sonnet-4-5-20250929',
      error: 'Overloaded', status_code: '529', duration_ms: '1200', attempt: '1',
    }, 5000],
  ]);
}

async function gemini() {
  const common = { 'session.id': SESSIONS.gemini, 'installation.id': 'inst-7', 'user.email': 'dev@example.com' };
  await emitLogs(
    { 'service.name': 'gemini-cli', 'service.version': '0.9.0', 'host.name': 'devbox', 'os.type': 'linux' },
    { name: 'gemini-cli', version: '0.9.0' },
    [
      ['User prompt. Length: 20.', { ...common, 'event.name': 'gemini_cli.user_prompt', prompt_length: 20, prompt_id: 'pr-9', prompt: 'Add a README section', auth_type: 'oauth-personal' }, 1000],
      ['API response from gemini-2.5-pro. Status: 200. Duration: 1800ms.', {
        ...common, 'event.name': 'gemini_cli.api_response', model: 'gemini-2.5-pro', status_code: 200, duration_ms: 1800,
        input_token_count: 9000, output_token_count: 400, cached_content_token_count: 6000,
        thoughts_token_count: 150, tool_token_count: 0, total_token_count: 9550, prompt_id: 'pr-9',
        response_text: 'Here is the section.', auth_type: 'oauth-personal',
      }, 2000],
      ['Tool call: write_file. Decision: accept. Success: true. Duration: 30ms.', {
        ...common, 'event.name': 'gemini_cli.tool_call', function_name: 'write_file',
        function_args: '{"file_path":"README.md"}', duration_ms: 30, success: true, decision: 'accept', prompt_id: 'pr-9',
      }, 3000],
      ['API error for gemini-2.5-pro. Error: quota. StatusCode: 429. Duration: 100ms.', {
        ...common, 'event.name': 'gemini_cli.api_error', model: 'gemini-2.5-pro', error: 'quota',
        error_type: 'RESOURCE_EXHAUSTED', status_code: 429, duration_ms: 100, prompt_id: 'pr-9',
      }, 4000],
    ],
  );
}

async function codex() {
  const common = {
    'conversation.id': SESSIONS.codex, 'app.version': '0.46.0', auth_mode: 'ChatGPT',
    'terminal.type': 'xterm-256color', model: 'gpt-5-codex', slug: 'gpt-5-codex',
  };
  await emitLogs(
    { 'service.name': 'codex_cli_rs', 'service.version': '0.46.0', env: 'dev' },
    { name: 'codex_otel', version: '0.46.0' },
    [
      ['', { ...common, 'event.name': 'codex.user_prompt', 'event.timestamp': new Date(now - 59_000).toISOString(), prompt_length: '16', prompt: 'Refactor the CLI' }, 1000],
      ['', {
        ...common, 'event.name': 'codex.sse_event', 'event.kind': 'response.completed',
        input_token_count: '12000', output_token_count: '900', cached_token_count: '8000',
        reasoning_token_count: '300', tool_token_count: '0', duration_ms: '5100',
      }, 2000],
      ['', { ...common, 'event.name': 'codex.sse_event', 'event.kind': 'response.output_item.done', duration_ms: '4900' }, 2500],
      ['', {
        ...common, 'event.name': 'codex.tool_result', tool_name: 'shell', call_id: 'call_42',
        arguments: '{"command":["cargo","test"]}', duration_ms: '2300', success: 'false', output: 'error: 2 tests failed',
      }, 3000],
      ['', { ...common, 'event.name': 'codex.tool_decision', tool_name: 'shell', call_id: 'call_42', decision: 'approved', source: 'config' }, 2800],
    ],
  );
}

async function copilot() {
  // Ids derived from <now>: a second run with the same value resends the
  // same spans, as an exporter's retry does.
  let spans = 0;
  const idGenerator = {
    generateTraceId: () => now.toString(16).padStart(32, '0'),
    generateSpanId: () => `${(now % 0xffffffff).toString(16).padStart(8, '0')}${(++spans).toString(16).padStart(8, '0')}`,
  };
  const provider = new BasicTracerProvider({
    idGenerator,
    resource: new Resource({ 'service.name': 'copilot-chat', 'service.version': '0.33.0', 'host.name': 'laptop-42', 'os.type': 'darwin' }),
  });
  // Batched, as Copilot exports: a turn's spans travel together.
  provider.addSpanProcessor(new BatchSpanProcessor(traceExporter(), { scheduledDelayMillis: 60_000 }));
  const tracer = provider.getTracer('copilot-chat', '0.33.0');
  const t0 = now - 60_000;
  const conv = { 'gen_ai.conversation.id': SESSIONS.copilot, 'copilot_chat.session_id': SESSIONS.copilot };
  const root = tracer.startSpan('invoke_agent copilot', {
    kind: SpanKind.INTERNAL,
    startTime: new Date(t0),
    attributes: {
      ...conv,
      'gen_ai.operation.name': 'invoke_agent', 'gen_ai.provider.name': 'github', 'gen_ai.agent.name': 'copilot',
      'gen_ai.request.model': 'gpt-4o', 'gen_ai.response.model': 'gpt-4o-2024-08-06',
      'gen_ai.usage.input_tokens': 1500, 'gen_ai.usage.output_tokens': 250, 'gen_ai.usage.cache_read.input_tokens': 1200,
      'github.copilot.agent.type': 'builtin',
      'github.copilot.git.repository': 'https://github.com/acme/copilot-proj.git',
      'github.copilot.git.branch': 'main',
      'copilot_chat.turn_count': 2,
      'gen_ai.input.messages': JSON.stringify([{ role: 'user', parts: [{ type: 'text', content: 'Explain this function' }] }]),
      'gen_ai.output.messages': JSON.stringify([{ role: 'assistant', parts: [{ type: 'text', content: 'It parses ISO dates.' }] }]),
    },
  });
  const parent = trace.setSpan(context.active(), root);
  const chat = tracer.startSpan('chat gpt-4o', {
    kind: SpanKind.CLIENT,
    startTime: new Date(t0 + 100),
    attributes: {
      ...conv,
      'gen_ai.operation.name': 'chat', 'gen_ai.provider.name': 'github', 'gen_ai.request.model': 'gpt-4o',
      'gen_ai.response.model': 'gpt-4o-2024-08-06', 'gen_ai.response.id': 'chatcmpl-abc123',
      'gen_ai.usage.input_tokens': 1500, 'gen_ai.usage.output_tokens': 250, 'gen_ai.usage.cache_read.input_tokens': 1200,
      'gen_ai.request.max_tokens': 2048, 'gen_ai.response.finish_reasons': ['stop'],
    },
  }, parent);
  chat.setStatus({ code: SpanStatusCode.OK });
  chat.end(new Date(t0 + 3100));
  const tool = tracer.startSpan('execute_tool readFile', {
    kind: SpanKind.INTERNAL,
    startTime: new Date(t0 + 3200),
    attributes: { ...conv, 'gen_ai.operation.name': 'execute_tool', 'gen_ai.tool.name': 'readFile', 'gen_ai.tool.type': 'function', 'gen_ai.tool.call.id': 'call_abc123' },
  }, parent);
  tool.end(new Date(t0 + 3250));
  root.end(new Date(t0 + 4000));
  await provider.forceFlush();
  await provider.shutdown();
}

async function unknown() {
  await emitLogs(
    { 'service.name': 'my-agent', 'service.version': '1.2.3' },
    { name: 'my-agent' },
    [['my_agent.plan_created', { 'event.name': 'my_agent.plan_created', 'session.id': 'run-77', steps: 3, planner: 'tree' }, 1000]],
  );
}

/** Claude Code's metrics for the same requests as its events. */
async function metrics() {
  const reader = new PeriodicExportingMetricReader({ exporter: metricExporter(), exportIntervalMillis: 60_000 });
  const provider = new MeterProvider({ resource: new Resource(claudeResource), readers: [reader] });
  const meter = provider.getMeter('com.anthropic.claude_code', '2.0.14');
  const std = { 'session.id': SESSIONS.claude, 'user.account_uuid': '4a5b6c7d-2222-4e8f-9a0b-1c2d3e4f5a6b' };
  const model = 'claude-sonnet-4-5-20250929';
  const tokens = meter.createCounter('claude_code.token.usage', { unit: 'tokens' });
  tokens.add(120, { ...std, type: 'input', model });
  tokens.add(340, { ...std, type: 'output', model });
  tokens.add(5000, { ...std, type: 'cacheRead', model });
  tokens.add(800, { ...std, type: 'cacheCreation', model });
  meter.createCounter('claude_code.cost.usage', { unit: 'USD' }).add(0.0213, { ...std, model });
  meter.createCounter('claude_code.session.count').add(1, std);
  const lines = meter.createCounter('claude_code.lines_of_code.count');
  lines.add(25, { ...std, type: 'added' });
  lines.add(7, { ...std, type: 'removed' });
  meter.createCounter('claude_code.commit.count').add(1, std);
  meter.createCounter('claude_code.pull_request.count').add(1, std);
  await provider.forceFlush();
  await provider.shutdown();
}

const fixtures = { claude, gemini, codex, copilot, unknown, metrics };
if (!fixtures[fixture]) {
  console.error(`unknown fixture ${fixture}`);
  process.exit(2);
}
await fixtures[fixture]();
if (errors.length) {
  console.error(`export failed: ${errors.join('; ')}`);
  process.exit(1);
}
console.log(`sent ${fixture} over ${protocol}${gzip ? ' (gzip)' : ''}`);
