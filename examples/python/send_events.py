#!/usr/bin/env python3
"""An agent SDK's view of agent-telemetry: batch events, stream them, and
never lose one (docs/api.md, "The protocol a client follows").

- Every event gets a UUID, so a resent event is recognised, not stored twice.
- Every batch is kept until its ack says it is done; after a broken stream
  the client reconnects and resends every batch without such an ack.
- A retryable ack (buffer or spool full, database unreachable) or
  RESOURCE_EXHAUSTED / UNAVAILABLE makes it back off (exponential, with
  jitter) and resend.
- Rows rejected for their content are reported, not resent.
- The API key goes in `authorization: Bearer atk_...`.
- The endpoint is written as for `agent-telemetry loadgen`: http://host:port,
  or https://host:port for a TLS listener (--ca-file to trust its
  certificate, --tls-server-name where the certificate names another host).

Usage: send_events.py --endpoint http://127.0.0.1:50051 --events 1000 --project acme/api
       (AGENT_TELEMETRY_API_KEY holds the key, if the service needs one)
README.md says how to run it outside this repository.
"""

import argparse
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
GENERATED = HERE / "_generated"


def proto_dir():
    """The service's .proto files: AGENT_TELEMETRY_PROTO_DIR, else a proto/
    folder next to this script (copied there to use it on its own), else
    the repository's."""
    for d in (os.environ.get("AGENT_TELEMETRY_PROTO_DIR"), HERE / "proto",
              HERE.parent.parent / "proto"):
        if d and (Path(d) / "agent_telemetry/v1/telemetry.proto").exists():
            return Path(d)
    sys.exit("no agent_telemetry/v1/telemetry.proto: copy the repository's proto/ "
             "folder next to send_events.py, or set AGENT_TELEMETRY_PROTO_DIR")


def load_stubs():
    """Generates the Python stubs from proto/ on first use (grpcio-tools
    bundles its own protoc, so nothing else is needed)."""
    proto = proto_dir()
    source = proto / "agent_telemetry/v1/telemetry.proto"
    stub = GENERATED / "agent_telemetry/v1/telemetry_pb2_grpc.py"
    if not stub.exists() or stub.stat().st_mtime < source.stat().st_mtime:
        GENERATED.mkdir(exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "grpc_tools.protoc", f"-I{proto}",
             f"--python_out={GENERATED}", f"--grpc_python_out={GENERATED}",
             "agent_telemetry/v1/telemetry.proto"],
            check=True)
    sys.path.insert(0, str(GENERATED))
    from agent_telemetry.v1 import telemetry_pb2, telemetry_pb2_grpc
    return telemetry_pb2, telemetry_pb2_grpc


pb, pb_grpc = load_stubs()
import grpc  # noqa: E402  (after the stubs, which import it too)

# Codes after which a resend can succeed; anything else is a bug to report.
RETRY_CODES = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED,
               grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED,
               grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL}


def done(ack):
    """A batch is done when nothing in it is left to resend."""
    settled = ack.stored + ack.duplicates + ack.spooled + len(ack.rejected)
    return not ack.error and settled == ack.received


def channel_to(endpoint, ca_file=None, server_name=None):
    """A channel to `endpoint` (http://host:port, https://host:port; a bare
    host:port is plain text)."""
    if endpoint.startswith("https://"):
        roots = Path(ca_file).read_bytes() if ca_file else None  # None: the system's
        options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
        return grpc.secure_channel(endpoint.removeprefix("https://"),
                                   grpc.ssl_channel_credentials(root_certificates=roots),
                                   options=options)
    if ca_file or server_name:
        sys.exit(f"--ca-file and --tls-server-name are for an https endpoint; {endpoint} is plain text")
    return grpc.insecure_channel(endpoint.removeprefix("http://"))


class Sender:
    def __init__(self, connect, api_key=None, window=8):
        self.connect = connect
        self.metadata = [("authorization", f"Bearer {api_key}")] if api_key else []
        self.window = window
        self.stats = dict(stored=0, duplicates=0, spooled=0, rejected=0,
                          resent=0, reconnects=0, backoffs=0)

    def send_all(self, batches):
        """Sends every batch until each is done; returns the stats."""
        pending = {b.sequence: b for b in batches}
        attempt = 0
        first = True
        while pending:
            if not first:
                self.stats["resent"] += len(pending)
            first = False
            try:
                retry = self._stream_once(pending)
            except grpc.RpcError as e:
                if e.code() not in RETRY_CODES:
                    raise
                print(f"stream ended: {e.code().name}: {e.details()}; reconnecting",
                      file=sys.stderr)
                self.stats["reconnects"] += 1
                retry = True
            if pending and retry:
                self.stats["backoffs"] += 1
                delay = min(10.0, 0.1 * 2 ** attempt) * random.uniform(0.5, 1.0)
                attempt += 1
                time.sleep(delay)
            else:
                attempt = 0
        return self.stats

    def _stream_once(self, pending):
        """One stream carrying every pending batch, at most `window` without
        an ack. Removes the batches whose ack says done; returns whether
        any ack asked for a later resend."""
        slots = threading.Semaphore(self.window)
        order = sorted(pending)

        def requests():
            for seq in order:
                slots.acquire()
                yield pending[seq]

        retry = False
        with self.connect() as channel:
            stub = pb_grpc.TelemetryIngestStub(channel)
            acks = stub.StreamAgentEvents(requests(), metadata=self.metadata,
                                          compression=grpc.Compression.Gzip)
            for ack in acks:
                slots.release()
                for r in ack.rejected:
                    print(f"batch {ack.sequence} row {r.index}: {r.field}: {r.reason} ({r.code})",
                          file=sys.stderr)
                if done(ack):
                    for key in ("stored", "duplicates", "spooled"):
                        self.stats[key] += getattr(ack, key)
                    self.stats["rejected"] += len(ack.rejected)
                    del pending[ack.sequence]
                elif ack.retryable:
                    retry = True  # kept in `pending`: resent after a back-off
                else:
                    raise RuntimeError(f"batch {ack.sequence} failed for good: {ack.error}")
        return retry


def make_events(n, project, batch_size, agent="python-sdk"):
    """`n` events of one session in batches, timestamps now."""
    session = str(uuid.uuid4())
    batches, batch = [], []
    for i in range(n):
        ev = pb.AgentEvent(
            id=str(uuid.uuid4()), event_type="llm_request" if i % 4 == 0 else "tool_use",
            agent_id=agent, agent_version="0.1.0", session_id=session, project=project,
            data_json='{"tool_name": "read_file"}' if i % 4 else '{}')
        ev.timestamp.GetCurrentTime()
        if i % 4 == 0:
            ev.model, ev.input_tokens, ev.output_tokens, ev.cost_usd = "gpt-4.1", 1200, 300, 0.0066
        batch.append(ev)
        if len(batch) == batch_size or i == n - 1:
            batches.append(pb.AgentEventBatch(sequence=len(batches) + 1, events=batch))
            batch = []
    return batches


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    env = os.environ.get
    p.add_argument("--endpoint", default=env("AGENT_TELEMETRY_ENDPOINT", "http://127.0.0.1:50051"))
    p.add_argument("--ca-file", default=env("AGENT_TELEMETRY_CA_FILE"),
                   help="PEM to trust for an https endpoint (default: the system's roots)")
    p.add_argument("--tls-server-name", default=env("AGENT_TELEMETRY_TLS_SERVER_NAME"),
                   help="the name the certificate carries, if not the endpoint's host")
    p.add_argument("--api-key", default=env("AGENT_TELEMETRY_API_KEY"),
                   help="better in AGENT_TELEMETRY_API_KEY: a flag shows in ps")
    p.add_argument("--events", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=200)
    p.add_argument("--project", default="acme/python-sdk")
    args = p.parse_args()
    sender = Sender(lambda: channel_to(args.endpoint, args.ca_file, args.tls_server_name),
                    args.api_key)
    stats = sender.send_all(make_events(args.events, args.project, args.batch_size))
    print(" ".join(f"{k}={v}" for k, v in stats.items()))


if __name__ == "__main__":
    main()
