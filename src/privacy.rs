//! Pseudonymous developers (`--pseudonymize-users`): a keyed hash in place
//! of each developer's key (an account id or an email address), and neither
//! name nor email stored. The same key always gives the same pseudonym, so
//! per-developer figures still add up; without the secret nobody can tell
//! whose it is, and whoever knows a person's key and the secret can find
//! their rows (`users forget`). Below every stage: intake, OTLP and the
//! `users` command use it. docs/reliability.md, "Privacy".

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::pb;

/// What a pseudonym starts with: tells one from a key a client sent.
pub const PREFIX: &str = "pseudonym:";

/// Secrets shorter than this are refused: HMAC-SHA256 wants at least its
/// output's 32 bytes of key to be as strong as its output.
pub const MIN_SECRET_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum PrivacyError {
    #[error(
        "--pseudonymize-users needs a secret: set AGENT_TELEMETRY_PSEUDONYM_SECRET (at least {MIN_SECRET_BYTES} bytes; keep it: a new one gives everyone new pseudonyms)"
    )]
    NoSecret,
    #[error(
        "AGENT_TELEMETRY_PSEUDONYM_SECRET has {0} bytes, fewer than {MIN_SECRET_BYTES}: use a longer random secret"
    )]
    ShortSecret(usize),
}

/// Turns developers' keys into pseudonyms.
#[derive(Clone)]
pub struct Pseudonyms {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for Pseudonyms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.write_str("Pseudonyms")
    }
}

impl Pseudonyms {
    pub fn new(secret: &str) -> Result<Self, PrivacyError> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(PrivacyError::ShortSecret(secret.len()));
        }
        let mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
        Ok(Self { mac })
    }

    /// From the configuration: None when off.
    pub fn configured(on: bool, secret: Option<&str>) -> Result<Option<Self>, PrivacyError> {
        match (on, secret) {
            (false, _) => Ok(None),
            (true, None) => Err(PrivacyError::NoSecret),
            (true, Some(s)) => Self::new(s).map(Some),
        }
    }

    /// The pseudonym of a developer's key: the prefix and 32 hex digits
    /// (128 bits of the HMAC). A key that is already a pseudonym (a spooled
    /// batch replayed, say) stays as it is; anything else after the prefix
    /// ("pseudonym:ada@example.com") is hashed like any key.
    pub fn of(&self, key: &str) -> String {
        if is_pseudonym(key) {
            return key.to_owned();
        }
        let mut mac = self.mac.clone();
        mac.update(key.as_bytes());
        let digest = mac.finalize().into_bytes();
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        format!("{PREFIX}{hex}")
    }

    /// A developer as stored: the pseudonym, no name, no email.
    pub fn user(&self, u: &mut pb::User) {
        u.key = self.of(&u.key);
        u.display_name.clear();
        u.email.clear();
    }
}

/// Whether `key` has exactly a pseudonym's form.
fn is_pseudonym(key: &str) -> bool {
    key.strip_prefix(PREFIX).is_some_and(|hex| {
        hex.len() == 32 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// Attributes agents send that name a person; with pseudonyms on, OTLP rows
/// keep none of them in `data` or `context` (the developer is the row's
/// `user_id`).
pub const IDENTITY_ATTRIBUTES: &[&str] = &[
    "user.account_uuid",
    "user.account_id",
    "user.id",
    "enduser.id",
    "user.email",
    "user.name",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_key_gives_the_same_pseudonym_and_a_secret_is_required() {
        let p = Pseudonyms::new(&"s".repeat(32)).unwrap();
        let a = p.of("ada@example.com");
        assert_eq!(a, p.of("ada@example.com"));
        assert_ne!(a, p.of("bob@example.com"));
        assert!(a.starts_with(PREFIX) && a.len() == PREFIX.len() + 32, "{a}");
        assert!(!a.contains("ada"));
        // Applied twice (a replayed spool entry), it does not change.
        assert_eq!(p.of(&a), a);
        // Only a pseudonym's exact form passes; a key dressed as one is hashed.
        let dressed = format!("{PREFIX}ada@example.com");
        assert!(p.of(&dressed) != dressed && !p.of(&dressed).contains("ada"));
        // Another secret, other pseudonyms.
        let q = Pseudonyms::new(&"t".repeat(32)).unwrap();
        assert_ne!(q.of("ada@example.com"), a);
        let mut u = pb::User {
            key: "ada@example.com".into(),
            display_name: "Ada".into(),
            email: "ada@example.com".into(),
        };
        p.user(&mut u);
        assert_eq!(
            (u.key.as_str(), u.display_name.as_str(), u.email.as_str()),
            (a.as_str(), "", "")
        );
        assert!(matches!(
            Pseudonyms::configured(true, None),
            Err(PrivacyError::NoSecret)
        ));
        assert!(matches!(
            Pseudonyms::configured(true, Some("short")),
            Err(PrivacyError::ShortSecret(5))
        ));
        assert!(Pseudonyms::configured(false, None).unwrap().is_none());
    }
}

/// The redaction kind (`agent_telemetry_redactions_total{kind}`) of
/// credentials taken out of a URL's userinfo.
pub const URL_USERINFO: &str = "url-userinfo";

/// `url` without its userinfo (`https://TOKEN@host/…`,
/// `https://user:password@host/…` → `https://host/…`), or None when it
/// has none. CI checkouts name their remote with a token in it, and a
/// project named so would keep the token in `projects.repo_url`, readable
/// by every dashboard. Only `scheme://` URLs: an scp-style `git@host:path`
/// names an SSH login, not a secret.
pub fn strip_url_userinfo(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let valid_scheme = !scheme.is_empty()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'.' | b'-'));
    if !valid_scheme {
        return None;
    }
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let at = rest[..authority_end].rfind('@')?;
    Some(format!("{scheme}://{}", &rest[at + 1..]))
}

#[cfg(test)]
mod url_tests {
    use super::strip_url_userinfo as strip;

    #[test]
    fn userinfo_is_taken_out_of_scheme_urls_only() {
        assert_eq!(
            strip("https://ghp_abc123@github.com/acme/api.git").as_deref(),
            Some("https://github.com/acme/api.git")
        );
        assert_eq!(
            strip("https://x-access-token:s3cr3t@github.com/acme/api").as_deref(),
            Some("https://github.com/acme/api")
        );
        // A password holding '@' (unescaped): the last '@' ends the userinfo.
        assert_eq!(
            strip("https://u:p@ss@gitlab.example.com:8443/g/r").as_deref(),
            Some("https://gitlab.example.com:8443/g/r")
        );
        assert_eq!(strip("https://github.com/acme/api"), None);
        // An '@' in the path is not userinfo.
        assert_eq!(strip("https://github.com/acme/api@v2"), None);
        assert_eq!(strip("git@github.com:acme/api.git"), None);
        assert_eq!(strip("acme/api"), None);
        assert_eq!(strip("not a url://x@y"), None);
    }
}
