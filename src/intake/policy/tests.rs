use super::*;

fn cfg() -> ProjectsConfig {
    use clap::Parser;
    #[derive(Parser)]
    struct P {
        #[command(flatten)]
        p: ProjectsConfig,
    }
    P::parse_from(["x"]).p
}

fn policy(toml_text: &str) -> ContentPolicy {
    let file: PolicyFile = toml::from_str(toml_text).expect("toml");
    ContentPolicy::new("test.toml", &file, &cfg(), 1 << 20).expect("policy")
}

fn event(data: &str) -> pb::AgentEvent {
    pb::AgentEvent {
        data_json: data.into(),
        ..Default::default()
    }
}

#[test]
fn each_mode_stores_what_it_says_and_is_idempotent() {
    let long = "é".repeat(10); // 20 bytes
    assert_eq!(Mode::Truncate(5).apply(&long).as_deref(), Some("éé"));
    assert_eq!(Mode::Truncate(20).apply(&long), None);
    let h = Mode::Hash.apply("hello").expect("hashed");
    assert_eq!(
        h,
        "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    );
    assert_eq!(Mode::None.apply("hello").as_deref(), Some(""));
    assert_eq!(Mode::Full.apply("hello"), None);
    for m in [Mode::Truncate(5), Mode::Hash, Mode::None] {
        let once = m.apply(&long).expect("changed");
        assert_eq!(m.apply(&once), None, "{m:?} applied twice changes again");
    }
}

#[test]
fn file_contents_in_data_follow_the_files_mode_at_any_depth_and_numbers_stay_exact() {
    let p = policy("[default]\nfiles = \"truncate\"\ntruncate_bytes = 4\n");
    let mut e = event(
        r#"{"path":"a.rs","bytes":12345678901234567890,"tool_input":{"old_string":"abcdefgh","new_string":"ab"},"content":"0123456789","edits":[{"x":"long text"}],"prompt":"keep me"}"#,
    );
    let mut c = Changes::default();
    p.event(&mut e, p.default_policy(), &mut c);
    assert_eq!(
        e.data_json,
        r#"{"path":"a.rs","bytes":12345678901234567890,"tool_input":{"old_string":"abcd","new_string":"ab"},"content":"0123","edits":"[{\"x","prompt":"keep me"}"#
    );
    assert_eq!(c.truncated, 3);
    let again = e.data_json.clone();
    p.event(&mut e, p.default_policy(), &mut Changes::default());
    assert_eq!(e.data_json, again, "a replayed row is stored as spooled");
}

#[test]
fn none_stores_null_and_hash_hashes_values_and_prompts_follow_chat() {
    let p = policy("[default]\nfiles = \"none\"\nchat = \"hash\"\n");
    let mut e = event(r#"{"diff": {"a": [1, "}"]}, "prompt": "secret plan", "n": null}"#);
    let mut c = Changes::default();
    p.event(&mut e, p.default_policy(), &mut c);
    assert_eq!(
        e.data_json,
        format!(
            r#"{{"diff": null, "prompt": "{}", "n": null}}"#,
            hash("secret plan")
        )
    );
    assert_eq!((c.not_stored, c.hashed), (1, 1));
    serde_json::from_str::<serde_json::Value>(&e.data_json).expect("still JSON");
}

#[test]
fn an_event_without_the_keys_is_left_as_sent() {
    let p = policy("[default]\nfiles = \"none\"\nchat = \"none\"\n");
    let text = r#"{"path":"content/a.md","note":"the content of it"}"#;
    let mut e = event(text);
    let mut c = Changes::default();
    p.event(&mut e, p.default_policy(), &mut c);
    assert_eq!(e.data_json, text);
    assert_eq!(c.total(), 0);
}

#[test]
fn projects_are_matched_by_identity_and_the_strictest_covers_all() {
    let p = policy(
        r#"
[default]
chat = "truncate"
truncate_bytes = 100

[[project]]
name = "https://github.com/Acme/Payments.git"
chat = "none"

[[project]]
name = "acme/web"
truncate_bytes = 10
"#,
    );
    assert_eq!(p.for_name("acme/payments").chat, Mode::None);
    assert_eq!(p.for_name("github.com/ACME/payments").chat, Mode::None);
    assert_eq!(p.for_name("acme/web").chat, Mode::Truncate(10));
    assert_eq!(p.for_name("acme/other").chat, Mode::Truncate(100));
    assert_eq!(
        p.for_identity("github.com/acme/payments#7").chat,
        Mode::None
    );
    assert_eq!(p.strictest().chat, Mode::None);
    assert_eq!(p.strictest().files, Mode::Full);
}

#[test]
fn a_bad_file_says_where() {
    let err = |t: &str| {
        let file: PolicyFile = toml::from_str(t).expect("toml");
        ContentPolicy::new("p.toml", &file, &cfg(), 1000)
            .expect_err("refused")
            .to_string()
    };
    assert_eq!(
        err("[default]\nchat = \"truncate\"\ntruncate_bytes = 0\n"),
        "content policy p.toml: [default]: truncate_bytes = 0: must be 1 to 1000 (--max-content-bytes); \"none\" stores nothing"
    );
    let twice = err("[[project]]\nname = \"a/b\"\n[[project]]\nname = \"A/B\"\n");
    assert!(
        twice.contains("[[project]] 2 (\"A/B\"): project github.com/a/b is named twice"),
        "{twice}"
    );
    assert!(toml::from_str::<PolicyFile>("[default]\nchat = \"redact\"\n").is_err());
}

#[test]
fn a_message_records_what_was_done_once() {
    let mut m = pb::ChatMessage {
        content: "a long prompt".into(),
        search_content: Some("a long prompt".into()),
        metadata_json: r#"{"source": "otlp"}"#.into(),
        ..Default::default()
    };
    let mut c = Changes::default();
    ContentPolicy::message(&mut m, Mode::Truncate(6), &mut c);
    assert_eq!(m.content, "a long");
    assert_eq!(m.search_content.as_deref(), Some("a long"));
    assert_eq!(
        m.metadata_json,
        r#"{"content_policy":"truncated","source": "otlp"}"#
    );
    ContentPolicy::message(&mut m, Mode::Truncate(6), &mut c);
    assert_eq!(c.truncated, 1);
    let mut m = pb::ChatMessage {
        content: "x".into(),
        search_content: Some("x".into()),
        ..Default::default()
    };
    ContentPolicy::message(&mut m, Mode::None, &mut c);
    assert_eq!(
        (
            m.content.as_str(),
            m.search_content,
            m.metadata_json.as_str()
        ),
        ("", None, r#"{"content_policy":"not_stored"}"#)
    );
}
