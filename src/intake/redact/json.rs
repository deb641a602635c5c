//! JSON redacted string by string: the text is copied as it came except
//! for the strings that change, so numbers keep every digit (a parse into
//! `serde_json::Value` would round them through f64) and a text that is
//! not JSON is left for validation to refuse.

use std::borrow::Cow;

use super::{Hits, Redactor};

pub(super) fn redact(r: &Redactor, text: &str, hits: &mut Hits) -> Option<String> {
    let b = text.as_bytes();
    let mut out: Option<String> = None;
    let mut last = 0;
    let mut i = 0;
    // The last key named a secret and its value has not come yet.
    let mut under_secret_name = false;
    while i < b.len() {
        match b[i] {
            b'"' => {
                let end = string_end(b, i)?;
                let token = &text[i..=end];
                let value: Cow<'_, str> = if token.contains('\\') {
                    Cow::Owned(serde_json::from_str::<String>(token).ok()?)
                } else {
                    Cow::Borrowed(&token[1..token.len() - 1])
                };
                let is_key = next_non_space(b, end + 1) == Some(b':');
                let new = if is_key {
                    under_secret_name = r.is_secret_name(&value);
                    r.text(&value, hits)
                } else {
                    let named = std::mem::take(&mut under_secret_name);
                    r.text(&value, hits).or_else(|| {
                        if named {
                            r.secret_value(&value, hits)
                        } else {
                            None
                        }
                    })
                };
                if let Some(new) = new {
                    let o = out.get_or_insert_with(|| String::with_capacity(text.len()));
                    o.push_str(&text[last..i]);
                    o.push_str(&serde_json::to_string(&new).expect("a string serialises"));
                    last = end + 1;
                }
                i = end + 1;
            }
            b':' | b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            // A number, object, array or literal: not a secret's string.
            _ => {
                under_secret_name = false;
                i += 1;
            }
        }
    }
    out.map(|mut o| {
        o.push_str(&text[last..]);
        o
    })
}

/// The closing quote of the string opening at `start`.
pub(in crate::intake) fn string_end(b: &[u8], start: usize) -> Option<usize> {
    let mut j = start + 1;
    while j < b.len() {
        match b[j] {
            b'\\' => j += 2,
            b'"' => return Some(j),
            _ => j += 1,
        }
    }
    None
}

pub(in crate::intake) fn next_non_space(b: &[u8], from: usize) -> Option<u8> {
    b[from.min(b.len())..]
        .iter()
        .copied()
        .find(|c| !c.is_ascii_whitespace())
}
