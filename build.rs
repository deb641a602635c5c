//! Build-time code generation, with no system `protoc`:
//!
//! 1. `protox` (a pure-Rust protobuf compiler) parses `proto/` into a
//!    descriptor set; tonic-prost-build turns it into the public message
//!    types and client/server stubs (`$OUT_DIR/pb`).
//! 2. A second, server-only view (`$OUT_DIR/wire`) in which each batch's row
//!    list is `repeated bytes` instead of `repeated <Row>`. It is the same
//!    wire format (both are length-delimited), but it lets the server decode
//!    every row on its own, so one row with invalid UTF-8 is one rejected row
//!    instead of an undecodable request that would cost its whole batch.
//! 3. The list of SQL migrations in `sql/`, embedded in the binary.
use std::{env, fs, path::PathBuf};

use prost::Message;
use prost_types::field_descriptor_proto::Type;

const PACKAGE: &str = "agent_telemetry.v1";
/// Batch message → the repeated row field the server decodes row by row.
const ROW_FIELDS: &[(&str, &str)] = &[
    ("AgentEventBatch", "events"),
    ("ChatMessageBatch", "messages"),
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=sql");

    let fds = protox::compile(["agent_telemetry/v1/telemetry.proto"], ["proto"])?;
    fs::write(out.join("descriptor.bin"), fds.encode_to_vec())?;

    let pb_dir = out.join("pb");
    fs::create_dir_all(&pb_dir)?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .out_dir(&pb_dir)
        .compile_fds(fds.clone())?;

    let mut wire = fds;
    let mut builder = tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .out_dir(out.join("wire"))
        .bytes(".");
    for file in wire.file.iter_mut().filter(|f| f.package() == PACKAGE) {
        for msg in &mut file.message_type {
            match ROW_FIELDS.iter().find(|(m, _)| *m == msg.name()) {
                Some((_, field)) => {
                    let f = msg
                        .field
                        .iter_mut()
                        .find(|f| f.name() == *field)
                        .expect("row field");
                    f.set_type(Type::Bytes);
                    f.type_name = None;
                }
                None => {
                    let name = msg.name();
                    builder = builder
                        .extern_path(format!(".{PACKAGE}.{name}"), format!("crate::pb::{name}"));
                }
            }
        }
        for e in &file.enum_type {
            let name = e.name();
            builder =
                builder.extern_path(format!(".{PACKAGE}.{name}"), format!("crate::pb::{name}"));
        }
    }
    fs::create_dir_all(out.join("wire"))?;
    builder.compile_fds(wire)?;

    write_migrations(&out)
}

fn write_migrations(out: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let sql_files = |dir: &str| -> Result<Vec<std::path::PathBuf>, std::io::Error> {
        let mut files: Vec<_> = fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "sql"))
            .collect();
        files.sort();
        Ok(files)
    };
    let mut code = String::from(
        "/// `(path under sql/, SQL)` of every file in `sql/` and its mode\n\
         /// directories (`timescaledb/`, `plain/`), sorted by path.\n\
         pub const SQL_FILES: &[(&str, &str)] = &[\n",
    );
    for dir in ["sql", "sql/plain", "sql/timescaledb"] {
        for p in sql_files(dir)? {
            let name = p
                .strip_prefix("sql")?
                .to_string_lossy()
                .trim_start_matches('/')
                .to_owned();
            let abs = fs::canonicalize(&p)?;
            code.push_str(&format!(
                "    ({name:?}, include_str!({:?})),\n",
                abs.display().to_string()
            ));
        }
    }
    code.push_str("];\n");
    fs::write(out.join("migrations.rs"), code)?;
    Ok(())
}
