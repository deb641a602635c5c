//! The container stack (Dockerfile, docker-compose.yml, deploy/) checked
//! statically, because no Docker engine runs where the suite runs: the
//! files parse, every variable and port the compose file gives the service
//! is one the service reads, the provisioning paths exist, and Grafana,
//! Prometheus and the dashboards agree on names. Plus what the stack relies
//! on at run time, tested live: the `health` command its health checks run,
//! and gRPC reflection (so grpcurl needs no proto files).

mod common;

use std::{collections::BTreeSet, path::Path};

use agent_telemetry::config::ServeConfig;
use serde_yaml_ng::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(Path::new(ROOT).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{path} does not parse: {e}"))
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v:?}"))
}

/// Every environment variable `agent-telemetry serve` reads.
fn serve_env_vars() -> BTreeSet<String> {
    ServeConfig::command()
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect()
}

/// `${NAME:-default}` → the default, as compose substitutes it when unset.
fn substitute(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let end = rest[at..].find('}').expect("closing brace") + at;
        let inner = &rest[at + 2..end];
        let (name, default) = inner.split_once(":-").unwrap_or_else(|| {
            panic!("${{{inner}}} has no default: the stack must come up with no .env")
        });
        assert!(name.chars().all(|c| c.is_ascii_uppercase() || c == '_'));
        out.push_str(default);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn compose_gives_the_service_only_settings_it_reads() {
    let compose = yaml("docker-compose.yml");
    let services = &compose["services"];
    for name in ["timescaledb", "agent-telemetry", "prometheus", "grafana"] {
        assert!(services.get(name).is_some(), "service {name} missing");
    }
    for (name, svc) in services.as_mapping().unwrap() {
        if let Some(image) = svc.get("image") {
            let image = s(image);
            let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
            assert!(
                tag.chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_digit() || c == 'v')
                    && tag.contains('.'),
                "{name:?}: image {image} is not pinned to a version"
            );
        }
    }
    let svc = &services["agent-telemetry"];
    let reads = serve_env_vars();
    let env = svc["environment"].as_mapping().unwrap();
    for (key, value) in env {
        let key = s(key);
        assert!(
            reads.contains(key) || key == "RUST_LOG",
            "docker-compose.yml sets {key}, which `agent-telemetry serve` does not read"
        );
        substitute(s(value));
    }
    let get = |k: &str| substitute(s(&env[k]));
    let grpc = port_of(&get("AGENT_TELEMETRY_LISTEN"));
    let metrics = port_of(&get("AGENT_TELEMETRY_METRICS_LISTEN"));
    assert_eq!(grpc, 50051);
    // The published port is the one the service listens on.
    let published: Vec<String> = svc["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| s(p).to_owned())
        .collect();
    assert!(
        published.iter().any(|p| p.ends_with(&format!(":{grpc}"))),
        "{published:?}"
    );
    // Health checks ask the service itself, on its port.
    let check: Vec<&str> = svc["healthcheck"]["test"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(s)
        .collect();
    assert_eq!(&check[..3], ["CMD", "agent-telemetry", "health"]);
    assert!(check.iter().any(|a| a.ends_with(&format!(":{grpc}"))));
    // The database URL names the timescaledb service and its database.
    let db = &services["timescaledb"]["environment"];
    let url = get("DATABASE_URL");
    assert!(url.contains("@timescaledb:5432/"), "{url}");
    assert!(
        url.ends_with(&format!("/{}", s(&db["POSTGRES_DB"]))),
        "{url}"
    );
    assert!(url.starts_with(&format!("postgres://{}:", s(&db["POSTGRES_USER"]))));

    // The OTLP receivers listen beyond loopback and are published on
    // their standard ports; the price table they read is mounted and valid.
    for (var, port) in [
        ("AGENT_TELEMETRY_OTLP_GRPC_LISTEN", 4317),
        ("AGENT_TELEMETRY_OTLP_HTTP_LISTEN", 4318),
    ] {
        assert_eq!(port_of(&get(var)), port, "{var}");
        assert!(
            published
                .iter()
                .any(|p| p.ends_with(&format!(":{port}:{port}"))),
            "{port} not published: {published:?}"
        );
    }
    let prices = get("AGENT_TELEMETRY_PRICE_TABLE");
    let mounted = svc["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(s)
        .find(|v| v.split(':').nth(1) == Some(prices.as_str()))
        .unwrap_or_else(|| panic!("{prices} is not mounted"));
    let source = Path::new(ROOT).join(mounted.split(':').next().unwrap());
    let table = agent_telemetry::price::PriceTable::load(&source).unwrap();
    assert!(table.price("gpt-4o-2024-08-06").is_some());

    // Prometheus scrapes the service's metrics port.
    let prom = yaml("deploy/prometheus/prometheus.yml");
    let targets: Vec<&str> = prom["scrape_configs"][0]["static_configs"][0]["targets"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(s)
        .collect();
    assert_eq!(targets, [format!("agent-telemetry:{metrics}").as_str()]);

    // Every bind mount's source exists in the repository.
    for (name, svc) in services.as_mapping().unwrap() {
        for v in svc
            .get("volumes")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            let source = s(v).split(':').next().unwrap();
            if source.starts_with("./") {
                assert!(
                    Path::new(ROOT).join(source).exists(),
                    "{name:?} mounts {source}, which does not exist"
                );
            } else {
                assert!(
                    compose["volumes"].get(source).is_some(),
                    "{name:?} uses volume {source}, which is not declared"
                );
            }
        }
    }
}

#[test]
fn grafana_provisioning_matches_the_dashboards_and_the_database() {
    let compose = yaml("docker-compose.yml");
    let grafana = &compose["services"]["grafana"];
    let mounts: Vec<(String, String)> = grafana["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|v| {
            let mut parts = s(v).split(':');
            Some((parts.next()?.to_owned(), parts.next()?.to_owned()))
        })
        .collect();
    let target_of = |source: &str| {
        mounts
            .iter()
            .find(|(s, _)| s == source)
            .unwrap_or_else(|| panic!("grafana does not mount {source}"))
            .1
            .clone()
    };
    assert_eq!(
        target_of("./deploy/grafana/provisioning"),
        "/etc/grafana/provisioning"
    );
    let dashboards_dir = target_of("./deploy/grafana/dashboards");
    let providers = yaml("deploy/grafana/provisioning/dashboards/dashboards.yml");
    assert_eq!(
        s(&providers["providers"][0]["options"]["path"]),
        dashboards_dir
    );
    let home = s(&grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]);
    let home_file = home.strip_prefix(&format!("{dashboards_dir}/")).unwrap();
    assert!(
        Path::new(ROOT)
            .join("deploy/grafana/dashboards")
            .join(home_file)
            .exists()
    );

    let sources = yaml("deploy/grafana/provisioning/datasources/datasources.yml");
    let list = sources["datasources"].as_sequence().unwrap();
    let uids: BTreeSet<&str> = list.iter().map(|d| s(&d["uid"])).collect();
    let pg = list
        .iter()
        .find(|d| s(&d["type"]) == "grafana-postgresql-datasource")
        .expect("a PostgreSQL datasource");
    // Grafana reads as the read-only role, with the password the service
    // sets on it, from the same variable.
    assert_eq!(s(&pg["user"]), agent_telemetry::db::migrate::READER_ROLE);
    let password = s(&pg["secureJsonData"]["password"]);
    let var = password
        .strip_prefix('$')
        .expect("password from the environment");
    assert!(
        grafana["environment"].get(var).is_some(),
        "grafana lacks {var}"
    );
    assert_eq!(
        compose["services"]["agent-telemetry"]["environment"][var], grafana["environment"][var],
        "service and Grafana must get the same reader password"
    );
    assert!(serve_env_vars().contains(var));
    assert_eq!(s(&pg["url"]), "timescaledb:5432");
    assert_eq!(
        s(&pg["jsonData"]["database"]),
        s(&compose["services"]["timescaledb"]["environment"]["POSTGRES_DB"])
    );
    let prom = list.iter().find(|d| s(&d["type"]) == "prometheus").unwrap();
    assert_eq!(s(&prom["url"]), "http://prometheus:9090");

    // Every datasource a dashboard names is provisioned.
    let dir = Path::new(ROOT).join("deploy/grafana/dashboards");
    let mut used = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
        collect_uids(&dash, &mut used);
    }
    for uid in &used {
        assert!(
            uids.contains(uid.as_str()),
            "dashboards use datasource {uid}, not provisioned"
        );
    }
    assert_eq!(used.len(), 2, "{used:?}");
}

fn collect_uids(v: &serde_json::Value, out: &mut BTreeSet<String>) {
    match v {
        serde_json::Value::Object(m) => {
            if let Some(uid) = m
                .get("datasource")
                .and_then(|d| d.get("uid"))
                .and_then(|u| u.as_str())
            {
                out.insert(uid.to_owned());
            }
            m.values().for_each(|x| collect_uids(x, out));
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_uids(x, out)),
        _ => {}
    }
}

#[test]
fn dockerfile_builds_in_stages_and_runs_unprivileged() {
    let text = std::fs::read_to_string(Path::new(ROOT).join("Dockerfile")).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    let froms: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert_eq!(
        froms.len(),
        2,
        "a build stage and a runtime stage: {froms:?}"
    );
    // The builder's Rust is at least the crate's rust-version.
    let cargo = std::fs::read_to_string(Path::new(ROOT).join("Cargo.toml")).unwrap();
    let msrv = cargo
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .unwrap()
        .trim_matches('"');
    let builder = froms[0].split_whitespace().nth(1).unwrap();
    let version = builder
        .strip_prefix("rust:")
        .and_then(|v| v.split('-').next())
        .unwrap();
    let parse = |v: &str| -> Vec<u32> { v.split('.').map(|x| x.parse().unwrap()).collect() };
    assert!(
        parse(version) >= parse(msrv),
        "{builder} is older than rust-version {msrv}"
    );
    // Runtime stage: a non-root user, a health check through `health`.
    let runtime = &lines[lines.iter().position(|l| *l == froms[1]).unwrap()..];
    let user = runtime
        .iter()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("USER in the runtime stage");
    assert!(user != "root" && user != "0", "runs as {user}");
    let joined = runtime.join(" ");
    assert!(joined.contains("HEALTHCHECK"), "no HEALTHCHECK");
    assert!(joined.contains("\"agent-telemetry\", \"health\""));
    for var in [
        "AGENT_TELEMETRY_LISTEN",
        "AGENT_TELEMETRY_METRICS_LISTEN",
        "AGENT_TELEMETRY_SPOOL_DIR",
        "AGENT_TELEMETRY_OTLP_GRPC_LISTEN",
        "AGENT_TELEMETRY_OTLP_HTTP_LISTEN",
    ] {
        assert!(joined.contains(var), "{var} not set");
        assert!(serve_env_vars().contains(var));
    }
    assert!(joined.contains("EXPOSE 50051 9464 4317 4318"));
    // The build context leaves out what would make it gigabytes.
    let ignore = std::fs::read_to_string(Path::new(ROOT).join(".dockerignore")).unwrap();
    for dir in [
        "target",
        "tests/pglite/node_modules",
        "tests/otlp/node_modules",
        ".git",
    ] {
        assert!(
            ignore.lines().any(|l| l == dir),
            ".dockerignore lacks {dir}"
        );
    }
}

/// The command the container health checks run, against a live service,
/// a draining one and a closed port.
#[tokio::test]
async fn health_command_reports_serving_and_fails_otherwise() {
    let (_pg, _conn, svc) = common::service("health").await;
    let exe = env!("CARGO_BIN_EXE_agent-telemetry");
    let run = |endpoint: String| {
        tokio::process::Command::new(exe)
            .args(["health", "--endpoint", &endpoint, "--timeout", "3s"])
            .output()
    };
    let out = run(svc.endpoint.clone()).await.unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "agent_telemetry.v1.TelemetryIngest: SERVING"
    );
    svc.running.shutdown().await.unwrap();
    let out = run(svc.endpoint.clone()).await.unwrap();
    assert!(!out.status.success(), "a stopped service passed: {out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach"), "{err}");
}

/// Reflection, v1 and v1alpha: the services are listed and their
/// descriptors served, so grpcurl and grpcui work without the proto files.
#[tokio::test]
async fn reflection_lists_the_services_and_serves_their_descriptors() {
    use prost::Message;
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let (_pg, _conn, svc) = common::service("reflection").await;
    let channel = tonic::transport::Endpoint::from_shared(svc.endpoint.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = ServerReflectionClient::new(channel.clone());
    let ask = |r: MessageRequest| {
        tokio_stream::iter([ServerReflectionRequest {
            host: String::new(),
            message_request: Some(r),
        }])
    };
    use tokio_stream::StreamExt;
    let mut answers = client
        .server_reflection_info(ask(MessageRequest::ListServices(String::new())))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        answers.next().await.unwrap().unwrap().message_response
    else {
        panic!("no service list")
    };
    let names: BTreeSet<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "agent_telemetry.v1.TelemetryIngest",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(names.contains(want), "{want} not listed: {names:?}");
    }
    let mut answers = client
        .server_reflection_info(ask(MessageRequest::FileContainingSymbol(
            "agent_telemetry.v1.TelemetryIngest".into(),
        )))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::FileDescriptorResponse(files)) =
        answers.next().await.unwrap().unwrap().message_response
    else {
        panic!("no descriptor")
    };
    let methods: Vec<String> = files
        .file_descriptor_proto
        .iter()
        .map(|b| prost_types::FileDescriptorProto::decode(b.as_slice()).unwrap())
        .flat_map(|f| f.service)
        .flat_map(|s| s.method)
        .map(|m| m.name.unwrap_or_default())
        .collect();
    assert!(
        methods.contains(&"StreamAgentEvents".to_owned()),
        "{methods:?}"
    );
    assert!(
        methods.contains(&"ReportSessions".to_owned()),
        "{methods:?}"
    );

    // grpcurl before 1.9 asks the v1alpha service.
    use tonic_reflection::pb::v1alpha as alpha;
    let mut old = alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let mut answers = old
        .server_reflection_info(tokio_stream::iter([alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(
                alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
            ),
        }]))
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(
        answers.next().await.unwrap().unwrap().message_response,
        Some(alpha::server_reflection_response::MessageResponse::ListServicesResponse(_))
    ));
    svc.running.shutdown().await.unwrap();
}
