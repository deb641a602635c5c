//! Estimated cost for agents that report tokens but no cost (Gemini CLI,
//! Codex, Copilot): a price table from configuration, model → USD per
//! million input, output, cached-input (cache read) and cache-write input
//! tokens. The table is the operator's: prices change, and no built-in list
//! would stay right.

use std::{collections::BTreeMap, path::Path};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum PriceError {
    #[error("cannot read the price table {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("price table {path}: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error("price table {path}: model {model:?}: {reason}")]
    Invalid {
        path: String,
        model: String,
        reason: String,
    },
}

/// USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    /// Cached input tokens (read from the cache); the input price when
    /// absent.
    #[serde(default)]
    pub cached_input: Option<f64>,
    /// Input tokens written to the cache (Anthropic charges 1.25× the
    /// input price for a 5-minute cache); the input price when absent.
    #[serde(default)]
    pub cache_write_input: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct PriceTable {
    /// Model name (lower case) → price.
    models: BTreeMap<String, Price>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    models: BTreeMap<String, Price>,
}

impl PriceTable {
    /// Reads a JSON file `{"models": {"gpt-4o": {"input": 2.5, "output": 10,
    /// "cached_input": 1.25}, ...}}`.
    pub fn load(path: &Path) -> Result<Self, PriceError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| PriceError::Read {
            path: p.clone(),
            source,
        })?;
        let file: File = serde_json::from_str(&text).map_err(|source| PriceError::Parse {
            path: p.clone(),
            source,
        })?;
        for (model, price) in &file.models {
            let all = [
                Some(price.input),
                Some(price.output),
                price.cached_input,
                price.cache_write_input,
            ];
            if all.iter().flatten().any(|v| !v.is_finite() || *v < 0.0) {
                return Err(PriceError::Invalid {
                    path: p,
                    model: model.clone(),
                    reason: "prices must be finite and not negative".into(),
                });
            }
        }
        Ok(Self::from_models(file.models))
    }

    pub fn from_models(models: BTreeMap<String, Price>) -> Self {
        Self {
            models: models
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.models.len()
    }

    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    /// The price of `model`: an exact entry, else the longest entry the model
    /// name starts with ("gpt-4o" prices "gpt-4o-2024-08-06"), ignoring a
    /// provider prefix such as "models/" or "anthropic/".
    pub fn price(&self, model: &str) -> Option<Price> {
        let model = model.to_ascii_lowercase();
        let bare = model.rsplit('/').next().unwrap_or(&model);
        [model.as_str(), bare].into_iter().find_map(|m| {
            self.models.get(m).copied().or_else(|| {
                self.models
                    .iter()
                    .filter(|(k, _)| m.starts_with(k.as_str()))
                    .max_by_key(|(k, _)| k.len())
                    .map(|(_, p)| *p)
            })
        })
    }

    /// Estimated cost in USD. `input` includes `cached` and `written` (the
    /// one definition used throughout, docs/otlp.md): the tokens read from
    /// the cache and those written to it are parts of the input.
    pub fn estimate(&self, model: &str, tokens: Tokens) -> Option<f64> {
        let p = self.price(model)?;
        let input = tokens.input.max(0);
        let cached = tokens.cached.clamp(0, input);
        let written = tokens.written.clamp(0, input - cached);
        let fresh = input - cached - written;
        let usd = fresh as f64 * p.input
            + cached as f64 * p.cached_input.unwrap_or(p.input)
            + written as f64 * p.cache_write_input.unwrap_or(p.input)
            + tokens.output.max(0) as f64 * p.output;
        Some(usd / 1e6)
    }
}

/// A request's tokens, as [`PriceTable::estimate`] prices them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tokens {
    /// Every input token, cached and cache-written ones included.
    pub input: i64,
    pub output: i64,
    /// Input tokens read from the cache.
    pub cached: i64,
    /// Input tokens written to the cache.
    pub written: i64,
}

/// Claude Sonnet 4.5's prices, cache reads and writes apart: a fixture of
/// the tests here and in `map`.
#[cfg(test)]
pub(crate) fn sonnet_4_5() -> (String, Price) {
    (
        "claude-sonnet-4-5".to_owned(),
        Price {
            input: 3.0,
            output: 15.0,
            cached_input: Some(0.3),
            cache_write_input: Some(3.75),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> PriceTable {
        PriceTable::from_models(BTreeMap::from([
            (
                "gpt-4o".to_owned(),
                Price {
                    input: 2.5,
                    output: 10.0,
                    cached_input: Some(1.25),
                    cache_write_input: None,
                },
            ),
            (
                "gpt-4o-mini".to_owned(),
                Price {
                    input: 0.15,
                    output: 0.6,
                    cached_input: None,
                    cache_write_input: None,
                },
            ),
            sonnet_4_5(),
        ]))
    }

    #[test]
    fn longest_prefix_wins_and_provider_prefix_is_ignored() {
        let t = table();
        assert_eq!(t.price("gpt-4o-2024-08-06").unwrap().input, 2.5);
        assert_eq!(t.price("GPT-4o-mini-2024").unwrap().input, 0.15);
        assert_eq!(t.price("openai/gpt-4o").unwrap().input, 2.5);
        assert!(t.price("gemini-2.5-pro").is_none());
    }

    #[test]
    fn cached_tokens_are_part_of_input_and_priced_apart() {
        // 1M input of which 400k cached, 100k output.
        let t = |input, output, cached, written| Tokens {
            input,
            output,
            cached,
            written,
        };
        let usd = table()
            .estimate("gpt-4o", t(1_000_000, 100_000, 400_000, 0))
            .unwrap();
        let want = 0.6 * 2.5 + 0.4 * 1.25 + 0.1 * 10.0;
        assert!((usd - want).abs() < 1e-9, "{usd} vs {want}");
        // No cached price: cached input at the input price.
        let usd = table()
            .estimate("gpt-4o-mini", t(1_000_000, 0, 500_000, 0))
            .unwrap();
        assert!((usd - 0.15).abs() < 1e-9);
        // Cache writes at their own price: 1M input = 200k fresh + 500k
        // read + 300k written.
        let usd = table()
            .estimate("claude-sonnet-4-5", t(1_000_000, 0, 500_000, 300_000))
            .unwrap();
        let want = 0.2 * 3.0 + 0.5 * 0.3 + 0.3 * 3.75;
        assert!((usd - want).abs() < 1e-9, "{usd} vs {want}");
        // Without a cache-write price, written tokens cost the input price;
        // counts beyond the input are clamped to it, never negative.
        let usd = table()
            .estimate("gpt-4o-mini", t(1_000_000, 0, 0, 300_000))
            .unwrap();
        assert!((usd - 0.15).abs() < 1e-9);
        let usd = table()
            .estimate("claude-sonnet-4-5", t(100, 0, 80, 500))
            .unwrap();
        let want = (80.0 * 0.3 + 20.0 * 3.75) / 1e6;
        assert!((usd - want).abs() < 1e-12, "{usd} vs {want}");
    }
}
