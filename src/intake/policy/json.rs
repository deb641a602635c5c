//! A policy applied to JSON text: the value under each key the policy
//! names (at any depth) replaced as its mode says, the rest of the text
//! copied byte for byte (numbers keep every digit). A string value is
//! truncated or hashed as text; an object or array under such a key is
//! treated as its JSON text (truncated, it becomes a string); `null`,
//! numbers and booleans hold no content and stay. "none" stores `null`.

use super::{Changes, Mode};
use crate::intake::redact::json::{next_non_space, string_end};

/// The new text, or None when nothing changed (or the text is not JSON:
/// validation refuses it).
pub(super) fn apply(
    text: &str,
    mode_of: impl Fn(&str) -> Option<Mode>,
    changes: &mut Changes,
) -> Option<String> {
    let b = text.as_bytes();
    let mut out: Option<String> = None;
    let mut last = 0;
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'"' {
            i += 1;
            continue;
        }
        let end = string_end(b, i)?;
        if next_non_space(b, end + 1) != Some(b':') {
            i = end + 1;
            continue;
        }
        let key = &text[i..=end];
        let key: String = if key.contains('\\') {
            serde_json::from_str(key).ok()?
        } else {
            key[1..key.len() - 1].to_owned()
        };
        let Some(mode) = mode_of(&key) else {
            i = end + 1;
            continue;
        };
        let colon = end + 1 + b[end + 1..].iter().position(|&c| c == b':')?;
        let start = colon
            + 1
            + b[colon + 1..]
                .iter()
                .position(|c| !c.is_ascii_whitespace())?;
        let stop = value_end(b, start)?;
        if let Some(new) = replace(&text[start..stop], mode) {
            let o = out.get_or_insert_with(|| String::with_capacity(text.len()));
            o.push_str(&text[last..start]);
            o.push_str(&new);
            last = stop;
            changes.add(mode);
        }
        // What is inside a value the policy governs is not walked: its
        // keys are content, not structure.
        i = stop;
    }
    out.map(|mut o| {
        o.push_str(&text[last..]);
        o
    })
}

/// The JSON text of `value` (one JSON value) under `mode`, if it changes.
fn replace(value: &str, mode: Mode) -> Option<String> {
    let first = value.as_bytes()[0];
    let text: std::borrow::Cow<'_, str> = match first {
        b'"' => std::borrow::Cow::Owned(serde_json::from_str::<String>(value).ok()?),
        b'{' | b'[' => std::borrow::Cow::Borrowed(value),
        // null, a number, true or false.
        _ => return None,
    };
    if mode == Mode::None {
        return Some("null".into());
    }
    let new = mode.apply(&text)?;
    Some(serde_json::to_string(&new).expect("a string serialises"))
}

/// Where the JSON value starting at `start` ends (exclusive).
fn value_end(b: &[u8], start: usize) -> Option<usize> {
    match b[start] {
        b'"' => Some(string_end(b, start)? + 1),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = start;
            while j < b.len() {
                match b[j] {
                    b'"' => j = string_end(b, j)?,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            None
        }
        _ => Some(
            start
                + b[start..]
                    .iter()
                    .position(|c| matches!(c, b',' | b'}' | b']') || c.is_ascii_whitespace())
                    .unwrap_or(b.len() - start),
        ),
    }
}
