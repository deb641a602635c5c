// A mock of Anthropic's Messages API (POST /v1/messages, streamed as
// server-sent events as the API documents them, December 2026) for
// driving the real Claude Code CLI offline in tests/agents.rs.
//
//   node mock-anthropic.mjs <scenario> <request-log.jsonl>
//
// Listens on 127.0.0.1 (a free port) and prints "LISTENING <port>".
// Scenarios:
//   ok        first call (tools offered, no tool result yet): a Bash tool
//             use running `echo hello`; the call carrying its result: the
//             text "Done: hello".
//   subagent  first call: the Agent tool with a task marked "SUBTASK:";
//             the subagent's two calls as "ok"; then the final text.
//   fail500   every call of the agent's turn answers HTTP 500.
// Message and request ids are unique to the process, as the API's are.
// Each call answers with fixed token counts (USAGE), which the test
// asserts exactly, and is logged as one JSON line: {call, usage, status}.
import fs from 'node:fs';
import http from 'node:http';

const [scenario = 'ok', logFile] = process.argv.slice(2);

// As the API sends it: the cache writes also broken down by lifetime.
const usage = (input, output, read, written) => ({
  input_tokens: input, output_tokens: output, cache_read_input_tokens: read, cache_creation_input_tokens: written,
  cache_creation: { ephemeral_5m_input_tokens: written, ephemeral_1h_input_tokens: 0 },
});
const USAGE = {
  main1: usage(1200, 40, 300, 100),
  main2: usage(1500, 12, 1400, 50),
  sub1: usage(2100, 30, 600, 200),
  sub2: usage(2200, 9, 2000, 25),
  side: usage(77, 7, 0, 0),
};
const SUBTASK = 'SUBTASK:';

let seq = 0;
const log = (entry) => {
  if (logFile) fs.appendFileSync(logFile, JSON.stringify(entry) + '\n');
};

const userBlocks = (body) => (body?.messages ?? [])
  .filter((m) => m.role === 'user')
  .flatMap((m) => (typeof m.content === 'string' ? [{ type: 'text', text: m.content }] : m.content ?? []));
// Any tool result in the conversation: subagent requests add reminders
// after it, so the last message alone does not tell.
const answered = (body) => userBlocks(body).some((b) => b?.type === 'tool_result');
const isSubagent = (body) => userBlocks(body).some((b) => b?.type === 'text' && b.text.includes(SUBTASK));

function classify(body) {
  if (!(body?.tools ?? []).some((t) => t.name === 'Bash')) return 'side';
  if (scenario === 'subagent' && isSubagent(body)) return answered(body) ? 'sub2' : 'sub1';
  return answered(body) ? 'main2' : 'main1';
}

function reply(call) {
  const bash = { type: 'tool_use', id: `toolu_mock_${process.pid}_${call}`, name: 'Bash', input: { command: 'echo hello', description: 'Print hello' } };
  switch (call) {
    case 'main1':
      return scenario === 'subagent'
        ? [[{ type: 'tool_use', id: 'toolu_mock_agent', name: 'Agent', input: { description: 'Echo hello', prompt: `${SUBTASK} run echo hello`, subagent_type: 'general-purpose', run_in_background: false } }], 'tool_use']
        : [[bash], 'tool_use'];
    case 'sub1':
      return [[bash], 'tool_use'];
    case 'sub2':
      return [[{ type: 'text', text: 'Sub done: hello' }], 'end_turn'];
    case 'main2':
      return [[{ type: 'text', text: 'Done: hello' }], 'end_turn'];
    default:
      return [[{ type: 'text', text: 'Echo hello' }], 'end_turn'];
  }
}

function send(res, body, call) {
  const [content, stop] = reply(call);
  const usage = USAGE[call];
  const message = { id: `msg_mock_${process.pid}_${seq}`, type: 'message', role: 'assistant', model: body.model, content, stop_reason: stop, stop_sequence: null, usage };
  if (!body.stream) {
    res.writeHead(200, { 'content-type': 'application/json', 'request-id': `req_mock_${process.pid}_${seq}` });
    return res.end(JSON.stringify(message));
  }
  res.writeHead(200, { 'content-type': 'text/event-stream', 'request-id': `req_mock_${process.pid}_${seq}` });
  const event = (type, data) => res.write(`event: ${type}\ndata: ${JSON.stringify({ type, ...data })}\n\n`);
  event('message_start', { message: { ...message, content: [], stop_reason: null, usage: { ...usage, output_tokens: 1 } } });
  content.forEach((block, index) => {
    if (block.type === 'text') {
      event('content_block_start', { index, content_block: { type: 'text', text: '' } });
      event('content_block_delta', { index, delta: { type: 'text_delta', text: block.text } });
    } else {
      event('content_block_start', { index, content_block: { ...block, input: {} } });
      event('content_block_delta', { index, delta: { type: 'input_json_delta', partial_json: JSON.stringify(block.input) } });
    }
    event('content_block_stop', { index });
  });
  event('message_delta', { delta: { stop_reason: stop, stop_sequence: null }, usage });
  event('message_stop', {});
  res.end();
}

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    seq += 1;
    let body = {};
    try { body = JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}'); } catch { /* not JSON */ }
    const path = (req.url ?? '').split('?')[0];
    if (req.method === 'POST' && path === '/v1/messages') {
      const call = classify(body);
      if (scenario === 'fail500' && call !== 'side') {
        log({ call, model: body.model, status: 500 });
        res.writeHead(500, { 'content-type': 'application/json', 'request-id': `req_mock_${process.pid}_${seq}` });
        return res.end(JSON.stringify({ type: 'error', error: { type: 'api_error', message: 'Mock internal server error' } }));
      }
      log({ call, model: body.model, status: 200, usage: USAGE[call] });
      return send(res, body, call);
    }
    log({ call: 'other', path, status: path === '/v1/messages/count_tokens' ? 200 : 404 });
    if (path === '/v1/messages/count_tokens') {
      res.writeHead(200, { 'content-type': 'application/json' });
      return res.end(JSON.stringify({ input_tokens: 123 }));
    }
    res.writeHead(404, { 'content-type': 'application/json' });
    res.end('{}');
  });
});
server.listen(0, '127.0.0.1', () => process.stdout.write(`LISTENING ${server.address().port}\n`));
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(0));
