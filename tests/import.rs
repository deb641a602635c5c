//! The agents' transcripts imported (`agent-telemetry import`, docs/import.md):
//! files the real Claude Code, Codex and Gemini CLI binaries wrote (the
//! harness: tests/common/agents.rs), and a generated Claude Code history,
//! compared with what the mocks answered and with ccusage on the same
//! files; a second import, a resumed session and the same session exported
//! over OTLP storing nothing twice; `--follow` beside a transcript being
//! written.

mod common;

use std::{collections::BTreeSet, path::Path, process::Stdio, time::Duration};

use common::agents::*;
use serde_json::Value as Json;
use uuid::Uuid;

/// The `llm_request` rows stored.
async fn llm_requests(db: &tokio_postgres::Client) -> i64 {
    common::count(
        db,
        "SELECT count(*) FROM agent_events WHERE event_type = 'llm_request'",
    )
    .await
}

/// The transcripts the real Claude Code 2.1.328 wrote (a run with a tool
/// call that also exported OTLP to the service, a run with a subagent, and
/// a line cut short as by a crash) imported: one `llm_request` per model
/// call with the mock's tokens (the OTLP-exported run's calls and messages
/// not twice), the subagent's calls in its parent session, figures per day
/// and model and per session equal to ccusage's on the same files, and a
/// second import storing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_code_transcripts_import_once_and_equal_ccusage() {
    install();
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("developer");
    std::fs::create_dir_all(&home).unwrap();
    let (_pg, db, svc, otlp) = service("import_claude", tmp.path()).await;
    let mut calls = 0;
    for scenario in ["ok", "subagent"] {
        let mock = Mock::start("mock-anthropic.mjs", scenario, tmp.path());
        let (_, work) = workplace(tmp.path(), scenario);
        // The first run also exports its telemetry, prompts included.
        let exporting = scenario == "ok";
        let telemetry = [
            ("CLAUDE_CODE_ENABLE_TELEMETRY", "1"),
            ("OTEL_LOGS_EXPORTER", "otlp"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.as_str()),
            ("OTEL_LOG_USER_PROMPTS", "1"),
            // The same project the import names: one session, one project.
            ("OTEL_RESOURCE_ATTRIBUTES", "project.name=acme/agents"),
        ];
        let mut env = vec![
            ("HOME", home.display().to_string()),
            (
                "ANTHROPIC_BASE_URL",
                format!("http://127.0.0.1:{}", mock.port),
            ),
            ("ANTHROPIC_API_KEY", "sk-test".into()),
            ("IS_SANDBOX", "1".into()),
            ("DISABLE_AUTOUPDATER", "1".into()),
            ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1".into()),
        ];
        if exporting {
            env.extend(telemetry.iter().map(|(k, v)| (*k, v.to_string())));
        }
        let args = ["-p", "run echo hello", "--dangerously-skip-permissions"];
        run(&bin("claude"), &args, &env, &work, true).await;
        calls += mock.calls().len();
    }
    let claude_dir = home.join(".claude");
    // A crash in the middle of a line: reported, and the rest imported.
    let mut files = Vec::new();
    common_files(&claude_dir.join("projects"), &mut files);
    let first = files
        .iter()
        .find(|f| !f.to_string_lossy().contains("subagents"))
        .unwrap();
    let mut text = std::fs::read_to_string(first).unwrap();
    text.push_str("{\"type\":\"assistant\",\"message\":{\"id\":\"msg_cut");
    std::fs::write(first, text).unwrap();

    let exported = llm_requests(&db).await;
    assert_eq!(exported, 2, "the first run's calls, over OTLP");
    let endpoint = svc.endpoint.clone();
    let said = import(&claude_dir, &endpoint, tmp.path());
    common::say(&said);
    assert!(said.contains("1 lines skipped"), "{said}");
    assert!(
        said.contains(" 5 already stored") && said.contains(" 0 rejected"),
        "the exported run's two calls, its tool call, its prompt and reply: {said}"
    );
    // A tool call exported (`tool_result`) and imported (`tool_use`) is one
    // row: both are keyed by its `tool_use_id`.
    assert_eq!(
        common::strings(
            &db,
            "SELECT count(*) || ' ' || count(DISTINCT data->>'tool_use_id') FROM agent_events
             WHERE event_type = 'tool_use'",
        )
        .await,
        ["3 3"],
        "the first run's echo, the second's Task call and its subagent's echo: once each"
    );
    assert!(
        said.contains(".jsonl:") && said.contains("not a JSON line"),
        "{said}"
    );
    let requests = llm_requests(&db).await;
    assert_eq!(
        requests as usize, calls,
        "one row per model call the mock answered"
    );
    let sessions = common::count(&db, "SELECT count(DISTINCT session_id) FROM agent_events").await;
    assert_eq!(
        sessions, 2,
        "the subagent's calls are in its parent's session"
    );
    let subagent = common::count(
        &db,
        "SELECT count(*) FROM agent_events WHERE event_type = 'llm_request' AND context ? 'agent_id'",
    )
    .await;
    assert_eq!(subagent, 2);
    assert_eq!(
        common::count(&db, "SELECT count(*) FROM agent_sessions").await,
        2
    );
    // The prompt and reply of each run once, whichever edge brought them.
    let said = common::strings(
        &db,
        "SELECT role || ' ' || content || ' ' || count(*) FROM chat_messages
         WHERE content IN ('run echo hello', 'Done: hello') GROUP BY role, content ORDER BY 1",
    )
    .await;
    assert_eq!(said, ["assistant Done: hello 2", "user run echo hello 2"]);

    // Equal to ccusage on the same files: per day and model, per session.
    let daily = ccusage("daily", &claude_dir, tmp.path());
    assert_eq!(
        stored_figures(&db, "(\"timestamp\" AT TIME ZONE 'UTC')::date::text").await,
        ccusage_figures(daily["daily"].as_array().unwrap(), "date")
    );
    let by_session = ccusage("session", &claude_dir, tmp.path());
    assert_eq!(
        stored_figures(&db, "session_id::text").await,
        ccusage_figures(by_session["sessions"].as_array().unwrap(), "sessionId")
    );

    // Again: nothing new.
    let again = import(&claude_dir, &endpoint, tmp.path());
    assert!(again.contains(" 0 stored"), "{again}");
    assert_eq!(llm_requests(&db).await as usize, calls);
    svc.running.shutdown().await.unwrap();
}

/// The rollouts the real Codex 0.169.0 wrote (a run, a run whose first
/// stream fails and is retried, a run that fails and exports nothing)
/// imported: one `llm_request` per model call with the mock's tokens, the
/// failure that only the rollout records as an error, figures per day,
/// model and session equal to `ccusage codex` on the same files, a second
/// import storing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codex_rollouts_import_once_and_equal_ccusage() {
    install();
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("codex-home");
    std::fs::create_dir_all(&home).unwrap();
    let mut counted = 0;
    for (scenario, retries) in [("ok", 0), ("fail_once", 1), ("fail_once", 0)] {
        let mock = Mock::start("mock-openai.mjs", scenario, tmp.path());
        let (_, work) = workplace(tmp.path(), &format!("{scenario}{retries}"));
        std::fs::write(
            home.join("config.toml"),
            format!(
                "model = \"gpt-5-codex\"\nmodel_provider = \"mock\"\n\n\
                 [model_providers.mock]\nname = \"mock\"\nbase_url = \"http://127.0.0.1:{}/v1\"\n\
                 wire_api = \"responses\"\nenv_key = \"OPENAI_API_KEY\"\n\
                 request_max_retries = {retries}\nstream_max_retries = {retries}\n",
                mock.port
            ),
        )
        .unwrap();
        let env = [
            ("HOME", home.display().to_string()),
            ("CODEX_HOME", home.display().to_string()),
            ("OPENAI_API_KEY", "sk-test".to_owned()),
        ];
        let args = [
            "exec",
            "--skip-git-repo-check",
            "--dangerously-bypass-approvals-and-sandbox",
            "run echo hello",
        ];
        run(
            &bin("codex"),
            &args,
            &env,
            &work,
            retries > 0 || scenario == "ok",
        )
        .await;
        counted += mock.calls().iter().filter(|c| c["status"] == 200).count();
    }
    let (_pg, db, svc, _) = service("import_codex", tmp.path()).await;
    let price_table = prices(tmp.path());
    let said = import_source(
        &svc.endpoint,
        "codex",
        ("--codex-home", &home),
        &["--price-table", price_table.to_str().unwrap()],
        tmp.path(),
    );
    common::say(&said);
    assert!(
        said.contains("codex: 3 files") && said.contains(" 0 rejected"),
        "{said}"
    );
    let requests = llm_requests(&db).await;
    assert_eq!(
        requests as usize, counted,
        "one row per model call answered"
    );
    // The run that failed exported nothing: its rollout is the only record.
    let failures = common::strings(
        &db,
        "SELECT data->>'message' FROM agent_events WHERE severity = 'error'",
    )
    .await;
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(
        failures[0].contains("mock upstream failure"),
        "{failures:?}"
    );
    assert_eq!(
        common::count(
            &db,
            "SELECT count(*) FROM agent_sessions WHERE agent_id = 'codex'"
        )
        .await,
        3
    );
    let prompts = common::count(
        &db,
        "SELECT count(*) FROM chat_messages WHERE role = 'user' AND content = 'run echo hello'",
    )
    .await;
    assert_eq!(prompts, 3, "the prompt of each run, no environment context");
    // Equal to ccusage on the same files.
    let ccusage = |report: &str| ccusage_of("codex", report, ("CODEX_HOME", &home), tmp.path());
    assert_eq!(
        stored_figures(&db, "(\"timestamp\" AT TIME ZONE 'UTC')::date::text").await,
        ccusage_codex_figures(ccusage("daily")["daily"].as_array().unwrap(), "date")
    );
    // ccusage names a Codex session by its rollout file; the file's name
    // ends with the session's id.
    let by_session: Vec<Json> = ccusage("session")["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let mut s = s.clone();
            let file = s["sessionFile"].as_str().unwrap().to_owned();
            s["sessionId"] = file[file.len() - 36..].into();
            s
        })
        .collect();
    assert_eq!(
        stored_figures(&db, "session_id::text").await,
        ccusage_codex_figures(&by_session, "sessionId")
    );
    let again = import_source(
        &svc.endpoint,
        "codex",
        ("--codex-home", &home),
        &[],
        tmp.path(),
    );
    assert!(again.contains(" 0 stored"), "{again}");
    svc.running.shutdown().await.unwrap();
}

/// The chats the real Gemini CLI 0.61.0 wrote (two runs with a tool call,
/// one refused by the API) imported: one `llm_request` per model call with
/// the mock's tokens (a message written again once its tool call ends is
/// read once), the prompt and replies in order, a second import storing
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_chats_import_once() {
    install();
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("developer");
    std::fs::create_dir_all(home.join(".gemini")).unwrap();
    std::fs::write(
        home.join(".gemini/settings.json"),
        r#"{"security": {"auth": {"selectedType": "gemini-api-key"}},
            "privacy": {"usageStatisticsEnabled": false},
            "general": {"enableAutoUpdate": false, "enableAutoUpdateNotification": false, "maxAttempts": 1}}"#,
    )
    .unwrap();
    let mut calls = 0;
    for (i, scenario) in ["ok", "ok", "fail400"].iter().enumerate() {
        let mock = Mock::start("mock-gemini.mjs", scenario, tmp.path());
        let (_, work) = workplace(tmp.path(), &format!("gemini{i}"));
        let env = [
            ("HOME", home.display().to_string()),
            ("TMPDIR", tmp.path().display().to_string()),
            (
                "GOOGLE_GEMINI_BASE_URL",
                format!("http://127.0.0.1:{}", mock.port),
            ),
            ("GEMINI_API_KEY", "test".into()),
            ("GEMINI_CLI_TRUST_WORKSPACE", "true".into()),
            ("GEMINI_CLI_NO_RELAUNCH", "true".into()),
        ];
        let args = [
            "-p",
            "run echo hello",
            "--approval-mode=yolo",
            "-m",
            "gemini-2.5-flash",
        ];
        run(&bin("gemini"), &args, &env, &work, *scenario == "ok").await;
        calls += mock.calls().iter().filter(|c| c["status"] == 200).count();
    }
    let (_pg, db, svc, _) = service("import_gemini", tmp.path()).await;
    let price_table = prices(tmp.path());
    let import = || {
        import_source(
            &svc.endpoint,
            "gemini-cli",
            ("--gemini-dir", &home.join(".gemini")),
            &["--price-table", price_table.to_str().unwrap()],
            tmp.path(),
        )
    };
    let summary = import();
    common::say(&summary);
    assert!(
        summary.contains("gemini-cli: 3 files") && summary.contains(" 0 rejected"),
        "{summary}"
    );
    let rows = db
        .query(
            "SELECT input_tokens, output_tokens, cached_tokens, model FROM agent_events
             WHERE event_type = 'llm_request' ORDER BY \"timestamp\"",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), calls, "one row per model call answered");
    let figures: BTreeSet<(i64, i64, i64, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    // Thoughts are output the model generated.
    let flash = || "gemini-2.5-flash".to_owned();
    assert_eq!(
        figures,
        BTreeSet::from([(1111, 66, 333, flash()), (1250, 7, 0, flash())])
    );
    let session = common::strings(
        &db,
        "SELECT session_id::text FROM agent_events WHERE event_type = 'llm_request' LIMIT 1",
    )
    .await;
    let session = Uuid::parse_str(&session[0]).unwrap();
    assert_eq!(
        messages(&db, session).await,
        [
            said("user", "run echo hello"),
            said("assistant", "I will run the command."),
            said("assistant", "Done: hello"),
        ]
    );
    assert_eq!(
        common::count(
            &db,
            "SELECT count(*) FROM agent_sessions WHERE agent_id = 'gemini-cli'"
        )
        .await,
        3
    );
    let tool = common::strings(
        &db,
        "SELECT data->>'tool_name' || ' ' || (data->>'success') FROM agent_events WHERE event_type = 'tool_use'",
    )
    .await;
    assert_eq!(tool, ["run_shell_command true", "run_shell_command true"]);
    // Equal to ccusage on the same chats, per day and per session.
    let gemini_dir = home.join(".gemini");
    let ccusage = |report: &str| {
        ccusage_of(
            "gemini",
            report,
            ("GEMINI_DATA_DIR", &gemini_dir),
            tmp.path(),
        )
    };
    assert_eq!(
        stored_totals(&db, "(\"timestamp\" AT TIME ZONE 'UTC')::date::text").await,
        ccusage_gemini_figures(ccusage("daily")["daily"].as_array().unwrap(), "date")
    );
    assert_eq!(
        stored_totals(&db, "session_id::text").await,
        ccusage_gemini_figures(
            ccusage("session")["sessions"].as_array().unwrap(),
            "sessionId"
        )
    );
    let again = import();
    assert!(again.contains(" 0 stored"), "{again}");
    svc.running.shutdown().await.unwrap();
}

/// A running `import --follow` beside a transcript being written: the
/// lines written while it runs are stored within seconds, a line written in
/// two parts waits for its end, a restart resumes from the state file
/// without sending a line again, and a transcript written anew (another
/// inode) is read from its start, its rows recognised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_follow_sends_new_lines_and_resumes_after_a_restart() {
    install();
    let tmp = tempfile::tempdir().unwrap();
    // A real transcript to replay line by line.
    let home = tmp.path().join("developer");
    std::fs::create_dir_all(&home).unwrap();
    let mock = Mock::start("mock-anthropic.mjs", "subagent", tmp.path());
    let (_, work) = workplace(tmp.path(), "follow");
    let env = [
        ("HOME", home.display().to_string()),
        (
            "ANTHROPIC_BASE_URL",
            format!("http://127.0.0.1:{}", mock.port),
        ),
        ("ANTHROPIC_API_KEY", "sk-test".into()),
        ("IS_SANDBOX", "1".into()),
        ("DISABLE_AUTOUPDATER", "1".into()),
    ];
    let args = ["-p", "run echo hello", "--dangerously-skip-permissions"];
    run(&bin("claude"), &args, &env, &work, true).await;
    let mut files = Vec::new();
    common_files(&home.join(".claude/projects"), &mut files);
    let main = files
        .iter()
        .find(|f| !f.to_string_lossy().contains("subagents"))
        .unwrap();
    let lines: Vec<String> = std::fs::read_to_string(main)
        .unwrap()
        .lines()
        .map(|l| format!("{l}\n"))
        .collect();
    let calls_in = |ls: &[String]| {
        ls.iter()
            .filter(|l| l.contains("\"type\":\"assistant\"") && l.contains("\"usage\""))
            .filter_map(|l| serde_json::from_str::<Json>(l).ok())
            .filter_map(|v| v["requestId"].as_str().map(str::to_owned))
            .collect::<BTreeSet<_>>()
            .len() as i64
    };
    let half = lines.len() / 2;
    let followed = tmp.path().join("followed/.claude/projects/p");
    std::fs::create_dir_all(&followed).unwrap();
    let transcript = followed.join(main.file_name().unwrap());
    std::fs::write(&transcript, lines[..half].concat()).unwrap();

    let (_pg, db, svc, _) = service("import_follow", tmp.path()).await;
    let state = tmp.path().join("state.json");
    let follow = || {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_agent-telemetry"))
            .args([
                "import",
                "--follow",
                "--source",
                "claude-code",
                "--endpoint",
                &svc.endpoint,
            ])
            .arg("--claude-dir")
            .arg(tmp.path().join("followed/.claude"))
            .arg("--state")
            .arg(&state)
            .env("HOME", tmp.path())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let requests = || async { llm_requests(&db).await };
    let mut child = follow();
    let first = calls_in(&lines[..half]);
    common::wait_for(
        "the first half's calls",
        Duration::from_secs(20),
        || async { requests().await == first },
    )
    .await;
    // The rest, the last line in two writes: nothing of it until its end.
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&transcript)
        .unwrap();
    let rest = lines[half..].concat();
    let (a, b) = rest.split_at(rest.len() - 10);
    f.write_all(a.as_bytes()).unwrap();
    f.flush().unwrap();
    let all = calls_in(&lines);
    common::wait_for(
        "the lines written while following",
        Duration::from_secs(20),
        || async { requests().await >= all - 1 },
    )
    .await;
    f.write_all(b.as_bytes()).unwrap();
    drop(f);
    common::wait_for("every call", Duration::from_secs(20), || async {
        requests().await == all
    })
    .await;
    // Stopped once its position is recorded (stopped between a send and
    // the record, it would send those rows again, recognised by id).
    let recorded = || {
        std::fs::read(&state)
            .ok()
            .and_then(|b| serde_json::from_slice::<Json>(&b).ok())
            .and_then(|v| v["files"][transcript.to_str().unwrap()]["lines"].as_u64())
    };
    common::wait_for("the position recorded", Duration::from_secs(20), || async {
        recorded() == Some(lines.len() as u64)
    })
    .await;
    child.kill().await.unwrap();

    // A restart: nothing sent again.
    let mut child = follow();
    let stdout = child.stdout.take().unwrap();
    let mut out = tokio::io::BufReader::new(stdout);
    let mut said = String::new();
    let read = async {
        use tokio::io::AsyncBufReadExt;
        let mut line = String::new();
        while out.read_line(&mut line).await.unwrap_or(0) > 0 {
            said.push_str(&line);
            line.clear();
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(3), read).await;
    assert!(said.contains("following"), "{said}");
    assert!(
        !said.contains("rows sent"),
        "a restart sends nothing again: {said}"
    );
    // Written anew: read from its start, every row recognised.
    std::fs::remove_file(&transcript).unwrap();
    std::fs::write(&transcript, lines.concat()).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(requests().await, all);
    child.kill().await.unwrap();
    svc.running.shutdown().await.unwrap();
}

/// The generated history imported equals ccusage's figures on it, per day
/// and model and per session and model; every case where the two could
/// differ is one of the generated shapes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_claude_code_history_imports_equal_to_ccusage() {
    install();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("claude");
    let calls = generated_claude_history(&dir);
    let (_pg, db, svc, _) = service("import_generated", tmp.path()).await;
    // Small batches: the history is read and sent in several chunks, with
    // sessions widening from one to the next.
    let said = import_source(
        &svc.endpoint,
        "claude-code",
        ("--claude-dir", &dir),
        &["--batch-rows", "5"],
        tmp.path(),
    );
    common::say(&said);
    assert!(
        said.contains("1 lines skipped") && said.contains(" 0 rejected"),
        "{said}"
    );
    assert_eq!(llm_requests(&db).await as usize, calls);
    // Every session once, spanning all its lines' rows.
    assert_eq!(
        common::count(
            &db,
            "SELECT count(*) FROM agent_sessions s WHERE s.start_time <= \
             (SELECT min(\"timestamp\") FROM agent_events e WHERE e.session_id = s.id) \
             AND s.end_time >= (SELECT max(\"timestamp\") FROM agent_events e WHERE e.session_id = s.id)"
        )
        .await,
        common::count(&db, "SELECT count(DISTINCT session_id) FROM agent_events").await
    );
    let daily = ccusage("daily", &dir, tmp.path());
    assert_eq!(
        stored_figures(&db, "(\"timestamp\" AT TIME ZONE 'UTC')::date::text").await,
        without_empty(ccusage_figures(daily["daily"].as_array().unwrap(), "date"))
    );
    let by_session = ccusage("session", &dir, tmp.path());
    assert_eq!(
        stored_figures(&db, "session_id::text").await,
        without_empty(ccusage_figures(
            by_session["sessions"].as_array().unwrap(),
            "sessionId"
        ))
    );
    svc.running.shutdown().await.unwrap();
}

/// Copilot CLI's sessions, as its 1.0.102 binary wrote them
/// (tests/fixtures/copilot-cli-1.0.102): every usage record one request
/// with its tokens, a subagent's under its parent's session, tools with
/// their success, prompts and replies in order, each session an agent
/// session; a second import stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copilot_cli_sessions_import_once() {
    let tmp = tempfile::tempdir().unwrap();
    let home = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/copilot-cli-1.0.102"
    );
    let (_pg, db, svc, _) = service("import_copilot", tmp.path()).await;
    let import = || {
        import_source(
            &svc.endpoint,
            "copilot-cli",
            ("--copilot-home", Path::new(home)),
            &[],
            tmp.path(),
        )
    };
    let summary = import();
    common::say(&summary);
    assert!(
        summary.contains("copilot-cli: 4 files") && summary.contains(" 0 rejected"),
        "{summary}"
    );
    // The mock's figures: (input incl. cache, cached, output) per call.
    assert_eq!(
        common::strings(
            &db,
            "SELECT string_agg(input_tokens || '/' || cached_tokens || '/' || output_tokens, ' ' ORDER BY \"timestamp\")
             FROM agent_events WHERE event_type = 'llm_request' AND agent_id = 'copilot-cli'
             GROUP BY session_id ORDER BY session_id",
        )
        .await,
        // Sessions in id order: the Anthropic provider's, the failed
        // tool's, the resumed one's and the subagent's.
        [
            "2311/2000/40",
            "1001/601/51 1002/602/52",
            "1001/601/51 1002/602/52 1003/603/53 1004/604/54",
            "1001/601/51 1002/602/52 1003/603/53 1004/604/54",
        ]
    );
    assert_eq!(
        common::count(
            &db,
            "SELECT count(*) FROM agent_events WHERE event_type = 'llm_request' AND context->>'agent_id' IS NOT NULL"
        )
        .await,
        2,
        "the subagent's calls"
    );
    let resumed = Uuid::parse_str("b764ecca-3419-4990-8e1b-453f7ee8c55f").unwrap();
    assert_eq!(
        messages(&db, resumed).await,
        [
            said("user", "Create hello.txt then edit it"),
            said("assistant", "Done: created and edited hello.txt."),
            said("user", "Say done again"),
            said("assistant", "Done: created and edited hello.txt."),
        ]
    );
    assert_eq!(
        common::strings(
            &db,
            "SELECT data->>'tool_name' || ' ' || (data->>'success') FROM agent_events
             WHERE event_type = 'tool_use' AND session_id = 'b6ffce14-eb73-4235-affb-69ae5a6c54d2'",
        )
        .await,
        ["edit false"]
    );
    assert_eq!(
        common::count(
            &db,
            "SELECT count(*) FROM agent_sessions WHERE agent_id = 'copilot-cli' AND agent_version = '1.0.102'"
        )
        .await,
        4
    );
    let again = import();
    assert!(again.contains(" 0 stored"), "{again}");
    svc.running.shutdown().await.unwrap();
}

/// The service's database goes down in the middle of an import: what the
/// service cannot store it answers "resend later", the import waits and
/// resends, and once the database is back every row is stored, once, and
/// equal to the generated history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_waits_out_the_services_database_outage() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("claude");
    let calls = generated_claude_history(&dir);
    let (pg, conn, svc) = common::service_with("import_outage", |c| {
        c.pipeline.copy_retry_timeout = Duration::from_secs(1);
    })
    .await;
    pg.cluster.stop().expect("stop PostgreSQL");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_agent-telemetry"))
        .args([
            "import",
            "--source",
            "claude-code",
            "--endpoint",
            &svc.endpoint,
        ])
        .args(["--batch-rows", "5"])
        .arg("--claude-dir")
        .arg(&dir)
        .env("HOME", tmp.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    pg.cluster.start().expect("start PostgreSQL");
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    common::say(&said);
    assert!(said.contains(" 0 rejected"), "{said}");
    assert!(
        !said.contains(" 0 batches resent"),
        "the outage made the service ask for resends: {said}"
    );
    let db = common::db(&conn).await;
    assert_eq!(llm_requests(&db).await as usize, calls);
    assert_eq!(
        common::count(
            &db,
            "SELECT count(*) - count(DISTINCT id) FROM agent_events"
        )
        .await,
        0
    );
    svc.running.shutdown().await.unwrap();
}
