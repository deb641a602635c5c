//! Generated protobuf types (`build.rs`): the public API messages, client and
//! server, and the server-only `wire` view whose batches keep their rows as
//! undecoded bytes so that [`crate::api`] can decode and reject them one by one.
#![allow(clippy::all, missing_docs)]

include!(concat!(env!("OUT_DIR"), "/pb/agent_telemetry.v1.rs"));

/// Encoded `FileDescriptorSet` of `proto/` (for gRPC reflection).
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"));

/// Server view of the API: identical on the wire, rows kept as bytes.
pub mod wire {
    include!(concat!(env!("OUT_DIR"), "/wire/agent_telemetry.v1.rs"));
}
