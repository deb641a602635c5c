//! The client examples (examples/python with grpcio, examples/typescript
//! with @grpc/grpc-js) run against a live service that requires an API key,
//! and start while its database is down: they must back off, resend, and
//! in the end get every event stored exactly once. Each also runs copied
//! out of the repository, as its README says, over TLS.
//! The test installs what the examples need: a virtualenv with the pinned
//! pip packages, and `npm ci` from the example's package-lock.json.

mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const EVENTS: i64 = 3_000;

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A virtualenv under target/ with examples/python/requirements.txt, made
/// once per run: the tests run at once, and two `pip install`s into one
/// virtualenv would race.
fn python() -> PathBuf {
    static ONCE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ONCE.get_or_init(make_python).clone()
}

fn make_python() -> PathBuf {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("examples-python-venv");
    let bin = venv.join("bin/python");
    if !bin.exists() {
        run(
            Command::new("python3").args(["-m", "venv"]).arg(&venv),
            "python3 -m venv (Debian: apt-get install python3-venv)",
        );
    }
    run(
        Command::new(&bin)
            .args([
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                "-r",
            ])
            .arg(Path::new(ROOT).join("examples/python/requirements.txt")),
        "pip install -r examples/python/requirements.txt",
    );
    bin
}

/// examples/typescript installed (`npm ci`) and compiled (`tsc`), once
/// per run (two `npm ci`s in one folder would race).
fn typescript() -> PathBuf {
    static ONCE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ONCE.get_or_init(make_typescript).clone()
}

fn make_typescript() -> PathBuf {
    let dir = Path::new(ROOT).join("examples/typescript");
    if !dir.join("node_modules/.package-lock.json").exists() {
        run(
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&dir),
            "npm ci in examples/typescript",
        );
    }
    run(
        Command::new(dir.join("node_modules/.bin/tsc"))
            .args(["-p", "."])
            .current_dir(&dir),
        "tsc in examples/typescript",
    );
    dir.join("dist/sendEvents.js")
}

/// A key for `project`, as `keys create --project` makes one, and the
/// connection it was made on.
async fn example_key(conn: &str, project: &str) -> (tokio_postgres::Client, String) {
    let mut db = common::db(conn).await;
    let key = agent_telemetry::auth::keys::create(
        &mut db,
        "example",
        &[project.into()],
        &Default::default(),
    )
    .await
    .unwrap()
    .key;
    (db, key)
}

/// Runs one example against a fresh service and checks what it stored.
async fn example_stores_every_event_once(project: &str, command: impl FnOnce() -> Command) {
    let (pg, conn, svc) = common::service_with(project, |cfg| {
        cfg.security.require_api_key = true;
        cfg.pipeline.copy_retry_timeout = Duration::from_secs(1);
    })
    .await;
    let (db, key) = example_key(&conn, project).await;
    let mut cmd = command();
    cmd.args(["--events", &EVENTS.to_string(), "--project", project])
        .env("AGENT_TELEMETRY_ENDPOINT", &svc.endpoint)
        .env("AGENT_TELEMETRY_API_KEY", &key);
    // The example's stderr in a file, to see it meet the outage.
    let stderr = tempfile::NamedTempFile::new().unwrap();
    cmd.stderr(stderr.reopen().unwrap());
    drop(db);
    pg.cluster.stop().expect("stop PostgreSQL");
    let example = tokio::task::spawn_blocking(move || run(&mut cmd, "the example"));
    // Its stream is refused (the key cannot be checked) and it backs off:
    // now the database comes back.
    common::wait_for(
        "the example to reconnect",
        Duration::from_secs(60),
        || async {
            std::fs::read_to_string(stderr.path())
                .unwrap_or_default()
                .contains("reconnecting")
        },
    )
    .await;
    pg.cluster.start().expect("start PostgreSQL");
    let stats = example.await.unwrap();
    let db = common::db(&conn).await;
    common::say(&format!("{project}: {}", stats.trim()));
    let figure = |name: &str| -> u64 {
        stats
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {stats}"))
    };
    assert_eq!(
        figure("stored") + figure("duplicates"),
        EVENTS as u64,
        "{stats}"
    );
    assert!(figure("backoffs") > 0 && figure("resent") > 0, "{stats}");
    let sql = format!(
        "SELECT count(*) FROM agent_events e JOIN projects p ON p.id = e.project_id
         WHERE p.full_name = '{project}'"
    );
    assert_eq!(common::count(&db, &sql).await, EVENTS);
    assert_eq!(
        common::count(&db, "SELECT count(DISTINCT id) FROM agent_events").await,
        EVENTS
    );
    // Tokens and cost arrived on the LLM events (every fourth).
    assert_eq!(
        common::count(
            &db,
            "SELECT count(*) FROM agent_events WHERE model IS NOT NULL AND cost_usd > 0 AND input_tokens > 0"
        )
        .await,
        EVENTS / 4
    );
    svc.running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_example_stores_every_event_once() {
    let python = tokio::task::spawn_blocking(python).await.unwrap();
    example_stores_every_event_once("acme/python-sdk", || {
        let mut c = Command::new(python);
        c.arg(Path::new(ROOT).join("examples/python/send_events.py"));
        c
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typescript_grpc_js_example_stores_every_event_once() {
    let script = tokio::task::spawn_blocking(typescript).await.unwrap();
    example_stores_every_event_once("acme/vscode", || {
        let mut c = Command::new("node");
        c.arg(script);
        c
    })
    .await;
}

/// Copies `proto/` into `dir`, as the examples' READMEs say to use them
/// outside the repository.
fn copy_proto(dir: &Path) {
    let to = dir.join("proto/agent_telemetry/v1");
    std::fs::create_dir_all(&to).unwrap();
    for entry in std::fs::read_dir(Path::new(ROOT).join("proto/agent_telemetry/v1")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// One example, copied out of the repository with `proto/` beside it as
/// its README says, run from its own folder against a TLS listener that
/// requires a key, with the endpoint in loadgen's form.
async fn example_reaches_a_tls_listener(project: &str, command: impl FnOnce(&Path) -> Command) {
    let tls = common::SelfSigned::new("localhost");
    let ca = tls.cert.clone();
    let (_pg, conn, svc) = common::service_with(project, |cfg| {
        cfg.security.require_api_key = true;
        tls.serve(cfg);
    })
    .await;
    let (db, key) = example_key(&conn, project).await;
    let alone = tempfile::tempdir().unwrap();
    copy_proto(alone.path());
    let mut cmd = command(alone.path());
    cmd.current_dir(alone.path())
        .args(["--events", "500", "--project", project])
        .args([
            "--endpoint",
            &format!("https://127.0.0.1:{}", svc.running.addr.port()),
        ])
        .arg("--ca-file")
        .arg(&ca)
        .args(["--tls-server-name", "localhost"])
        .env_remove("AGENT_TELEMETRY_ENDPOINT")
        .env("AGENT_TELEMETRY_API_KEY", &key);
    let stats = tokio::task::spawn_blocking(move || run(&mut cmd, "the example over TLS"))
        .await
        .unwrap();
    common::say(&format!("{project} over TLS: {}", stats.trim()));
    assert!(stats.contains("stored=500 "), "{stats}");
    assert_eq!(
        common::count(&db, "SELECT count(*) FROM agent_events").await,
        500
    );
    svc.running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_example_runs_on_its_own_over_tls_with_a_key() {
    let python = tokio::task::spawn_blocking(python).await.unwrap();
    example_reaches_a_tls_listener("acme/python-tls", |dir| {
        std::fs::copy(
            Path::new(ROOT).join("examples/python/send_events.py"),
            dir.join("send_events.py"),
        )
        .unwrap();
        let mut c = Command::new(python);
        c.arg("send_events.py");
        c
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typescript_example_runs_on_its_own_over_tls_with_a_key() {
    let script = tokio::task::spawn_blocking(typescript).await.unwrap();
    example_reaches_a_tls_listener("acme/vscode-tls", |dir| {
        std::fs::create_dir_all(dir.join("dist")).unwrap();
        std::fs::copy(&script, dir.join("dist/sendEvents.js")).unwrap();
        let mut c = Command::new("node");
        // Its packages stay where `npm ci` put them.
        c.arg("dist/sendEvents.js").env(
            "NODE_PATH",
            Path::new(ROOT).join("examples/typescript/node_modules"),
        );
        c
    })
    .await;
}

/// README's grpcurl example as written, short of grpcurl itself (not
/// packaged for Debian): its `-d` body expanded by bash as the shell would
/// (today's timestamp), decoded with protobuf's JSON mapping as grpcurl
/// decodes it, sent with its `authorization: Bearer $KEY` header and KEY
/// unset, to a service on loopback. Stored once; sent again, a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_grpcurl_example_is_stored_as_written() {
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    let call = readme
        .split("grpcurl -plaintext -H \"authorization: Bearer $KEY\" -d ")
        .nth(1)
        .expect("README's IngestAgentEvents example");
    let (body, rest) = call
        .split_once(" localhost:50051 ")
        .expect("the example's endpoint");
    assert!(
        rest.starts_with("agent_telemetry.v1.TelemetryIngest/IngestAgentEvents"),
        "{rest}"
    );
    let expanded = run(
        Command::new("bash")
            .arg("-c")
            .arg(format!("printf %s {body}"))
            .env_remove("KEY"),
        "bash, expanding the example's body",
    );
    let dir = tempfile::tempdir().unwrap();
    let body_file = dir.path().join("body.json");
    std::fs::write(&body_file, &expanded).unwrap();
    let (_pg, _conn, svc) = common::service("readme_grpcurl").await;
    let python = tokio::task::spawn_blocking(python).await.unwrap();
    let script = r#"
import subprocess, sys, tempfile
proto, endpoint, body = sys.argv[1:4]
out = tempfile.mkdtemp()
subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{proto}", f"--python_out={out}",
                f"--grpc_python_out={out}", "agent_telemetry/v1/telemetry.proto"], check=True)
sys.path.insert(0, out)
import grpc
from google.protobuf import json_format
from agent_telemetry.v1 import telemetry_pb2 as pb, telemetry_pb2_grpc as rpc
batch = json_format.Parse(open(body).read(), pb.AgentEventBatch())
stub = rpc.TelemetryIngestStub(grpc.insecure_channel(endpoint))
for _ in range(2):
    ack = stub.IngestAgentEvents(batch, metadata=[("authorization", "Bearer")])
    print(ack.stored, ack.duplicates, len(ack.rejected), "|".join(r.reason for r in ack.rejected))
"#;
    let endpoint = svc.endpoint.trim_start_matches("http://").to_owned();
    let proto = Path::new(ROOT).join("proto");
    let out = tokio::task::spawn_blocking(move || {
        run(
            Command::new(python)
                .arg("-c")
                .arg(script)
                .arg(proto)
                .arg(endpoint)
                .arg(body_file),
            "the README example's request",
        )
    })
    .await
    .unwrap();
    common::say(&format!("README grpcurl example: {}", out.trim()));
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["1 0 0 ", "0 1 0 "],
        "{out}"
    );
    svc.running.shutdown().await.unwrap();
}
