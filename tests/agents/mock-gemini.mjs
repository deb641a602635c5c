// A mock of the Gemini API (generateContent and streamGenerateContent with
// `alt=sse`, as Google's API reference documents them, December 2026) for
// driving the real Gemini CLI offline in tests/agents.rs.
//
//   node mock-gemini.mjs <scenario> <request-log.jsonl>
//
// Listens on 127.0.0.1 (a free port) and prints "LISTENING <port>".
// Scenarios:
//   ok       first call (tools offered, no function response yet): the text
//            "I will run the command." and a `run_shell_command` call of
//            `echo hello`, with a thought part beside it; the call carrying
//            the function response: the text "Done: hello".
//   fail400  every call of the agent's turn answers HTTP 400 (not retried).
// Calls without tools (the model router, when the model is not pinned)
// are side calls. Each call answers with fixed token counts (USAGE), which
// the test asserts exactly, and is logged as one JSON line: {call, usage, status}.
import fs from 'node:fs';
import http from 'node:http';

const [scenario = 'ok', logFile] = process.argv.slice(2);

const USAGE = {
  main1: { promptTokenCount: 1111, candidatesTokenCount: 22, cachedContentTokenCount: 333, thoughtsTokenCount: 44, totalTokenCount: 1177 },
  main2: { promptTokenCount: 1250, candidatesTokenCount: 7, totalTokenCount: 1257 },
  side: { promptTokenCount: 501, candidatesTokenCount: 9, totalTokenCount: 510 },
};

const log = (entry) => {
  if (logFile) fs.appendFileSync(logFile, JSON.stringify(entry) + '\n');
};
const tools = (body) => (body.tools ?? []).flatMap((t) => (t.functionDeclarations ?? []).map((f) => f.name));
const answered = (body) => (body.contents?.at(-1)?.parts ?? []).some((p) => p.functionResponse);
const candidate = (parts, finishReason) => ({ content: { role: 'model', parts }, index: 0, ...(finishReason ? { finishReason } : {}) });

function chunks(call, body, model) {
  const meta = { modelVersion: model, responseId: `mock-${call}` };
  if (call === 'main1') {
    const shell = tools(body).find((n) => n === 'run_shell_command') ?? tools(body)[0];
    return [
      { candidates: [candidate([{ text: 'Deciding to run it.', thought: true }, { text: 'I will run the command.' }])], usageMetadata: { promptTokenCount: USAGE.main1.promptTokenCount }, ...meta },
      { candidates: [candidate([{ functionCall: { name: shell, args: { command: 'echo hello', description: 'Print hello' } } }], 'STOP')], usageMetadata: USAGE.main1, ...meta },
    ];
  }
  if (call === 'main2') {
    return [
      { candidates: [candidate([{ text: 'Done: ' }])], ...meta },
      { candidates: [candidate([{ text: 'hello' }], 'STOP')], usageMetadata: USAGE.main2, ...meta },
    ];
  }
  // The router asks for a JSON object: a low complexity score picks flash.
  const answer = JSON.stringify({ complexity_reasoning: 'mock', complexity_score: 20, next_speaker: 'user', reasoning: 'mock' });
  return [{ candidates: [candidate([{ text: answer }], 'STOP')], usageMetadata: USAGE.side, ...meta }];
}

const server = http.createServer((req, res) => {
  const raw = [];
  req.on('data', (c) => raw.push(c));
  req.on('end', () => {
    let body = {};
    try { body = JSON.parse(Buffer.concat(raw).toString('utf8') || '{}'); } catch { /* not JSON */ }
    const url = new URL(req.url, 'http://x');
    const m = url.pathname.match(/^\/v1(?:beta|alpha)?\/models\/([^:]+):(\w+)$/);
    if (!m) {
      log({ call: 'other', path: url.pathname, status: 404 });
      res.writeHead(404, { 'content-type': 'application/json' });
      return res.end(JSON.stringify({ error: { code: 404, message: 'mock: not found', status: 'NOT_FOUND' } }));
    }
    const [, model, method] = m;
    if (method === 'countTokens') {
      res.writeHead(200, { 'content-type': 'application/json' });
      return res.end(JSON.stringify({ totalTokens: 42 }));
    }
    const call = tools(body).length ? (answered(body) ? 'main2' : 'main1') : 'side';
    if (scenario === 'fail400' && call !== 'side') {
      log({ call, model, status: 400 });
      res.writeHead(400, { 'content-type': 'application/json' });
      return res.end(JSON.stringify({ error: { code: 400, message: 'mock invalid argument', status: 'INVALID_ARGUMENT' } }));
    }
    log({ call, model, status: 200, usage: USAGE[call] });
    const out = chunks(call, body, model);
    if (method === 'streamGenerateContent') {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      for (const c of out) res.write(`data: ${JSON.stringify(c)}\r\n\r\n`);
      return res.end();
    }
    const parts = out.flatMap((c) => c.candidates[0].content.parts);
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ ...out.at(-1), candidates: [candidate(parts, 'STOP')] }));
  });
});
server.listen(0, '127.0.0.1', () => process.stdout.write(`LISTENING ${server.address().port}\n`));
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(0));
