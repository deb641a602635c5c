/**
 * A VS Code extension's view of agent-telemetry (docs/api.md, "The protocol
 * a client follows"), with @grpc/grpc-js and the proto loaded at run time:
 *
 * - every event gets a UUID, so a resent event is recognised, not stored twice;
 * - every batch is kept until its ack says it is done; after a broken stream
 *   the client reconnects and resends every batch without such an ack;
 * - a retryable ack (buffer or spool full, database unreachable) or
 *   RESOURCE_EXHAUSTED / UNAVAILABLE makes it back off (exponential, with
 *   jitter) and resend;
 * - rows rejected for their content are reported, not resent;
 * - the API key goes in `authorization: Bearer atk_...`.
 *
 * In an extension, `Sender` would live in `activate()` and get events from
 * the agent's hooks; here `main` sends a generated session.
 *
 * The endpoint is written as for `agent-telemetry loadgen`: http://host:port,
 * or https://host:port for a TLS listener (--ca-file to trust its
 * certificate, --tls-server-name where the certificate names another host).
 *
 * Usage: node dist/sendEvents.js --endpoint http://127.0.0.1:50051 --events 1000 --project acme/api
 *        (AGENT_TELEMETRY_API_KEY holds the key, if the service needs one)
 * README.md says how to run it outside this repository.
 */
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { randomUUID } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";

/**
 * The service's .proto files: AGENT_TELEMETRY_PROTO_DIR, else a proto/
 * folder in this example's folder (copied there to use it on its own), else
 * the repository's.
 */
function protoDir(): string {
  const candidates = [
    process.env.AGENT_TELEMETRY_PROTO_DIR,
    path.resolve(__dirname, "../proto"),
    path.resolve(__dirname, "../../../proto"),
  ];
  const found = candidates.find((d) => d && fs.existsSync(path.join(d, "agent_telemetry/v1/telemetry.proto")));
  if (!found) {
    throw new Error("no agent_telemetry/v1/telemetry.proto: copy the repository's proto/ folder into this example's folder, or set AGENT_TELEMETRY_PROTO_DIR");
  }
  return found;
}

/** Where and how to connect: http://host:port, https://host:port (a bare host:port is plain text). */
export interface Target { endpoint: string; caFile?: string; tlsServerName?: string }

function channel(t: Target): { address: string; credentials: grpc.ChannelCredentials; options: Record<string, string> } {
  if (t.endpoint.startsWith("https://")) {
    // Without a CA file, Node's bundled roots.
    const roots = t.caFile ? fs.readFileSync(t.caFile) : null;
    return {
      address: t.endpoint.slice("https://".length),
      credentials: grpc.credentials.createSsl(roots),
      options: t.tlsServerName ? { "grpc.ssl_target_name_override": t.tlsServerName } : {},
    };
  }
  if (t.caFile || t.tlsServerName) {
    throw new Error(`--ca-file and --tls-server-name are for an https endpoint; ${t.endpoint} is plain text`);
  }
  return { address: t.endpoint.replace(/^http:\/\//, ""), credentials: grpc.credentials.createInsecure(), options: {} };
}

interface Timestamp { seconds: number; nanos: number }
interface AgentEvent {
  id: string; timestamp: Timestamp; eventType: string; agentId: string; agentVersion: string;
  sessionId: string; project: string; dataJson?: string; model?: string;
  inputTokens?: number; outputTokens?: number; costUsd?: number;
}
interface Batch { sequence: number; events: AgentEvent[] }
interface Rejection { index: number; field: string; reason: string; code: string }
interface Ack {
  sequence: string; received: number; stored: number; duplicates: number; spooled: number;
  rejected: Rejection[]; error: string; retryable: boolean;
}

// Codes after which a resend can succeed; anything else is a bug to report.
const RETRY_CODES = new Set([
  grpc.status.UNAVAILABLE, grpc.status.RESOURCE_EXHAUSTED, grpc.status.DEADLINE_EXCEEDED,
  grpc.status.ABORTED, grpc.status.CANCELLED, grpc.status.INTERNAL,
]);

function loadService(): grpc.ServiceClientConstructor {
  const definition = protoLoader.loadSync("agent_telemetry/v1/telemetry.proto", {
    includeDirs: [protoDir()],
    longs: String, // uint64 sequence numbers arrive as strings
    defaults: true,
    oneofs: true,
  });
  const pkg = grpc.loadPackageDefinition(definition) as any;
  return pkg.agent_telemetry.v1.TelemetryIngest;
}

/** A batch is done when nothing in it is left to resend. */
function done(ack: Ack): boolean {
  return !ack.error && ack.stored + ack.duplicates + ack.spooled + ack.rejected.length === ack.received;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export class Sender {
  readonly stats = { stored: 0, duplicates: 0, spooled: 0, rejected: 0, resent: 0, reconnects: 0, backoffs: 0 };
  private readonly client: grpc.Client & Record<string, any>;
  private readonly metadata = new grpc.Metadata();

  constructor(target: Target, apiKey?: string, private readonly window = 8) {
    const Service = loadService();
    const c = channel(target);
    this.client = new Service(c.address, c.credentials, {
      "grpc.default_compression_algorithm": 2, // gzip
      ...c.options,
    }) as any;
    if (apiKey) this.metadata.set("authorization", `Bearer ${apiKey}`);
  }

  /** Sends every batch until each is done. */
  async sendAll(batches: Batch[]): Promise<typeof this.stats> {
    const pending = new Map(batches.map((b) => [b.sequence, b]));
    let attempt = 0;
    let first = true;
    while (pending.size > 0) {
      if (!first) this.stats.resent += pending.size;
      first = false;
      let retry: boolean;
      try {
        retry = await this.streamOnce(pending);
      } catch (e: any) {
        if (!RETRY_CODES.has(e.code)) throw e;
        console.error(`stream ended: ${grpc.status[e.code]}: ${e.details}; reconnecting`);
        this.stats.reconnects++;
        retry = true;
      }
      if (pending.size > 0 && retry) {
        this.stats.backoffs++;
        await sleep(Math.min(10_000, 100 * 2 ** attempt) * (0.5 + Math.random() / 2));
        attempt++;
      } else {
        attempt = 0;
      }
    }
    return this.stats;
  }

  /**
   * One stream carrying every pending batch, at most `window` without an
   * ack. Deletes the batches whose ack says done; resolves to whether any
   * ack asked for a later resend.
   */
  private streamOnce(pending: Map<number, Batch>): Promise<boolean> {
    return new Promise((resolve, reject) => {
      const order = [...pending.keys()].sort((a, b) => a - b);
      const call: grpc.ClientDuplexStream<Batch, Ack> = this.client.StreamAgentEvents(this.metadata);
      let next = 0;
      let inFlight = 0;
      let retry = false;
      const fill = () => {
        while (inFlight < this.window && next < order.length) {
          call.write(pending.get(order[next++])!);
          inFlight++;
        }
        if (next === order.length) call.end();
      };
      call.on("data", (ack: Ack) => {
        inFlight--;
        const seq = Number(ack.sequence);
        for (const r of ack.rejected) {
          console.error(`batch ${seq} row ${r.index}: ${r.field}: ${r.reason} (${r.code})`);
        }
        if (done(ack)) {
          this.stats.stored += ack.stored;
          this.stats.duplicates += ack.duplicates;
          this.stats.spooled += ack.spooled;
          this.stats.rejected += ack.rejected.length;
          pending.delete(seq);
        } else if (ack.retryable) {
          retry = true; // stays pending: resent after a back-off
        } else {
          call.cancel();
          reject(new Error(`batch ${seq} failed for good: ${ack.error}`));
          return;
        }
        fill();
      });
      call.on("error", reject);
      call.on("end", () => resolve(retry));
      fill();
    });
  }

  close(): void {
    this.client.close();
  }
}

/** `n` events of one session in batches, timestamps now. */
function makeEvents(n: number, project: string, batchSize: number): Batch[] {
  const session = randomUUID();
  const batches: Batch[] = [];
  let events: AgentEvent[] = [];
  for (let i = 0; i < n; i++) {
    const now = Date.now();
    const ev: AgentEvent = {
      id: randomUUID(),
      timestamp: { seconds: Math.floor(now / 1000), nanos: (now % 1000) * 1_000_000 },
      eventType: i % 4 === 0 ? "llm_request" : "tool_use",
      agentId: "vscode-extension",
      agentVersion: "0.1.0",
      sessionId: session,
      project,
      dataJson: i % 4 === 0 ? "{}" : '{"tool_name": "edit_file"}',
    };
    if (i % 4 === 0) Object.assign(ev, { model: "claude-sonnet-4.5", inputTokens: 1500, outputTokens: 250, costUsd: 0.0083 });
    events.push(ev);
    if (events.length === batchSize || i === n - 1) {
      batches.push({ sequence: batches.length + 1, events });
      events = [];
    }
  }
  return batches;
}

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : fallback;
}

async function main() {
  const env = process.env;
  const target: Target = {
    endpoint: arg("endpoint", env.AGENT_TELEMETRY_ENDPOINT ?? "http://127.0.0.1:50051"),
    caFile: arg("ca-file", env.AGENT_TELEMETRY_CA_FILE ?? "") || undefined,
    tlsServerName: arg("tls-server-name", env.AGENT_TELEMETRY_TLS_SERVER_NAME ?? "") || undefined,
  };
  // Better in AGENT_TELEMETRY_API_KEY: a flag shows in `ps`.
  const sender = new Sender(target, arg("api-key", env.AGENT_TELEMETRY_API_KEY ?? "") || undefined);
  const batches = makeEvents(Number(arg("events", "1000")), arg("project", "acme/vscode"), Number(arg("batch-size", "200")));
  const stats = await sender.sendAll(batches);
  sender.close();
  console.log(Object.entries(stats).map(([k, v]) => `${k}=${v}`).join(" "));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
