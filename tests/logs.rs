//! Log output of the binary: `--log-format json` gives one JSON object per
//! line; text written to a pipe (not a terminal) carries no colour codes.

mod common;

fn migrate_logs(conn: &str, format: &str) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_agent-telemetry"))
        .args(["migrate", "--log-format", format])
        .env("DATABASE_URL", conn)
        .env("RUST_LOG", "info")
        .output()
        .expect("run agent-telemetry migrate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stderr).unwrap()
}

#[tokio::test]
async fn json_logs_are_one_object_a_line_and_text_logs_have_no_colours_in_a_pipe() {
    let pg = common::TestCluster::start();
    let conn = pg.database("logs").await;
    let json = migrate_logs(&conn, "json");
    let lines: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines.iter().any(|l| l["level"] == "INFO"
            && l["fields"]["message"] == "applied"
            && l["fields"]["migration"] == "0001_core.sql"),
        "{json}"
    );
    let conn2 = pg.database("logs_text").await;
    let text = migrate_logs(&conn2, "text");
    assert!(
        text.contains("applied") && text.contains("0001_core.sql"),
        "{text}"
    );
    assert!(
        !text.contains('\u{1b}'),
        "colour codes in piped logs: {text:?}"
    );
}
