//! The `agent-telemetry` binary: parses the command line, sets up logging,
//! and calls the library.

use std::process::ExitCode;

use agent_telemetry::{
    config::{Cli, Command},
    loadgen, server, shutdown,
};
use clap::Parser;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // The benchmark prints its own progress; the service's logs would bury it.
    let default_filter = match cli.command {
        Command::Bench(_) => "warn",
        _ => "info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_filter.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let result: Result<(), Box<dyn std::error::Error>> = match cli.command {
        Command::Serve(cfg) => serve(*cfg).await,
        Command::Migrate(cfg) => migrate(cfg).await,
        Command::Loadgen(cfg) => loadgen::run(&cfg)
            .await
            .map(|s| println!("{s}"))
            .map_err(Into::into),
        Command::Bench(agent_telemetry::bench::BenchCommand::Compare(cfg)) => {
            agent_telemetry::bench::run(&cfg)
                .await
                .map(|report| println!("{report}"))
                .map_err(Into::into)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
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
    let db = server::open_database(&cfg.database).await?;
    let max_past = agent_telemetry::config::Limits::default().max_past;
    let report = server::run_migrations(&db.conn, &cfg.storage, max_past).await?;
    println!("storage mode: {}", report.mode);
    println!(
        "applied {} migration(s), {} already applied",
        report.applied.len(),
        report.already
    );
    for p in &report.policies {
        println!("{} policy on {}: {}", p.policy, p.relation, p.action);
    }
    if let Some(cluster) = db.embedded {
        tokio::task::spawn_blocking(move || cluster.stop()).await??;
    }
    Ok(())
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
