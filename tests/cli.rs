//! The command line as a newcomer types it: a database flag works before or
//! after the subcommand, sizes take units, and the shells complete it.

mod common;

fn run(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_agent-telemetry"))
        .args(args)
        .env_remove("DATABASE_URL")
        .output()
        .expect("run agent-telemetry")
}

#[tokio::test]
async fn database_flags_work_in_either_position() {
    let pg = common::TestCluster::start();
    let conn = pg.database("cli").await;
    for args in [
        vec![
            "keys",
            "create",
            "--project",
            "acme/api",
            "--database-url",
            &conn,
        ],
        vec![
            "keys",
            "--database-url",
            &conn,
            "create",
            "--project",
            "acme/web",
        ],
        vec!["keys", "list", "--database-url", &conn],
        vec!["readers", "list", "--database-url", &conn],
        vec!["readers", "--database-url", &conn, "list"],
    ] {
        let out = run(&args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let listed = String::from_utf8(run(&["keys", "list", "--database-url", &conn]).stdout).unwrap();
    assert!(
        listed.contains("acme/api") && listed.contains("acme/web"),
        "{listed}"
    );
}

#[test]
fn sizes_take_units_and_a_bad_one_says_what_it_wants() {
    let out = run(&["serve", "--buffer-bytes", "lots", "--help"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("is not a size") && err.contains("128MiB"),
        "{err}"
    );
    let help = String::from_utf8(run(&["serve", "--help"]).stdout).unwrap();
    assert!(help.contains("[default: 128MiB]"), "{help}");
}

/// Settings that cannot work are found before the database is touched: a
/// port in use or a bad price table is the error, not the unreachable
/// database named beside it (which would take seconds to time out).
#[test]
fn a_port_in_use_or_a_bad_price_table_fails_before_the_database() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let nowhere = "host=/nonexistent dbname=x";
    let base = [
        "serve",
        "--database-url",
        nowhere,
        "--metrics-listen",
        "127.0.0.1:0",
    ];
    let expect = |extra: &[&str], what: &str| {
        let out = run(&[&base[..], extra].concat());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(what),
            "{extra:?}: {err}"
        );
        assert!(!err.contains("cannot connect to the database"), "{err}");
    };
    expect(&["--listen", &port], &port);
    expect(
        &[
            "--listen",
            "127.0.0.1:0",
            "--otlp-grpc-listen",
            &port,
            "--otlp-http-listen",
            "127.0.0.1:0",
        ],
        &port,
    );
    let dir = tempfile::tempdir().unwrap();
    let prices = dir.path().join("prices.json");
    std::fs::write(&prices, "{ not json").unwrap();
    expect(
        &[
            "--listen",
            "127.0.0.1:0",
            "--otlp-grpc-listen",
            "127.0.0.1:0",
            "--otlp-http-listen",
            "127.0.0.1:0",
            "--price-table",
            prices.to_str().unwrap(),
        ],
        "prices.json",
    );
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "[default]\nchat = \"redact\"\n").unwrap();
    expect(
        &[
            "--listen",
            "127.0.0.1:0",
            "--content-policy",
            policy.to_str().unwrap(),
        ],
        "content policy",
    );
    // The error names the file and the value it does not know.
    let out = run(&[
        &base[..],
        &[
            "--listen",
            "127.0.0.1:0",
            "--content-policy",
            policy.to_str().unwrap(),
        ],
    ]
    .concat());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("policy.toml") && err.contains("redact") && err.contains("truncate"),
        "{err}"
    );
}

#[test]
fn completions_cover_every_command_and_flag_and_bash_parses_them() {
    for shell in ["bash", "zsh", "fish"] {
        let out = run(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {out:?}");
        let script = String::from_utf8(out.stdout).unwrap();
        for word in [
            "serve",
            "readers",
            "completions",
            "redaction-rules",
            "storage-layout",
            "log-format",
        ] {
            assert!(script.contains(word), "{shell} completion lacks {word}");
        }
        if shell == "bash" {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("agent-telemetry.bash");
            std::fs::write(&path, &script).unwrap();
            // Sourced, it registers the completion function.
            let check = std::process::Command::new("bash")
                .arg("-c")
                .arg(format!(
                    "source {} && complete -p agent-telemetry",
                    path.display()
                ))
                .output()
                .unwrap();
            let said = String::from_utf8_lossy(&check.stdout);
            assert!(
                check.status.success() && said.contains("agent-telemetry"),
                "{said} {}",
                String::from_utf8_lossy(&check.stderr)
            );
        }
    }
    let out = run(&["completions", "tcsh"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("possible values"),
        "{err}"
    );
}

/// A settings file as an operator writes one, and the order of precedence:
/// flags > environment > file > defaults. A port in use is the observable
/// (serve fails on it in milliseconds, naming it).
#[test]
fn a_settings_file_sits_below_the_environment_and_the_flags() {
    let taken: Vec<std::net::TcpListener> = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let port = |i: usize| taken[i].local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent-telemetry.toml");
    std::fs::write(
        &file,
        format!(
            "database-url = \"host=/nonexistent dbname=x\"\n\
             metrics-listen = \"127.0.0.1:0\"\n\
             listen = \"127.0.0.1:1\"\n\
             [serve]\nlisten = \"{}\"\nbuffer-bytes = \"64MiB\"\n\
             [loadgen]\nendpoint = \"http://127.0.0.1:1\"\n",
            port(0)
        ),
    )
    .unwrap();
    let serve = |env: &[(&str, String)], flags: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_agent-telemetry"));
        cmd.args(["serve", "--config", file.to_str().unwrap()])
            .args(flags)
            .env_remove("DATABASE_URL")
            .env_remove("AGENT_TELEMETRY_LISTEN");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // The file's [serve] table, over its top level.
    let err = serve(&[], &[]);
    assert!(
        err.contains(&format!("cannot listen on {}", port(0))),
        "{err}"
    );
    // The environment over the file.
    let env = [("AGENT_TELEMETRY_LISTEN", port(1))];
    let err = serve(&env, &[]);
    assert!(
        err.contains(&format!("cannot listen on {}", port(1))),
        "{err}"
    );
    // A flag over both.
    let err = serve(&env, &["--listen", &port(2)]);
    assert!(
        err.contains(&format!("cannot listen on {}", port(2))),
        "{err}"
    );
    // The [loadgen] table is loadgen's alone.
    let out = run(&[
        "loadgen",
        "--config",
        file.to_str().unwrap(),
        "--events",
        "1",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("cannot reach http://127.0.0.1:1"),
        "{err}"
    );

    // Mistakes name the file and the key.
    let bad = dir.path().join("bad.toml");
    for (text, says) in [
        ("listn = \"127.0.0.1:0\"\n", "\"listn\" is not a setting"),
        (
            "[serve]\nendpoint = \"x\"\n",
            "\"endpoint\" is not a setting of serve",
        ),
        ("[sevre]\nlisten = \"x\"\n", "[sevre] is not a command"),
        ("listen = [\"a\", {}]\n", "is not a flag's value"),
        ("listen = \"127.0.0.1:0\n", "is not TOML"),
    ] {
        std::fs::write(&bad, text).unwrap();
        let out = run(&["serve", "--config", bad.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {err}");
        assert!(
            err.contains("bad.toml") && err.contains(says),
            "{text}: {err}"
        );
    }
    // A bad value is refused as the flag would refuse it.
    std::fs::write(&bad, "buffer-bytes = \"lots\"\n").unwrap();
    let out = run(&["serve", "--config", bad.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("is not a size")
            && err.contains("from the settings file: --buffer-bytes=lots"),
        "{err}"
    );
}
