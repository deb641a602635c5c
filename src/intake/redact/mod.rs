//! Redaction: credentials out of every text a record carries, before
//! anything is spooled, looked up or stored (a spooled secret is a stored
//! secret). Intake runs it on each decoded row and session, native and OTLP
//! alike; a match becomes `[REDACTED:<kind>]`, the row is stored, and
//! `agent_telemetry_redactions_total{kind}` counts it.
//!
//! As in gitleaks, every rule has keywords that each of its matches holds:
//! one Aho-Corasick pass over a text finds which keywords it holds (the
//! usual answer is none, and costs one scan), and only the rules of those
//! keywords then run their regex; a rule of a secret's name runs only where
//! the name is followed as its pattern needs (`=`, `: <token>`), since
//! names are common (`"max_tokens": 8192`). A batch's [`Scan`] remembers
//! the texts it found clean: a repeated context is compared, not searched.
//! One `RegexSet` pass over all rules was measured first and cost more
//! (BENCHMARKS.md, "Redaction"). JSON is redacted
//! string by string, keeping its numbers and layout byte for byte, and a
//! string under a secret's name (`"password": "…"`) is redacted whatever it
//! looks like.
//!
//! The rules: [`rules`]; operators add their own and allow-list patterns
//! in a file (`--redaction-rules`). docs/reliability.md, "Redaction".

pub(super) mod json;
pub mod rules;

use std::{hash::BuildHasher, path::Path, sync::Arc};

use aho_corasick::AhoCorasick;
use regex::{Regex, RegexSet};
use serde::Deserialize;

use self::rules::{After, Check};
use crate::{
    config::{RedactionConfig, Switch},
    pb,
};

/// What a redacted span becomes starts with this.
pub const MARKER: &str = "[REDACTED:";

/// The kind of a JSON string under a secret's name.
const SECRET_FIELD: &str = "secret-field";

#[derive(Debug, thiserror::Error)]
pub enum RedactError {
    #[error("redaction rules {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("redaction rules {path}: {source}")]
    Parse {
        path: String,
        source: Box<toml::de::Error>,
    },
    #[error("redaction rules {path}: {what} {name:?}: {source}")]
    Pattern {
        path: String,
        what: &'static str,
        name: String,
        source: Box<regex::Error>,
    },
    #[error(
        "redaction rules {path}: rule kind {kind:?} must be 1 to 40 characters of a-z, 0-9 and '-' (it is a metric label)"
    )]
    Kind { path: String, kind: String },
}

/// The operator's file (TOML):
///
/// ```toml
/// [[rule]]
/// kind = "acme-token"             # the marker's and the counter's label
/// regex = 'acme_[0-9a-f]{32}'     # a group named `s` narrows what is replaced
/// keywords = ["acme_"]            # optional: what every match holds; without
///                                 # them the regex runs on every text
///
/// [[allow]]
/// regex = 'AKIAIOSFODNN7EXAMPLE'  # matched against each would-be secret
/// ```
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesFile {
    #[serde(default)]
    pub rule: Vec<FileRule>,
    #[serde(default)]
    pub allow: Vec<FileAllow>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRule {
    pub kind: String,
    pub regex: String,
    #[serde(default)]
    pub keywords: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAllow {
    pub regex: String,
}

impl RulesFile {
    pub fn load(path: &Path) -> Result<Self, RedactError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| RedactError::Read {
            path: shown.clone(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| RedactError::Parse {
            path: shown,
            source: Box::new(e),
        })
    }
}

struct Rule {
    kind: Arc<str>,
    regex: Regex,
    check: Check,
    after: After,
    /// Built in: its pattern has no anchor that a string's edges would
    /// satisfy and the JSON text around it would not, so a JSON text it
    /// does not match holds no string it matches.
    builtin: bool,
}

/// A keyword as the automaton looks for it: as written, and for a
/// case-insensitive rule (a lowercase keyword) in every case a name is
/// written in, lower, upper, title and camel (`dbPassword`, `apiKey`): a
/// long keyword without its first letter (`oken` finds `token` and
/// `Token`) and in upper case, a short one in all three.
fn variants(keyword: &str, case_insensitive: bool) -> Vec<String> {
    if !case_insensitive {
        return vec![keyword.to_owned()];
    }
    let mut v = vec![keyword.to_ascii_uppercase()];
    if keyword.len() >= 5 {
        v.push(keyword[1..].to_owned());
    } else {
        let mut title = keyword.to_owned();
        title[..1].make_ascii_uppercase();
        v.extend([keyword.to_owned(), title]);
    }
    v
}

/// The compiled rule set, shared by every stream.
pub struct Redactor {
    rules: Vec<Rule>,
    /// Every rule's keywords.
    keywords: AhoCorasick,
    /// The rules of each keyword (by the keyword's pattern id).
    keyword_rules: Vec<Vec<usize>>,
    /// Whether each keyword is one of a secret's name
    /// ([`rules::NAME_KEYWORDS`]).
    name_keyword: Vec<bool>,
    /// Rules without keywords (an operator's): run on every text.
    always: Vec<usize>,
    allow: Option<RegexSet>,
    /// A JSON object key whose string value is a secret.
    secret_name: Regex,
    /// The same in JSON text, before its string value.
    secret_key_in_json: Regex,
    /// Every kind, each once, for the counters.
    kinds: Vec<Arc<str>>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redactor({} rules)", self.rules.len())
    }
}

/// How many spans of each kind one record had redacted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Hits(Vec<(Arc<str>, u64)>);

/// A project name or repository URL without its userinfo, counted as
/// [`crate::privacy::URL_USERINFO`]. Runs whether redaction is on or not:
/// these fields are identifiers, not free text, and no rule sees them.
pub fn strip_url_userinfo(field: &mut String, hits: &mut Hits) {
    if let Some(clean) = crate::privacy::strip_url_userinfo(field) {
        *field = clean;
        hits.add_str(crate::privacy::URL_USERINFO);
    }
}

impl Hits {
    fn add_str(&mut self, kind: &str) {
        match self.0.iter_mut().find(|(k, _)| &**k == kind) {
            Some((_, n)) => *n += 1,
            None => self.0.push((Arc::from(kind), 1)),
        }
    }

    fn add(&mut self, kind: &Arc<str>) {
        match self.0.iter_mut().find(|(k, _)| k == kind) {
            Some((_, n)) => *n += 1,
            None => self.0.push((kind.clone(), 1)),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn total(&self) -> u64 {
        self.0.iter().map(|(_, n)| n).sum()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.0.iter().map(|(k, n)| (&**k, *n))
    }

    pub fn count(&self, kind: &str) -> u64 {
        self.iter().find(|(k, _)| *k == kind).map_or(0, |(_, n)| n)
    }
}

/// One batch's redaction: what it redacted, and the texts it found
/// clean. Agents repeat a session's context, tags and metadata in every
/// event; a repeat is compared with what was searched, not searched again.
#[derive(Default)]
pub struct Scan {
    pub hits: Hits,
    clean_text: Clean,
    clean_json: Clean,
}

/// Texts that hold no secret, by hash, each compared whole before it is
/// trusted: a collision only costs a search. Only texts of
/// [`Clean::MIN`]..=[`Clean::MAX`] bytes: a short one (a tag, a branch)
/// too, since a search's fixed cost is above a look-up's (BENCHMARKS.md,
/// "Redaction"); a longer one (a chat reply) is rarely repeated and is not
/// worth copying. The empty text is never searched.
#[derive(Default)]
struct Clean {
    texts: String,
    at: foldhash::HashMap<u64, (u32, u32)>,
    hasher: foldhash::fast::RandomState,
}

impl Clean {
    const MIN: usize = 1;
    const MAX: usize = 4096;

    /// The hash of a text worth remembering.
    fn key(&self, s: &str) -> Option<u64> {
        (Self::MIN..=Self::MAX)
            .contains(&s.len())
            .then(|| self.hasher.hash_one(s))
    }

    fn holds(&self, key: u64, s: &str) -> bool {
        self.at
            .get(&key)
            .is_some_and(|&(at, len)| self.texts.get(at as usize..(at + len) as usize) == Some(s))
    }

    fn add(&mut self, key: u64, s: &str) {
        let Ok(at) = u32::try_from(self.texts.len()) else {
            return;
        };
        if u32::try_from(self.texts.len() + s.len()).is_ok() {
            self.at.entry(key).or_insert((at, s.len() as u32));
            self.texts.push_str(s);
        }
    }

    /// `f` redacted by `redact`, unless it is a repeat of a clean text.
    fn apply(
        &mut self,
        f: &mut String,
        hits: &mut Hits,
        redact: impl FnOnce(&str, &mut Hits) -> Option<String>,
    ) {
        if f.is_empty() {
            return;
        }
        let key = self.key(f);
        if key.is_some_and(|k| self.holds(k, f)) {
            return;
        }
        match redact(f, hits) {
            Some(r) => *f = r,
            None => {
                if let Some(k) = key {
                    self.add(k, f);
                }
            }
        }
    }
}

fn valid_kind(kind: &str) -> bool {
    (1..=40).contains(&kind.len())
        && kind
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl Redactor {
    /// As configured: None when `--redaction off`.
    pub fn configured(cfg: &RedactionConfig) -> Result<Option<Self>, RedactError> {
        if cfg.redaction == Switch::Off {
            return Ok(None);
        }
        match &cfg.redaction_rules {
            None => Self::new(None).map(Some),
            Some(path) => {
                let file = RulesFile::load(path)?;
                Self::new(Some((&path.display().to_string(), &file))).map(Some)
            }
        }
    }

    /// How many rules it checks.
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// The built-in rules, then the file's (`path` names it in errors).
    pub fn new(file: Option<(&str, &RulesFile)>) -> Result<Self, RedactError> {
        let mut rules = Vec::new();
        let mut keywords: Vec<(String, usize)> = Vec::new();
        for b in rules::builtin() {
            let ci = b.pattern.starts_with("(?i)");
            for k in b.keywords {
                keywords.extend(variants(k, ci).into_iter().map(|k| (k, rules.len())));
            }
            rules.push(Rule {
                kind: b.kind.into(),
                regex: Regex::new(&b.pattern).expect("built-in redaction rules compile"),
                check: b.check,
                after: b.after,
                builtin: true,
            });
        }
        let mut always = Vec::new();
        let mut allow = Vec::new();
        if let Some((path, file)) = file {
            let bad = |what, name: &str, e| RedactError::Pattern {
                path: path.to_owned(),
                what,
                name: name.to_owned(),
                source: Box::new(e),
            };
            for r in &file.rule {
                if !valid_kind(&r.kind) {
                    return Err(RedactError::Kind {
                        path: path.to_owned(),
                        kind: r.kind.clone(),
                    });
                }
                let regex = Regex::new(&r.regex).map_err(|e| bad("rule", &r.kind, e))?;
                if r.keywords.iter().all(|k| k.is_empty()) {
                    always.push(rules.len());
                }
                let ci = r.regex.starts_with("(?i)");
                for k in r.keywords.iter().filter(|k| !k.is_empty()) {
                    keywords.extend(variants(k, ci).into_iter().map(|k| (k, rules.len())));
                }
                rules.push(Rule {
                    kind: r.kind.as_str().into(),
                    regex,
                    check: Check::None,
                    after: After::Any,
                    builtin: false,
                });
            }
            for a in &file.allow {
                Regex::new(&a.regex).map_err(|e| bad("allow", &a.regex, e))?;
                allow.push(a.regex.clone());
            }
        }
        // One pattern per distinct keyword, with all its rules.
        let mut patterns: Vec<String> = Vec::new();
        let mut keyword_rules: Vec<Vec<usize>> = Vec::new();
        for (k, rule) in keywords {
            match patterns.iter().position(|p| *p == k) {
                Some(at) => keyword_rules[at].push(rule),
                None => {
                    patterns.push(k);
                    keyword_rules.push(vec![rule]);
                }
            }
        }
        // Case-sensitive, with the case variants as patterns: the
        // automaton's prefilters do not apply to ASCII case-insensitive
        // search.
        let names: Vec<String> = rules::NAME_KEYWORDS
            .iter()
            .flat_map(|k| variants(k, true))
            .collect();
        let name_keyword = patterns.iter().map(|p| names.contains(p)).collect();
        let keywords = AhoCorasick::builder()
            .build(&patterns)
            .expect("keywords build an automaton");
        let allow = (!allow.is_empty())
            .then(|| RegexSet::new(&allow).expect("each allow pattern compiled on its own"));
        let mut kinds: Vec<Arc<str>> = Vec::new();
        for r in &rules {
            if !kinds.contains(&r.kind) {
                kinds.push(r.kind.clone());
            }
        }
        kinds.push(SECRET_FIELD.into());
        let name = rules::SECRET_NAME;
        Ok(Self {
            rules,
            keywords,
            keyword_rules,
            name_keyword,
            always,
            allow,
            secret_name: Regex::new(&format!("(?i)^{name}$")).expect("secret names compile"),
            secret_key_in_json: Regex::new(&format!(r#"(?i)"{name}"\s*:\s*""#))
                .expect("secret names compile"),
            kinds,
        })
    }

    /// Every kind a span can be counted under.
    pub fn kinds(&self) -> impl Iterator<Item = &str> {
        self.kinds.iter().map(|k| &**k)
    }

    /// `s` with its secrets replaced, or None when it holds none.
    pub fn text(&self, s: &str, hits: &mut Hits) -> Option<String> {
        let (candidates, _) = self.candidates(s);
        if candidates.is_empty() {
            return None;
        }
        let mut spans: Vec<(usize, usize, usize)> = Vec::new();
        for i in candidates {
            let rule = &self.rules[i];
            for caps in rule.regex.captures_iter(s) {
                let m = caps
                    .name("s")
                    .or_else(|| caps.name("s2"))
                    .or_else(|| caps.name("s3"))
                    .unwrap_or_else(|| caps.get(0).expect("group 0 is the match"));
                let secret = m.as_str();
                if secret.is_empty()
                    || secret.starts_with(MARKER)
                    || (rule.check == Check::Random && !rules::looks_random(secret))
                    || self.allow.as_ref().is_some_and(|a| a.is_match(secret))
                {
                    continue;
                }
                spans.push((m.start(), m.end(), i));
            }
        }
        if spans.is_empty() {
            return None;
        }
        // The earliest span wins; at one start, the longest, then the rule
        // listed first (the more specific kind).
        spans.sort_by_key(|&(start, end, i)| (start, std::cmp::Reverse(end), i));
        let mut out = String::with_capacity(s.len());
        let mut last = 0;
        for (start, end, i) in spans {
            if start < last {
                continue;
            }
            let kind = &self.rules[i].kind;
            out.push_str(&s[last..start]);
            push_marker(&mut out, kind);
            hits.add(kind);
            last = end;
        }
        out.push_str(&s[last..]);
        Some(out)
    }

    /// JSON text with its strings redacted (numbers, keys' order and
    /// spacing kept), or None when it holds no secret.
    pub fn json(&self, s: &str, hits: &mut Hits) -> Option<String> {
        // A text with no escape shows every string as it is: when it holds
        // no keyword (secret names included), none of its strings does.
        if self.always.is_empty() && !s.contains('\\') {
            // The text is walked only if a rule or a secret's name matches
            // it whole.
            let (candidates, json_name) = self.candidates(s);
            let walk = candidates
                .iter()
                .any(|&i| !self.rules[i].builtin || self.rules[i].regex.is_match(s))
                || (json_name && self.secret_key_in_json.is_match(s));
            if !walk {
                return None;
            }
        }
        json::redact(self, s, hits)
    }

    /// The rules worth running on `s`: the keyword-less ones, and those
    /// with a keyword in it that goes on as they need ([`After`]); and
    /// whether a secret's name in it may be a JSON key with a string value.
    ///
    /// Most texts hold no keyword, and the automaton's first-match search
    /// is a third faster than its overlapping one: that one starts only
    /// where the first keyword may start.
    fn candidates(&self, s: &str) -> (Vec<usize>, bool) {
        let mut candidates = self.always.clone();
        let mut json_name = false;
        let Some(first) = self.keywords.find(s) else {
            return (candidates, false);
        };
        // The first match reported is the first to end; one that ends
        // later may start before it, by at most the longest keyword.
        let from = first.end().saturating_sub(self.keywords.max_pattern_len());
        let rest = aho_corasick::Input::new(s).range(from..);
        for m in self.keywords.find_overlapping_iter(rest) {
            let k = m.pattern().as_usize();
            let after_name = &s[rules::name_end(s, m.end())..];
            for &i in &self.keyword_rules[k] {
                if self.rules[i].after.holds_after_name(after_name) {
                    candidates.push(i);
                }
            }
            json_name = json_name
                || (self.name_keyword[k] && After::JsonString.holds_after_name(after_name));
        }
        candidates.sort_unstable();
        candidates.dedup();
        (candidates, json_name)
    }

    /// Whether a JSON object key names a secret.
    fn is_secret_name(&self, key: &str) -> bool {
        self.secret_name.is_match(key)
    }

    /// The value under a secret's name, redacted whole unless it is
    /// empty, a reference (`$VAR`) or already a marker.
    fn secret_value(&self, value: &str, hits: &mut Hits) -> Option<String> {
        if value.is_empty()
            || value.starts_with('$')
            || value.starts_with(MARKER)
            || value.bytes().all(|b| b == b'*')
            || self.allow.as_ref().is_some_and(|a| a.is_match(value))
        {
            return None;
        }
        let kind = self
            .kinds
            .last()
            .expect("the secret-field kind is listed last");
        let mut out = String::new();
        push_marker(&mut out, kind);
        hits.add(kind);
        Some(out)
    }

    fn field(&self, f: &mut String, scan: &mut Scan) {
        scan.clean_text
            .apply(f, &mut scan.hits, |s, hits| self.text(s, hits));
    }

    fn json_field(&self, f: &mut String, scan: &mut Scan) {
        scan.clean_json
            .apply(f, &mut scan.hits, |s, hits| self.json(s, hits));
    }

    /// JSON that is one record's own (an event's data and metrics: a
    /// request id, a duration, a file): rarely a repeat, so not worth
    /// hashing and copying to find one.
    fn own_json_field(&self, f: &mut String, scan: &mut Scan) {
        if f.is_empty() {
            return;
        }
        if let Some(r) = self.json(f, &mut scan.hits) {
            *f = r;
        }
    }

    /// An event's free text: its JSON and tags. Its identifiers (ids,
    /// types, agent, project, model, developer) are not free text: they
    /// group rows and are checked for their form instead.
    pub fn event(&self, e: &mut pb::AgentEvent, scan: &mut Scan) {
        self.json_field(&mut e.context_json, scan);
        self.own_json_field(&mut e.data_json, scan);
        self.own_json_field(&mut e.metrics_json, scan);
        for t in &mut e.tags {
            self.field(t, scan);
        }
    }

    pub fn message(&self, m: &mut pb::ChatMessage, scan: &mut Scan) {
        self.field(&mut m.content, scan);
        if let Some(s) = m.search_content.as_mut() {
            self.field(s, scan);
        }
        self.json_field(&mut m.metadata_json, scan);
    }

    pub fn chat_session(&self, s: &mut pb::ChatSession, scan: &mut Scan) {
        let Some(w) = s.workspace.as_mut() else {
            return;
        };
        self.field(&mut w.workspace_path, scan);
        if let Some(p) = w.project.as_mut() {
            for f in [p.repo_url.as_mut(), p.description.as_mut()]
                .into_iter()
                .flatten()
            {
                self.field(f, scan);
            }
        }
        if let Some(m) = w.machine.as_mut() {
            self.json_field(&mut m.metadata_json, scan);
        }
    }

    pub fn agent_session(&self, s: &mut pb::AgentSession, scan: &mut Scan) {
        self.json_field(&mut s.context_json, scan);
        self.json_field(&mut s.metrics_json, scan);
        self.field(&mut s.outcome, scan);
    }
}

fn push_marker(out: &mut String, kind: &str) {
    out.push_str(MARKER);
    out.push_str(kind);
    out.push(']');
}

#[cfg(test)]
mod tests;
