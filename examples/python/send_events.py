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

Usage: send_events.py --endpoint 127.0.0.1:50051 --events 1000 --project acme/api
       (AGENT_TELEMETRY_API_KEY holds the key, if the service needs one)
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
PROTO = HERE.parent.parent / "proto"
GENERATED = HERE / "_generated"


def load_stubs():
    """Generates the Python stubs from proto/ on first use (grpcio-tools
    bundles its own protoc, so nothing else is needed)."""
    source = PROTO / "agent_telemetry/v1/telemetry.proto"
    stub = GENERATED / "agent_telemetry/v1/telemetry_pb2_grpc.py"
    if not stub.exists() or stub.stat().st_mtime < source.stat().st_mtime:
        GENERATED.mkdir(exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO}",
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


class Sender:
    def __init__(self, endpoint, api_key=None, window=8):
        self.endpoint = endpoint
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
        with grpc.insecure_channel(self.endpoint) as channel:
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
    p.add_argument("--endpoint", default=os.environ.get("AGENT_TELEMETRY_ENDPOINT", "127.0.0.1:50051"))
    p.add_argument("--events", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=200)
    p.add_argument("--project", default="acme/python-sdk")
    args = p.parse_args()
    endpoint = args.endpoint.removeprefix("http://")
    sender = Sender(endpoint, os.environ.get("AGENT_TELEMETRY_API_KEY"))
    stats = sender.send_all(make_events(args.events, args.project, args.batch_size))
    print(" ".join(f"{k}={v}" for k, v in stats.items()))


if __name__ == "__main__":
    main()
