// A mock of OpenAI's Responses API (POST /v1/responses, streamed as
// server-sent events as the API documents them, December 2026) for
// driving the real Codex CLI offline in tests/agents.rs.
//
//   node mock-openai.mjs <scenario> <request-log.jsonl>
//
// Listens on 127.0.0.1 (a free port) and prints "LISTENING <port>".
// Scenarios:
//   ok         first call: a function call of the shell tool Codex offers
//              (`exec_command` in 0.169) running `echo hello`; the call
//              carrying its output: the text "Done: hello".
//   fail_once  the first call's stream fails (`response.failed`); Codex
//              retries (stream_max_retries = 1) and the rest is as "ok".
// Ids are unique to the process, as the API's are. Call n answers with
// USAGE[n] (failed calls count), which the test
// asserts exactly; each call is logged as one JSON line: {call, usage, status}.
import fs from 'node:fs';
import http from 'node:http';

const [scenario = 'ok', logFile] = process.argv.slice(2);

const USAGE = [
  { input_tokens: 1000, input_tokens_details: { cached_tokens: 200 }, output_tokens: 50, output_tokens_details: { reasoning_tokens: 10 }, total_tokens: 1050 },
  { input_tokens: 1300, input_tokens_details: { cached_tokens: 300 }, output_tokens: 70, output_tokens_details: { reasoning_tokens: 20 }, total_tokens: 1370 },
  { input_tokens: 1700, input_tokens_details: { cached_tokens: 400 }, output_tokens: 90, output_tokens_details: { reasoning_tokens: 30 }, total_tokens: 1790 },
];

let calls = 0;
let seq = 0;
const log = (entry) => {
  if (logFile) fs.appendFileSync(logFile, JSON.stringify(entry) + '\n');
};

const answered = (input) => (Array.isArray(input) ? input : []).some((i) => /_call_output$/.test(i?.type ?? ''));

function toolCall(tools, id) {
  const names = (tools ?? []).map((t) => t.name ?? t.type);
  if (names.includes('exec_command')) return { type: 'function_call', id: `fc_${id}`, call_id: id, name: 'exec_command', arguments: JSON.stringify({ cmd: 'echo hello' }), status: 'completed' };
  if (names.includes('shell')) return { type: 'function_call', id: `fc_${id}`, call_id: id, name: 'shell', arguments: JSON.stringify({ command: ['bash', '-lc', 'echo hello'] }), status: 'completed' };
  return null;
}

function stream(res, body, n) {
  const model = body.model;
  const response = (status, output, usage) => ({ id: `resp_mock_${process.pid}_${n}`, object: 'response', created_at: Math.floor(Date.now() / 1000), status, model, output, usage: usage ?? null });
  const event = (type, data) => res.write(`event: ${type}\ndata: ${JSON.stringify({ type, sequence_number: seq++, ...data })}\n\n`);
  res.writeHead(200, { 'content-type': 'text/event-stream', 'x-request-id': `req_mock_${process.pid}_${n}` });
  event('response.created', { response: response('in_progress', []) });
  if (scenario === 'fail_once' && n === 0) {
    event('response.failed', { response: { ...response('failed', []), error: { code: 'server_error', message: 'mock upstream failure' } } });
    return res.end();
  }
  let item = answered(body.input) ? null : toolCall(body.tools, `call_mock_${process.pid}_${n}`);
  if (item) {
    event('response.output_item.added', { output_index: 0, item: { ...item, arguments: '' } });
    event('response.function_call_arguments.delta', { item_id: item.id, output_index: 0, delta: item.arguments });
    event('response.function_call_arguments.done', { item_id: item.id, output_index: 0, arguments: item.arguments });
  } else {
    const text = 'Done: hello';
    item = { type: 'message', id: `msg_mock_${process.pid}_${n}`, role: 'assistant', status: 'completed', content: [{ type: 'output_text', text, annotations: [] }] };
    event('response.output_item.added', { output_index: 0, item: { ...item, content: [] } });
    event('response.output_text.delta', { item_id: item.id, output_index: 0, content_index: 0, delta: text });
    event('response.output_text.done', { item_id: item.id, output_index: 0, content_index: 0, text });
  }
  event('response.output_item.done', { output_index: 0, item });
  event('response.completed', { response: response('completed', [item], USAGE[Math.min(n, USAGE.length - 1)]) });
  res.end();
}

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    let body = {};
    try { body = JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}'); } catch { /* not JSON */ }
    const path = new URL(req.url, 'http://x').pathname;
    if (req.method === 'POST' && path.endsWith('/responses')) {
      const n = calls++;
      const failed = scenario === 'fail_once' && n === 0;
      log({ call: n, model: body.model, status: failed ? 'failed' : 200, usage: failed ? null : USAGE[Math.min(n, USAGE.length - 1)] });
      return stream(res, body, n);
    }
    // Codex also asks for its turn costs and the model list: nothing here.
    log({ call: 'other', path, status: 404 });
    res.writeHead(404, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ error: { message: `mock: no ${req.method} ${path}` } }));
  });
});
server.listen(0, '127.0.0.1', () => process.stdout.write(`LISTENING ${server.address().port}\n`));
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(0));
