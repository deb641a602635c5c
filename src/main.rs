//! The `agent-telemetry` binary: parses the command line, sets up logging,
//! and calls the library.

use std::process::ExitCode;

use agent_telemetry::{config, loadgen, server, shutdown};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "agent-telemetry",
    version,
    about = "Ingest telemetry from AI coding agents into PostgreSQL/TimescaleDB"
)]
struct Cli {
    /// Log lines as text (for a terminal or journald) or as JSON objects,
    /// one per line (for a log collector). The level comes from RUST_LOG
    /// (e.g. `RUST_LOG=info,agent_telemetry::copy=debug`; default info).
    #[arg(
        long,
        global = true,
        env = "AGENT_TELEMETRY_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,

    /// A TOML file of settings: long flags without the dashes as keys,
    /// top-level or in a `[serve]`, `[loadgen]`, … table. Flags and
    /// environment variables override it (docs/configuration.md).
    #[arg(
        long,
        global = true,
        env = "AGENT_TELEMETRY_CONFIG",
        value_name = "FILE"
    )]
    config: Option<std::path::PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gRPC ingest service (migrates the database first).
    Serve(Box<config::ServeConfig>),
    /// Apply pending SQL migrations and exit.
    Migrate(config::MigrateConfig),
    /// Stream realistic synthetic events and messages to a running service.
    Loadgen(loadgen::LoadgenConfig),
    /// Send the agents' local transcripts (Claude Code's, Codex's, Gemini
    /// CLI's) to a running service: a team's whole history (docs/import.md).
    Import(agent_telemetry::import::ImportConfig),
    /// Benchmarks (BENCHMARKS.md).
    #[command(subcommand)]
    Bench(agent_telemetry::bench::BenchCommand),
    /// Manage API keys: create, list, revoke.
    Keys(config::KeysConfig),
    /// What is kept of developers: `users forget KEY`.
    Users(config::UsersConfig),
    /// Read-only roles of one organisation: create, list, drop.
    Readers(config::ReadersConfig),
    /// Ask a running service whether it is serving (gRPC health check);
    /// exits 0 if it is. For container health checks: the runtime image
    /// needs no other probe.
    Health(config::HealthConfig),
    /// Print a shell completion script: `agent-telemetry completions bash >
    /// /etc/bash_completion.d/agent-telemetry` (zsh: a file named
    /// `_agent-telemetry` on `$fpath`; fish: `~/.config/fish/completions/`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let (args, from_file) = match config::args_with_file(
        <Cli as clap::CommandFactory>::command(),
        std::env::args_os().collect(),
    ) {
        Ok(found) => found,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        // A value from the file is refused as its flag would be; say that
        // the flag came from the file.
        Err(e) if e.use_stderr() && !from_file.is_empty() => {
            let _ = e.print();
            eprintln!("note: from the settings file: {}", from_file.join(" "));
            return ExitCode::from(2);
        }
        Err(e) => e.exit(),
    };
    // The benchmark prints its own progress; the service's logs would bury it.
    let default_filter = match cli.command {
        Command::Bench(_) => "warn",
        _ => "info",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| default_filter.into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => logs.json().init(),
        // Colours only for a terminal: in a file or a collector the escape
        // codes are noise.
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    if let Some(path) = &cli.config {
        tracing::info!(file = %path.display(), "settings file (flags and environment variables override it)");
    }
    let result: Result<(), Box<dyn std::error::Error>> = match cli.command {
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "agent-telemetry", &mut std::io::stdout());
            Ok(())
        }
        Command::Serve(cfg) => serve(*cfg).await,
        Command::Migrate(cfg) => migrate(cfg).await,
        Command::Loadgen(cfg) => loadgen::run(&cfg)
            .await
            .map(|s| println!("{s}"))
            .map_err(Into::into),
        Command::Import(cfg) => agent_telemetry::import::run(&cfg)
            .await
            .map(|s| print!("{s}"))
            .map_err(Into::into),
        Command::Keys(cfg) => keys(cfg).await,
        Command::Users(cfg) => users(cfg).await,
        Command::Readers(cfg) => readers(cfg).await,
        Command::Health(cfg) => agent_telemetry::api::health::check(&cfg.client, cfg.timeout)
            .await
            .map(|status| println!("{status}"))
            .map_err(Into::into),
        Command::Bench(agent_telemetry::bench::BenchCommand::Compare(cfg)) => {
            agent_telemetry::bench::run(&cfg)
                .await
                .map(|report| println!("{report}"))
                .map_err(Into::into)
        }
        Command::Bench(agent_telemetry::bench::BenchCommand::Import(cfg)) => {
            agent_telemetry::bench::import::run(&cfg)
                .await
                .map(|report| println!("{report}"))
                .map_err(Into::into)
        }
        Command::Bench(agent_telemetry::bench::BenchCommand::Dashboards(cfg)) => {
            agent_telemetry::bench::queries::run(&cfg)
                .await
                .map(|report| println!("{report}"))
                .map_err(Into::into)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The whole cause chain: tokio-postgres and IO errors keep the
            // reason in their sources.
            eprintln!("error: {}", agent_telemetry::db::error::chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

async fn serve(
    cfg: agent_telemetry::config::ServeConfig,
) -> Result<(), Box<dyn std::error::Error>> {
    keep_large_buffers_off_the_heap();
    let drain = CancellationToken::new();
    shutdown::on_signals(drain.clone())?;
    let running = server::start(cfg, drain).await?;
    running.wait().await?;
    Ok(())
}

async fn migrate(
    cfg: agent_telemetry::config::MigrateConfig,
) -> Result<(), Box<dyn std::error::Error>> {
    let db = agent_telemetry::db::open::open_database(&cfg.database).await?;
    let max_past = agent_telemetry::config::Limits::default().max_past;
    let report =
        agent_telemetry::db::open::run_migrations(&db.conn, &cfg.storage, max_past).await?;
    println!("storage mode: {}", report.mode);
    if let Some(layout) = &report.layout {
        println!("storage layout: {layout}");
        if let Some(done) = &layout.switched {
            println!("layout switch: {done}");
        }
    }
    println!(
        "applied {} migration(s), {} already applied",
        report.applied.len(),
        report.already
    );
    for p in &report.policies {
        println!("{} policy on {}: {}", p.policy, p.relation, p.action);
    }
    db.release().await?;
    Ok(())
}

async fn users(
    cfg: agent_telemetry::config::UsersConfig,
) -> Result<(), Box<dyn std::error::Error>> {
    use agent_telemetry::{config::UsersAction, maintain::forget};
    let db = agent_telemetry::db::open::open_database(&cfg.database).await?;
    let mut client = agent_telemetry::db::connect(&db.conn).await?;
    let pseudonyms = pseudonyms()?;
    let actor = agent_telemetry::auth::keys::actor("users");
    let result = match cfg.action {
        UsersAction::Forget { key } => {
            forget::forget(&mut client, &key, pseudonyms.as_ref(), &actor)
                .await
                .map(|f| println!("{f}"))
        }
    };
    drop(client);
    db.release().await?;
    Ok(result?)
}

/// The pseudonyms of `--pseudonymize-users`, when its secret is in the
/// environment: commands that name a developer find or store theirs.
fn pseudonyms() -> Result<Option<agent_telemetry::privacy::Pseudonyms>, Box<dyn std::error::Error>>
{
    let secret = std::env::var("AGENT_TELEMETRY_PSEUDONYM_SECRET").ok();
    Ok(secret
        .as_deref()
        .map(agent_telemetry::privacy::Pseudonyms::new)
        .transpose()?)
}

/// The database, migrated: the tables `keys` and `readers` manage come
/// with the migrations, and a fresh database gets them here. Policies stay
/// as `serve` set them: these commands do not know its settings.
async fn open_migrated(
    cfg: &agent_telemetry::config::DatabaseConfig,
) -> Result<agent_telemetry::db::open::Database, Box<dyn std::error::Error>> {
    let db = agent_telemetry::db::open::open_database(cfg).await?;
    agent_telemetry::db::open::run_pending_migrations(&db.conn).await?;
    Ok(db)
}

async fn readers(
    cfg: agent_telemetry::config::ReadersConfig,
) -> Result<(), Box<dyn std::error::Error>> {
    use agent_telemetry::{config::ReadersAction, db::readers};
    let db = open_migrated(&cfg.database).await?;
    let mut client = agent_telemetry::db::connect(&db.conn).await?;
    let actor = agent_telemetry::auth::keys::actor("readers");
    let result = match cfg.action {
        ReadersAction::Create { organization, role } => readers::create(
            &mut client,
            &organization,
            role.as_deref(),
            cfg.password.as_deref(),
            &actor,
        )
        .await
        .map(|r| println!("{r}")),
        ReadersAction::List => readers::list(&client).await.map(|list| {
            println!("role\torganization\tschema\tviews\tlogin");
            for r in list {
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    r.role, r.organization, r.schema, r.views, r.login
                );
            }
        }),
        ReadersAction::Drop { role } => readers::drop(&mut client, &role, &actor)
            .await
            .map(|()| println!("dropped {role}")),
    };
    drop(client);
    db.release().await?;
    Ok(result?)
}

async fn keys(cfg: agent_telemetry::config::KeysConfig) -> Result<(), Box<dyn std::error::Error>> {
    use agent_telemetry::{auth::keys, config::KeysAction};
    let db = open_migrated(&cfg.database).await?;
    let mut client = agent_telemetry::db::connect(&db.conn).await?;
    let result = match cfg.action {
        KeysAction::Create {
            projects,
            organizations,
            user,
            name,
        } => {
            // A key's developer is stored as intake would store them.
            let user = match (&user, pseudonyms()?) {
                (Some(u), Some(p)) => Some(p.of(u)),
                (u, _) => u.clone(),
            };
            keys::create_scoped(
                &mut client,
                &name,
                &projects,
                &organizations,
                user.as_deref(),
                &cfg.projects,
            )
            .await
            .map(|k| {
                let scope: Vec<String> = k
                    .projects
                    .iter()
                    .cloned()
                    .chain(organizations.iter().map(|o| format!("organization {o}")))
                    .collect();
                eprintln!(
                    "key {} for {}; it is shown only now:",
                    k.id,
                    scope.join(", ")
                );
                println!("{}", k.key);
            })
        }
        KeysAction::List => keys::list(&client).await.map(|list| {
            println!("id\tname\tprefix\tstate\tprojects\tcreated\tlast used");
            for k in list {
                let time =
                    |t: std::time::SystemTime| humantime::format_rfc3339_seconds(t).to_string();
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    k.id,
                    k.name,
                    k.prefix,
                    if k.active { "active" } else { "revoked" },
                    k.projects.join(","),
                    time(k.created_at),
                    k.last_used_at.map(time).unwrap_or_else(|| "never".into()),
                );
            }
        }),
        KeysAction::Revoke { key } => keys::revoke(&mut client, &key)
            .await
            .map(|id| println!("revoked {id}")),
    };
    drop(client);
    db.release().await?;
    Ok(result?)
}

/// Batches live in buffers of a few hundred KiB that come and go at a high
/// rate. glibc raises its mmap threshold each time such a buffer is freed,
/// until they are all carved from the heap, which then fragments: under a
/// sustained overload that cost ~25 MiB of resident memory beyond the
/// buffer's limit (BENCHMARKS.md). A fixed threshold keeps them mmapped and
/// returns them to the system when freed.
fn keep_large_buffers_off_the_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator settings; called before the
    // service allocates its buffers.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}
