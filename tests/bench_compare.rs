//! `agent-telemetry bench compare` end to end, on a small event set: every
//! case runs against a real server, checks its row count, and lands in the
//! table; the scratch database is gone afterwards. (The figures themselves
//! are for BENCHMARKS.md, not for assertions.)

mod common;

#[tokio::test]
async fn compare_runs_every_case_and_prints_one_table() {
    let pg = common::TestCluster::start();
    let url = pg.conn("postgres");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_agent-telemetry"))
        .args([
            "bench",
            "compare",
            "--events",
            "3000",
            "--runs",
            "1",
            "--batch-size",
            "500",
            "--single-insert-events",
            "200",
            "--overload-for",
            "2s",
        ])
        .env("DATABASE_URL", &url)
        .output()
        .await
        .expect("run bench compare");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    for row in [
        "| A: psql \\copy binary, 1 stream | 3,000 |",
        "| A: psql \\copy binary, 2 streams | 3,000 |",
        "| B: loadgen → gRPC → service → COPY | 3,000 |",
        "| B without the id conflict probe | 3,000 |",
        "| B / B without the id conflict probe |",
        "| B at half rate, offered ",
        "| B under 3× overload, offered ",
        "| C: multi-row INSERT, one per batch | 3,000 |",
        "| C: one INSERT per event | 200 |",
        "| B / A (one stream) |",
        "| B / C (multi-row INSERT) |",
        "| ack p99 at half rate (ms) |",
        "| peak RSS under 3× overload (MiB, worst run) |",
        "machine: ",
        "PostgreSQL 15",
    ] {
        assert!(stdout.contains(row), "no {row:?} in:\n{stdout}");
    }
    let db = common::db(&url).await;
    assert_eq!(
        common::count(
            &db,
            "SELECT count(*) FROM pg_database WHERE datname = 'agent_telemetry_bench'"
        )
        .await,
        0
    );
}

/// `agent-telemetry bench import` end to end on a small tree: the import,
/// loadgen on as many rows, and the follower caught up, idle and fed
/// lines, each a row of the table; every appended line reached the table
/// (a line never stored would show as an infinite delay).
#[tokio::test]
async fn bench_import_runs_every_case() {
    let pg = common::TestCluster::start();
    let url = pg.conn("postgres");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_agent-telemetry"))
        .args([
            "bench",
            "import",
            "--mib",
            "2",
            "--follow-files",
            "20",
            "--idle-for",
            "1s",
            "--follow-lines",
            "5",
        ])
        .env("DATABASE_URL", &url)
        .output()
        .await
        .expect("run bench import");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    for row in [
        "| transcript tree | 2 MiB, 6 files,",
        "| import: rows stored | ",
        "| service alone (loadgen: as many events and chat messages) | ",
        "| **import ÷ service** | ",
        "| follow: files watched, rows caught up | 20, 360 |",
        "| **follow: CPU while idle** ",
        "| **follow: line written → row stored**, 5 lines: ",
        " 0 rejected; ",
    ] {
        assert!(stdout.contains(row), "no {row:?} in:\n{stdout}");
    }
    assert!(!stdout.contains("inf ms"), "{stdout}");
}
