//! The rule set against a generated corpus: each kind's secrets in the
//! places agents put them (a command, an env file, a JSON value, a chat
//! message) must be redacted, and realistic text that holds none (ids,
//! hashes, blobs, paths, prose about keys, the loadgen data) left alone.

use rand::{Rng, SeedableRng, rngs::SmallRng};

use super::*;

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const UPPER32: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URLSAFE: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";

fn pick(rng: &mut SmallRng, set: &[u8], n: usize) -> String {
    (0..n)
        .map(|_| set[rng.random_range(0..set.len())] as char)
        .collect()
}

/// (kind, a secret of that kind, whether it is the whole secret or only
/// the value after a name).
fn secret(rng: &mut SmallRng, kind: &str) -> String {
    match kind {
        "aws-access-key-id" => format!("AKIA{}", pick(rng, UPPER32, 16)),
        "github-token" => format!("ghp_{}", pick(rng, ALNUM, 36)),
        "gitlab-token" => format!("glpat-{}", pick(rng, URLSAFE, 20)),
        "slack-token" => format!(
            "xoxb-{}-{}-{}",
            rng.random_range(1_000_000_000u64..9_999_999_999),
            rng.random_range(1_000_000_000u64..9_999_999_999),
            pick(rng, ALNUM, 24)
        ),
        "slack-webhook" => format!(
            "https://hooks.slack.com/services/T{}/B{}/{}",
            pick(rng, UPPER32, 8),
            pick(rng, UPPER32, 10),
            pick(rng, ALNUM, 24)
        ),
        "stripe-key" => format!("sk_live_{}", pick(rng, ALNUM, 24)),
        "anthropic-key" => format!("sk-ant-api03-{}AA", pick(rng, URLSAFE, 93)),
        "openai-key" => format!("sk-proj-{}", pick(rng, URLSAFE, 48)),
        "google-api-key" => format!("AIza{}", pick(rng, URLSAFE, 35)),
        "azure-storage-key" => format!("{}==", pick(rng, B64, 86)),
        "azure-sas-signature" => format!("{}%3D", pick(rng, ALNUM, 43)),
        "azure-client-secret" => {
            format!("abc{}Q~{}", rng.random_range(0..10), pick(rng, ALNUM, 34))
        }
        "npm-token" => format!("npm_{}", pick(rng, ALNUM, 36)),
        "huggingface-token" => {
            let letters = &ALNUM[..52];
            format!("hf_{}", pick(rng, letters, 34))
        }
        "jwt" => format!(
            "eyJhbGciOiJIUzI1NiJ9.eyJ{}.{}",
            pick(rng, URLSAFE, 30),
            pick(rng, URLSAFE, 43)
        ),
        "private-key" => format!(
            "-----BEGIN RSA PRIVATE KEY-----\n{}\n{}\n-----END RSA PRIVATE KEY-----",
            pick(rng, B64, 64),
            pick(rng, B64, 64)
        ),
        "url-password" | "secret-assignment" | "secret-flag" | "basic-auth-flag" => {
            pick(rng, ALNUM, 14)
        }
        "authorization-header" | "bearer-token" => pick(rng, URLSAFE, 40),
        // A classic 40-hex GitHub token as a remote's user name; a digit
        // and a letter at its end, as every such token has somewhere.
        "url-userinfo" => format!("{}0f", pick(rng, ALNUM, 38)),
        other => panic!("no generator for {other}"),
    }
}

/// The secret where an agent would have it: the texts it appears in.
fn placed(kind: &str, s: &str) -> Vec<String> {
    match kind {
        "azure-storage-key" => vec![format!(
            "DefaultEndpointsProtocol=https;AccountName=acme;AccountKey={s};EndpointSuffix=core.windows.net"
        )],
        "azure-sas-signature" => vec![format!(
            "curl 'https://acme.blob.core.windows.net/c/b.txt?sv=2022-11-02&sp=r&sig={s}'"
        )],
        "url-userinfo" => vec![
            format!("git remote add origin https://{s}@github.com/acme/api.git"),
            format!("fatal: unable to access 'https://{s}@github.com/acme/api.git/'"),
        ],
        "url-password" => vec![
            format!("psql postgres://app:{s}@db.internal:5432/app"),
            format!("DATABASE_URL=mysql://root:{s}@localhost/test"),
            format!("git clone https://oauth2:{s}@gitlab.example.com/team/repo.git"),
        ],
        "secret-assignment" => vec![
            format!("export DB_PASSWORD={s}"),
            format!("PGPASSWORD='{s}' psql -h db"),
            format!("AWS_SECRET_ACCESS_KEY=\"{s}\""),
            format!("Server=db;Database=app;User Id=sa;Password={s};"),
            format!("client_secret: {s}9x"),
        ],
        "secret-flag" => vec![
            format!("vault login --token {s}"),
            format!("mytool --api-key={s} run"),
        ],
        "basic-auth-flag" => vec![format!("curl -u admin:{s} https://ci.example.com/api")],
        "authorization-header" => vec![format!(
            "curl -H 'Authorization: Basic {s}' https://api.example.com"
        )],
        "bearer-token" => vec![format!("the request sent bearer {s} to the API")],
        _ => vec![
            format!("export TOKEN_VALUE_IS {s} now"),
            format!("git push https://x.example.com # {s}"),
            format!("I pasted {s} by mistake, is it valid?"),
        ],
    }
}

const KINDS: &[&str] = &[
    "private-key",
    "aws-access-key-id",
    "github-token",
    "gitlab-token",
    "slack-token",
    "slack-webhook",
    "stripe-key",
    "anthropic-key",
    "openai-key",
    "google-api-key",
    "azure-storage-key",
    "azure-sas-signature",
    "azure-client-secret",
    "npm-token",
    "huggingface-token",
    "jwt",
    "url-password",
    "url-userinfo",
    "authorization-header",
    "bearer-token",
    "basic-auth-flag",
    "secret-flag",
    "secret-assignment",
];

fn redactor() -> Redactor {
    Redactor::new(None).expect("built-in rules")
}

#[test]
fn every_kind_is_generated_and_every_rule_has_a_kind_here() {
    let r = redactor();
    for k in r.kinds().filter(|k| *k != SECRET_FIELD) {
        assert!(KINDS.contains(&k), "{k} has no corpus");
    }
}

#[test]
fn every_rules_secrets_are_redacted_in_text_json_and_chat() {
    let r = redactor();
    let mut rng = SmallRng::seed_from_u64(7);
    let mut positives = 0;
    for &kind in KINDS {
        for _ in 0..25 {
            let s = secret(&mut rng, kind);
            for text in placed(kind, &s) {
                positives += 1;
                let mut hits = Hits::default();
                let out = r
                    .text(&text, &mut hits)
                    .unwrap_or_else(|| panic!("{kind}: nothing redacted in {text:?}"));
                assert!(!out.contains(&s), "{kind}: {s:?} left in {out:?}");
                assert!(
                    out.contains(&format!("[REDACTED:{kind}]")),
                    "{kind}: {out:?} (hits {hits:?})"
                );
                assert_eq!(hits.count(kind), 1, "{kind} in {text:?}: {hits:?}");
                // The same text as a JSON value, and inside a command.
                let json = serde_json::json!({"tool": "bash", "input": {"command": text}, "n": 12345678901234567890u64}).to_string();
                let mut hits = Hits::default();
                let out = r.json(&json, &mut hits).expect("redacted in JSON");
                assert!(!out.contains(&s), "{kind}: {s:?} left in {out}");
                let v: serde_json::Value = serde_json::from_str(&out).expect("still JSON");
                assert!(
                    out.contains("12345678901234567890"),
                    "numbers keep their digits: {out}"
                );
                assert!(
                    v["input"]["command"]
                        .as_str()
                        .unwrap()
                        .contains(&format!("[REDACTED:{kind}]"))
                );
                // Redacting again finds nothing: replay sees stored text.
                assert_eq!(
                    r.text(
                        v["input"]["command"].as_str().unwrap(),
                        &mut Hits::default()
                    ),
                    None
                );
                assert_eq!(r.json(&out, &mut Hits::default()), None, "{out}");
            }
        }
    }
    eprintln!("redaction corpus: {positives} positives, all redacted");
}

#[test]
fn json_under_a_secret_name_is_redacted_whatever_it_holds() {
    let r = redactor();
    let mut hits = Hits::default();
    let text = r#"{"env": {"GITHUB_TOKEN": "short", "HOME": "/home/ada", "API_KEY": "$FROM_ENV"}, "password": "hunter2", "max_tokens": 8192, "token_count": "12", "auth": {"client_secret": ""}}"#;
    let out = r.json(text, &mut hits).expect("redacted");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["env"]["GITHUB_TOKEN"], "[REDACTED:secret-field]");
    assert_eq!(v["password"], "[REDACTED:secret-field]");
    assert_eq!(v["env"]["HOME"], "/home/ada");
    assert_eq!(
        v["env"]["API_KEY"], "$FROM_ENV",
        "a reference is not a secret"
    );
    assert_eq!(v["max_tokens"], 8192);
    assert_eq!(v["token_count"], "12");
    assert_eq!(v["auth"]["client_secret"], "");
    assert_eq!(hits.count(SECRET_FIELD), 2);
    // Escaped text is decoded before it is checked.
    let escaped = r#"{"cmd":"psql postgres:\/\/app:s3cr3tPassw0rd@db\/app","pem":"-----BEGIN PRIVATE KEY-----\nMIIEv\n-----END PRIVATE KEY-----"}"#;
    let out = r.json(escaped, &mut Hits::default()).expect("redacted");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["cmd"],
        "psql postgres://app:[REDACTED:url-password]@db/app"
    );
    assert_eq!(v["pem"], "[REDACTED:private-key]");
}

/// Text that looks like secrets to a careless rule and is not one.
fn negatives(rng: &mut SmallRng) -> Vec<String> {
    let hex = b"0123456789abcdef";
    let mut v = vec![
        uuid::Uuid::new_v4().to_string(),
        pick(rng, hex, 40),
        format!("git checkout {}", pick(rng, hex, 40)),
        format!("sha256:{}", pick(rng, hex, 64)),
        format!("data:image/png;base64,{}", pick(rng, B64, 120)),
        format!(
            "/home/dev/src/service-{}/src/main.rs",
            rng.random_range(0..100)
        ),
        "C:\\Users\\dev\\project\\src\\token_store.rs".to_owned(),
        "Rotate the API key and store the token in the vault; never paste a password here."
            .to_owned(),
        "the token: see the docs".to_owned(),
        "max_tokens=8192 temperature=0.2".to_owned(),
        "cargo test --features tokens -- --nocapture".to_owned(),
        "grep -rn password src/ | wc -l".to_owned(),
        "export PATH=$HOME/.cargo/bin:$PATH".to_owned(),
        "DB_PASSWORD=$DB_PASSWORD docker compose up".to_owned(),
        "password: ${{ secrets.DB_PASSWORD }}".to_owned(),
        "git clone https://github.com/acme/repo.git".to_owned(),
        "ssh git@github.com".to_owned(),
        "fn parse_token(input: &str) -> Token".to_owned(),
        "let secret_name = \"prod\";".to_owned(),
        "bypass=true cache=off".to_owned(),
        "https://user@example.com/path".to_owned(),
        format!("request_id=req_{:016x}", rng.random::<u64>()),
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----".to_owned(),
        "-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----".to_owned(),
        "the skeleton sk-builder is broken".to_owned(),
        "npm install --save-dev typescript".to_owned(),
    ];
    v.push(format!("commit {} (HEAD -> main)", pick(rng, hex, 40)));
    v
}

#[test]
fn realistic_text_without_secrets_is_left_alone() {
    let r = redactor();
    let mut rng = SmallRng::seed_from_u64(11);
    let (mut total, mut flagged) = (0, Vec::new());
    for _ in 0..40 {
        for text in negatives(&mut rng) {
            total += 1;
            if let Some(out) = r.text(&text, &mut Hits::default()) {
                flagged.push((text, out));
            }
        }
    }
    // The loadgen data, as the benchmarks send it.
    let events = crate::loadgen::r#gen::Generator::new(42, 20).events(2000);
    for e in &events {
        for json in [&e.context_json, &e.data_json, &e.metrics_json] {
            total += 1;
            if let Some(out) = r.json(json, &mut Hits::default()) {
                flagged.push((json.clone(), out));
            }
        }
    }
    eprintln!(
        "redaction corpus: {total} negatives, {} false positives",
        flagged.len()
    );
    assert!(flagged.is_empty(), "false positives: {flagged:#?}");
}

#[test]
fn the_operators_rules_and_allow_list_take_effect() {
    let file: RulesFile = toml::from_str(
        r#"
[[rule]]
kind = "acme-token"
regex = 'acme_(?P<s>[0-9a-f]{32})'

[[allow]]
regex = '^AKIAIOSFODNN7EXAMPLE$'
"#,
    )
    .unwrap();
    let r = Redactor::new(Some(("rules.toml", &file))).unwrap();
    let mut hits = Hits::default();
    let out = r
        .text(
            "use acme_0123456789abcdef0123456789abcdef with AKIAIOSFODNN7EXAMPLE and AKIAIOSFODNN7EXAMPLF",
            &mut hits,
        )
        .unwrap();
    assert_eq!(
        out,
        "use acme_[REDACTED:acme-token] with AKIAIOSFODNN7EXAMPLE and [REDACTED:aws-access-key-id]"
    );
    assert!(r.kinds().any(|k| k == "acme-token"));
    let bad: RulesFile = toml::from_str("[[rule]]\nkind = \"Acme Token\"\nregex = 'x'\n").unwrap();
    let e = Redactor::new(Some(("rules.toml", &bad)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("rules.toml") && e.contains("Acme Token"), "{e}");
    let bad: RulesFile = toml::from_str("[[rule]]\nkind = \"acme\"\nregex = '('\n").unwrap();
    let e = Redactor::new(Some(("rules.toml", &bad)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("rule \"acme\"") && e.contains("unclosed"), "{e}");
    let e = toml::from_str::<RulesFile>("[[rules]]\nkind = \"a\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("rules"), "{e}");
}

#[test]
fn every_field_of_every_record_is_redacted() {
    let r = redactor();
    let key = "ghp_0123456789abcdefghijABCDEFGHIJ012345";
    let mut scan = Scan::default();
    let mut e = pb::AgentEvent {
        context_json: format!(r#"{{"k":"{key}"}}"#),
        data_json: format!(r#"{{"k":"{key}"}}"#),
        metrics_json: format!(r#"{{"k":"{key}"}}"#),
        tags: vec![key.to_owned(), "ok".to_owned()],
        ..Default::default()
    };
    r.event(&mut e, &mut scan);
    assert_eq!(scan.hits.count("github-token"), 4);
    assert!(!format!("{e:?}").contains(key));
    let mut m = pb::ChatMessage {
        content: key.to_owned(),
        search_content: Some(key.to_owned()),
        metadata_json: format!(r#"{{"k":"{key}"}}"#),
        ..Default::default()
    };
    r.message(&mut m, &mut scan);
    assert!(!format!("{m:?}").contains(key));
    let mut s = pb::ChatSession {
        workspace: Some(pb::Workspace {
            workspace_path: format!("/tmp/{key}"),
            project: Some(pb::Project {
                repo_url: Some(format!("https://x:{key}@github.com/a/b")),
                description: Some(key.to_owned()),
                ..Default::default()
            }),
            machine: Some(pb::Machine {
                metadata_json: format!(r#"{{"k":"{key}"}}"#),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    r.chat_session(&mut s, &mut scan);
    assert!(!format!("{s:?}").contains(key));
    let mut a = pb::AgentSession {
        context_json: format!(r#"{{"k":"{key}"}}"#),
        metrics_json: format!(r#"{{"k":"{key}"}}"#),
        outcome: key.to_owned(),
        ..Default::default()
    };
    r.agent_session(&mut a, &mut scan);
    assert!(!format!("{a:?}").contains(key));
}

/// The gate after a name's keyword: what loadgen sends under `max_tokens`
/// runs no rule, and each rule's delimiter, Unicode whitespace included
/// (the patterns' `\s`), lets its rule run and redact.
#[test]
fn a_name_runs_its_rules_only_where_a_value_follows_it() {
    use super::rules::After;
    let r = redactor();
    let json = r#"{"max_tokens": 8192, "tokens_per_second": 40, "time_to_first_token_ms": 800}"#;
    assert_eq!(r.candidates(json), (Vec::new(), false));
    assert_eq!(r.json(json, &mut Hits::default()), None);
    let cases = [
        (After::Assign, "export DB_PASSWORD=hunter2x", true),
        (After::Assign, "DB_PASSWORD\u{a0}= hunter2x", true),
        (After::Assign, "the password is long", false),
        (After::Colon, "token: a1B2c3D4e5F6", true),
        (After::Colon, "\"token\" : 'a1B2c3D4e5F6'", true),
        (After::Colon, "token: see below", false),
        (After::Colon, "token: 8192", false),
        (After::Flag, "--api-key a1B2c3", true),
        (After::Flag, "--password=a1B2c3", true),
        (After::Flag, "--keyring", false),
        (After::JsonString, r#""api_key" : "x""#, true),
        (After::JsonString, r#""api_key": 5"#, false),
    ];
    for (after, text, holds) in cases {
        let lower = text.to_ascii_lowercase();
        let at = ["password", "token", "key"]
            .iter()
            .find_map(|k| lower.find(k).map(|i| i + k.len()))
            .expect("a name");
        assert_eq!(after.holds(text, at), holds, "{after:?} {text:?}");
        if holds && after != After::JsonString {
            assert!(
                r.text(text, &mut Hits::default()).is_some(),
                "{text:?} redacted"
            );
        }
    }
}

/// A batch remembers the texts it found clean and compares a repeat
/// instead of searching it: once as plain text and once as JSON, which
/// differ (a secret's name with a short value is a secret only in JSON);
/// a repeated secret is redacted and counted every time. A short text (a
/// tag) is remembered too; an event's own data and metrics are not.
#[test]
fn a_batch_searches_a_repeated_clean_text_once_and_still_redacts_every_secret() {
    let r = redactor();
    let mut scan = Scan::default();
    let pad = "x".repeat(48);
    let context = format!(r#"{{"workspace_path":"/home/dev/src/acme/api","pad":"{pad}"}}"#);
    let named = format!(r#"{{"password": "hunter2", "pad": "{pad}"}}"#);
    let leaked = format!(
        r#"{{"command":"export GITHUB_TOKEN=ghp_{:036}","pad":"{pad}"}}"#,
        7
    );
    for _ in 0..3 {
        let mut e = pb::AgentEvent {
            context_json: context.clone(),
            data_json: named.clone(),
            metrics_json: leaked.clone(),
            tags: vec![named.clone(), "main".to_owned(), String::new()],
            ..Default::default()
        };
        r.event(&mut e, &mut scan);
        assert_eq!(e.context_json, context);
        assert_eq!(e.tags, [named.as_str(), "main", ""], "clean as text");
        assert!(!e.data_json.contains("hunter2"), "{}", e.data_json);
        assert!(!e.metrics_json.contains("ghp_"), "{}", e.metrics_json);
    }
    assert_eq!(scan.hits.count(SECRET_FIELD), 3);
    assert_eq!(scan.hits.count("github-token"), 3);
    // Remembered once each: the context as JSON, the tag as text.
    assert_eq!(scan.clean_json.at.len(), 1);
    assert_eq!(scan.clean_json.texts, context);
    assert_eq!(scan.clean_text.texts, format!("{named}main"));
    let mut e = pb::AgentEvent {
        data_json: r#"{"exit_code":0}"#.to_owned(),
        ..Default::default()
    };
    r.event(&mut e, &mut scan);
    assert_eq!(
        scan.clean_json.at.len(),
        1,
        "an event's data is not remembered"
    );
}
