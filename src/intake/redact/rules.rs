//! The built-in rule set: credentials as coding agents meet them, in
//! commands, env files, tool inputs, prompts and pasted output. The token
//! formats are published facts (the providers' documentation and gitleaks'
//! rule list, `config/gitleaks.toml`); the patterns are written here for
//! one `RegexSet` pass, with ASCII word boundaries, since a Unicode `\b`
//! makes the regex crate leave its DFA on non-ASCII text.
//!
//! A pattern's capture group named `s` is what is replaced; without one,
//! the whole match is.

/// What a match must also satisfy beyond its pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    None,
    /// A value after `name: ` is redacted only when it looks random: prose
    /// ("the token: see below") has colons after such names too.
    Random,
}

/// What must follow a keyword where it ends a secret's name, for the rule
/// to be worth running: a name is common ("max_tokens": 8192, "key" in
/// prose), a secret's name followed by its value is not. Each is a
/// superset of what its rule's pattern requires after the name (the name's
/// remaining characters, then its delimiter), so a text that fails it at
/// every keyword holds no match of the rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Anything: the rule runs on every text that holds its keyword.
    Any,
    /// `--name value`, `--name=value`: whitespace or `=`.
    Flag,
    /// `NAME=value`, `NAME = "value"`: `=`, after an optional quote.
    Assign,
    /// `name: value`: `:` after an optional quote, then eight or more
    /// characters of a token, after an optional quote.
    Colon,
    /// `"name": "value"` in JSON: a quote, `:`, a quote.
    JsonString,
}

/// Where a secret's name that goes on past its keyword at byte `at` ends
/// (`pass` → `password`, `token` → `token_v2`): its characters, as
/// [`SECRET_NAME`] and the flag rule allow them, in either case, are all
/// ASCII, so the end is a character boundary. Found once per keyword match
/// and shared by its rules' [`After`] checks.
pub fn name_end(s: &str, at: usize) -> usize {
    at + s.as_bytes()[at..]
        .iter()
        .take_while(|&&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        .count()
}

/// What a value after `name: ` is made of ([`After::Colon`]'s rule).
fn token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'_' | b'.' | b'~' | b'-')
}

impl After {
    /// Whether `s` after a keyword that ends at byte `at` goes on as the
    /// rule needs.
    pub fn holds(self, s: &str, at: usize) -> bool {
        self.holds_after_name(&s[name_end(s, at)..])
    }

    /// The same, given what follows the whole name ([`name_end`]).
    /// Whitespace is Unicode's, as the patterns' `\s`.
    pub fn holds_after_name(self, rest: &str) -> bool {
        match self {
            After::Any => true,
            After::Flag => rest.starts_with(|c: char| c.is_whitespace() || c == '='),
            After::Assign => {
                let rest = rest.strip_prefix(['"', '\'']).unwrap_or(rest);
                rest.trim_start().starts_with('=')
            }
            After::Colon => {
                let rest = rest.strip_prefix(['"', '\'']).unwrap_or(rest);
                let Some(value) = rest.trim_start().strip_prefix(':') else {
                    return false;
                };
                let value = value.trim_start();
                let value = value.strip_prefix(['"', '\'']).unwrap_or(value);
                value.len() >= 8 && value.as_bytes()[..8].iter().all(|&b| token_byte(b))
            }
            After::JsonString => rest
                .strip_prefix('"')
                .and_then(|r| r.trim_start().strip_prefix(':'))
                .is_some_and(|r| r.trim_start().starts_with('"')),
        }
    }
}

pub struct Builtin {
    pub kind: &'static str,
    pub pattern: String,
    pub check: Check,
    /// What follows a keyword where a match holds it.
    pub after: After,
    /// Every match holds one of these, as written (for a pattern that
    /// starts `(?i)`, lowercase keywords in any case a name is written in):
    /// a text with none of any rule's keywords is not searched further.
    pub keywords: &'static [&'static str],
}

impl Builtin {
    fn after(self, after: After) -> Self {
        Self { after, ..self }
    }
}

fn rule(kind: &'static str, keywords: &'static [&'static str], pattern: &str) -> Builtin {
    Builtin {
        kind,
        pattern: pattern.to_owned(),
        check: Check::None,
        after: After::Any,
        keywords,
    }
}

/// The keywords of [`SECRET_NAME`]: each of its names holds one.
pub const NAME_KEYWORDS: &[&str] = &["pass", "pwd", "secret", "token", "key", "credential"];

/// Names whose values are secrets, as they end an environment variable, a
/// flag, a config key or a connection string parameter (`GITHUB_TOKEN`,
/// `PGPASSWORD`, `client_secret`, `Pwd`). A name that only contains one
/// (`max_tokens`, `token_count`, `bypass`) is not one: the short ones
/// (`pass`, `pwd`) count only as a whole word or after a separator.
pub const SECRET_NAME: &str = r"(?:(?-u:\b)[a-z0-9_.-]*(?:password|passwd|passphrase|secret|token|apikey|api[_-]key|access[_-]key|secret[_-]key|private[_-]key|auth[_-]key|credentials?)|(?-u:\b)(?:[a-z0-9.-]*[_.-])?(?:pass|pwd))";

pub fn builtin() -> Vec<Builtin> {
    vec![
        // Blocks first: a private key holds lines that other rules would cut.
        // Up to its END line, or the end of the text when it was cut off.
        rule(
            "private-key",
            &["PRIVATE KEY"],
            r"-----BEGIN[ A-Z0-9_-]{0,100}PRIVATE KEY(?: BLOCK)?-----[\s\S]*?(?:-----END[ A-Z0-9_-]{0,100}PRIVATE KEY(?: BLOCK)?-----|\z)",
        ),
        rule(
            "aws-access-key-id",
            &["A3T", "AKIA", "ASIA", "ABIA", "ACCA"],
            r"(?-u:\b)(?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16}(?-u:\b)",
        ),
        rule(
            "github-token",
            &["ghp_", "gho_", "ghu_", "ghs_", "ghr_"],
            r"(?-u:\b)gh[pousr]_[0-9A-Za-z]{36,255}(?-u:\b)",
        ),
        rule(
            "github-token",
            &["github_pat_"],
            r"(?-u:\b)github_pat_[0-9A-Za-z_]{82}(?-u:\b)",
        ),
        rule(
            "gitlab-token",
            &[
                "glpat-", "glptt-", "gldt-", "glrt-", "glcbt-", "glsoat-", "glffct-", "glimt-",
                "gloas-", "glagent-",
            ],
            r"(?-u:\b)gl(?:pat|ptt|dt|rt|cbt|soat|ffct|imt|oas|agent)-[0-9A-Za-z_-]{20,}",
        ),
        rule(
            "slack-token",
            &["xox"],
            r"(?-u:\b)xox[abeoprs]-[0-9A-Za-z-]{10,250}",
        ),
        rule(
            "slack-webhook",
            &["hooks.slack.com"],
            r"https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9+/_-]{20,}",
        ),
        rule(
            "stripe-key",
            &["_test_", "_live_", "_prod_"],
            r"(?-u:\b)(?:sk|rk)_(?:test|live|prod)_[0-9A-Za-z]{10,99}(?-u:\b)",
        ),
        // Anthropic before OpenAI: both start with `sk-`.
        rule(
            "anthropic-key",
            &["sk-"],
            r"(?-u:\b)sk-ant-[a-z]+[0-9]*-[0-9A-Za-z_-]{32,}",
        ),
        rule(
            "openai-key",
            &["sk-"],
            r"(?-u:\b)sk-(?:(?:proj|svcacct|admin)-[0-9A-Za-z_-]{20,}|[0-9A-Za-z]{20}T3BlbkFJ[0-9A-Za-z]{20}|[0-9A-Za-z]{48})(?-u:\b)",
        ),
        // Google Cloud and Google AI (Gemini) API keys share the format.
        rule(
            "google-api-key",
            &["AIza"],
            r"(?-u:\b)AIza[0-9A-Za-z_-]{35}(?-u:\b)",
        ),
        rule(
            "azure-storage-key",
            &["AccountKey="],
            r"(?-u:\b)AccountKey=(?P<s>[A-Za-z0-9+/]{80,100}={0,2})",
        ),
        rule(
            "azure-sas-signature",
            &["sig="],
            r"(?-u:\b)sig=(?P<s>[A-Za-z0-9%+/]{40,}(?:%3D|=){0,2})",
        ),
        rule(
            "azure-client-secret",
            &["Q~"],
            r"(?-u:\b)[A-Za-z0-9_~.]{3}[0-9]Q~[A-Za-z0-9_~.-]{31,34}(?-u:\b)",
        ),
        rule(
            "npm-token",
            &["npm_"],
            r"(?-u:\b)npm_[A-Za-z0-9]{36}(?-u:\b)",
        ),
        rule(
            "huggingface-token",
            &["hf_"],
            r"(?-u:\b)hf_[A-Za-z]{34}(?-u:\b)",
        ),
        rule(
            "jwt",
            &["eyJ"],
            r"(?-u:\b)eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}",
        ),
        // `scheme://user:password@host`: only the password (a user name
        // never starts a marker: a redacted user name stays as it is).
        rule(
            "url-password",
            &["://"],
            r"(?-u:\b)[A-Za-z][A-Za-z0-9+.-]{1,30}://[^\s:/@\[]+:(?P<s>[^\s/@]+)@",
        ),
        // `scheme://TOKEN@host` (CI remotes): a user name that looks
        // random is a token; `ssh://git@host` keeps its login.
        Builtin {
            check: Check::Random,
            ..rule(
                "url-userinfo",
                &["://"],
                r"(?-u:\b)[A-Za-z][A-Za-z0-9+.-]{1,30}://(?P<s>[^\s:/@\[]{8,})@",
            )
        },
        rule(
            "authorization-header",
            &["authorization"],
            r"(?i)(?-u:\b)(?:proxy-)?authorization\s*[:=]\s*(?:bearer|basic|token|digest)\s+(?P<s>[A-Za-z0-9._~+/=-]{8,})",
        ),
        rule(
            "bearer-token",
            &["bearer"],
            r"(?i)(?-u:\b)bearer\s+(?P<s>[A-Za-z0-9._~+/-]{20,}=*)",
        ),
        // `curl -u user:password`
        rule(
            "basic-auth-flag",
            &["curl"],
            r"(?-u:\b)curl\s[^\n]*?(?:-u|--user)\s+[^\s:]+:(?P<s>[^\s'\x22]+)",
        ),
        // `--password secret`, `--api-key=secret`
        rule(
            "secret-flag",
            &["pass", "secret", "token", "key"],
            r"(?i)(?:^|[^a-z0-9_-])--?(?:[a-z0-9-]*-)?(?:pass(?:word|wd|phrase)?|secret|token|api-?key|access-key|private-key)(?:\s+|=)(?P<s>[^\s\x22'-][^\s\x22']*)",
        )
        .after(After::Flag),
        // `NAME=value`, `NAME = "value"` (env files, exports, connection
        // strings' `Password=…;`): any value that is not a reference (`$X`).
        Builtin {
            kind: "secret-assignment",
            pattern: format!(
                r#"(?i){SECRET_NAME}\s*=\s*(?:"(?P<s>[^"\s$][^"\n]*)"|'(?P<s2>[^'\s$][^'\n]*)'|(?P<s3>[^\s"'$;&|<>`][^\s"';&|<>`]*))"#
            ),
            check: Check::None,
            after: After::Assign,
            keywords: NAME_KEYWORDS,
        },
        // `name: value` (YAML, HTTP-like headers, prose): only a random value.
        Builtin {
            kind: "secret-assignment",
            pattern: format!(
                r#"(?i){SECRET_NAME}["']?\s*:\s*["']?(?P<s>[A-Za-z0-9+/=_.~-]{{8,}})"#
            ),
            check: Check::Random,
            after: After::Colon,
            keywords: NAME_KEYWORDS,
        },
    ]
}

/// Whether `s` looks random enough to be a credential rather than a word:
/// at least 3.0 bits of Shannon entropy per character and a digit or a
/// symbol beside letters ("SuperSecret" is a word, "hY7-kq2Pz" is not).
pub fn looks_random(s: &str) -> bool {
    let letters = s.bytes().any(|b| b.is_ascii_alphabetic());
    let others = s.bytes().any(|b| !b.is_ascii_alphabetic());
    letters && others && entropy(s) >= 3.0
}

/// Shannon entropy in bits per byte.
pub fn entropy(s: &str) -> f64 {
    let mut counts = [0u32; 256];
    for b in s.bytes() {
        counts[b as usize] += 1;
    }
    let n = s.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}
