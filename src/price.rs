//! Estimated cost for agents that report tokens but no cost (Gemini CLI,
//! Codex, Copilot over OTLP; transcripts the importer reads): a price
//! table from configuration, model → USD per
//! million input, output, cached-input (cache read) and cache-write input
//! tokens, with higher rates for long prompts where the provider has them.
//! The table is the operator's: prices change, and no built-in list would
//! stay right. Two formats: this service's own, and LiteLLM's public
//! `model_prices_and_context_window.json`, which ccusage prices from too.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    sync::Mutex,
};

use serde::Deserialize;
use serde_json::Value as Json;

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

/// A model's prices: its base rates, and the rates of prompts longer than
/// each threshold (LiteLLM's `…_above_200k_tokens`).
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    base: Price,
    /// (input tokens above which, rates), in ascending order.
    tiers: Vec<(i64, Price)>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct PriceTable {
    /// Model name (lower case) → prices.
    models: BTreeMap<String, Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    models: BTreeMap<String, Price>,
}

impl Price {
    fn valid(&self) -> bool {
        [
            Some(self.input),
            Some(self.output),
            self.cached_input,
            self.cache_write_input,
        ]
        .iter()
        .flatten()
        .all(|v| v.is_finite() && *v >= 0.0)
    }
}

/// The providers whose models LiteLLM also lists under a bare name; a key
/// of theirs with a prefix (`gemini/gemini-2.5-pro`) also prices the bare
/// name when the list has no entry of that name.
const FIRST_PARTY: &[&str] = &[
    "anthropic",
    "openai",
    "gemini",
    "xai",
    "deepseek",
    "mistral",
];

/// LiteLLM's per-token price fields, and the service's per-million ones
/// they fill.
const LITELLM_FIELDS: [&str; 4] = [
    "input_cost_per_token",
    "output_cost_per_token",
    "cache_read_input_token_cost",
    "cache_creation_input_token_cost",
];

impl PriceTable {
    /// Reads a JSON file: this service's `{"models": {"gpt-4o": {"input":
    /// 2.5, "output": 10, "cached_input": 1.25}, ...}}` (USD per million
    /// tokens), or LiteLLM's `model_prices_and_context_window.json` (USD per
    /// token, a key per model).
    pub fn load(path: &Path) -> Result<Self, PriceError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| PriceError::Read {
            path: p.clone(),
            source,
        })?;
        let parse = |source| PriceError::Parse {
            path: p.clone(),
            source,
        };
        let json: Json = serde_json::from_str(&text).map_err(parse)?;
        let models = match json.as_object() {
            Some(o) if o.len() == 1 && o.contains_key("models") => {
                let file: File = serde_json::from_value(json).map_err(parse)?;
                file.models
                    .into_iter()
                    .map(|(k, base)| {
                        (
                            k,
                            Entry {
                                base,
                                tiers: Vec::new(),
                            },
                        )
                    })
                    .collect()
            }
            Some(o) => litellm(o).map_err(|(model, reason)| PriceError::Invalid {
                path: p.clone(),
                model,
                reason,
            })?,
            None => {
                return Err(PriceError::Invalid {
                    path: p,
                    model: String::new(),
                    reason: "the table is not a JSON object".into(),
                });
            }
        };
        for (model, e) in &models {
            if !std::iter::once(&e.base)
                .chain(e.tiers.iter().map(|(_, t)| t))
                .all(Price::valid)
            {
                return Err(PriceError::Invalid {
                    path: p,
                    model: model.clone(),
                    reason: "prices must be finite and not negative".into(),
                });
            }
        }
        Ok(Self::from_entries(models))
    }

    pub fn from_models(models: BTreeMap<String, Price>) -> Self {
        Self::from_entries(
            models
                .into_iter()
                .map(|(k, base)| {
                    (
                        k,
                        Entry {
                            base,
                            tiers: Vec::new(),
                        },
                    )
                })
                .collect(),
        )
    }

    fn from_entries(models: BTreeMap<String, Entry>) -> Self {
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
        self.entry(model).map(|e| e.base)
    }

    fn entry(&self, model: &str) -> Option<&Entry> {
        let model = model.to_ascii_lowercase();
        let bare = model.rsplit('/').next().unwrap_or(&model);
        [model.as_str(), bare].into_iter().find_map(|m| {
            self.models.get(m).or_else(|| {
                self.models
                    .iter()
                    .filter(|(k, _)| m.starts_with(k.as_str()))
                    .max_by_key(|(k, _)| k.len())
                    .map(|(_, e)| e)
            })
        })
    }

    /// The rates of a request of `input` tokens (cached and cache-written
    /// ones included): a prompt longer than a tier's threshold is priced
    /// whole at that tier's rates, every token type, as Anthropic and
    /// Google bill long prompts and LiteLLM computes them (ccusage prices
    /// only each type's tokens past the threshold at the higher rate:
    /// docs/otlp.md, "Cost").
    pub fn rates(&self, model: &str, input: i64) -> Option<Price> {
        let e = self.entry(model)?;
        Some(
            e.tiers
                .iter()
                .rev()
                .find(|(above, _)| input > *above)
                .map_or(e.base, |(_, p)| *p),
        )
    }

    /// Says once per model (a process's first few hundred) that requests of
    /// a model the table does not have get no cost, rather than a cost of 0
    /// nobody notices.
    pub fn report_missing(&self, model: &str) {
        static REPORTED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
        let mut reported = REPORTED.lock().expect("reported models");
        if reported.len() < 500 && reported.insert(model.to_owned()) {
            tracing::warn!(
                model,
                models = self.len(),
                "the price table has no price for this model: its requests are stored without a cost (data.cost_source = \"unpriced\"); add it to the table and reload (SIGHUP)"
            );
        }
    }

    /// [`Self::estimate`], saying once ([`Self::report_missing`]) when a
    /// table that has prices lacks the model: no price is never a cost of 0
    /// nobody notices.
    pub fn priced(&self, model: &str, tokens: Tokens) -> Option<f64> {
        let cost = self.estimate(model, tokens);
        if cost.is_none() && !self.is_empty() {
            self.report_missing(model);
        }
        cost
    }

    /// Estimated cost in USD. `input` includes `cached` and `written` (the
    /// one definition used throughout, docs/otlp.md): the tokens read from
    /// the cache and those written to it are parts of the input.
    pub fn estimate(&self, model: &str, tokens: Tokens) -> Option<f64> {
        let p = self.rates(model, tokens.input.max(0))?;
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

/// LiteLLM's list as entries: the per-token prices of the models whose
/// mode is chat (or unsaid), in USD per million; `sample_spec` and entries
/// without an input and an output price are left out. A tier's price a
/// field does not give is the base one.
fn litellm(o: &serde_json::Map<String, Json>) -> Result<BTreeMap<String, Entry>, (String, String)> {
    let mut out = BTreeMap::new();
    let mut aliases = Vec::new();
    for (key, v) in o {
        let Some(e) = v.as_object().filter(|_| key != "sample_spec") else {
            continue;
        };
        let mode = e.get("mode").and_then(Json::as_str);
        if mode.is_some_and(|m| !matches!(m, "chat" | "completion" | "responses")) {
            continue;
        }
        let field = |name: &str| -> Result<Option<f64>, (String, String)> {
            match e.get(name) {
                None | Some(Json::Null) => Ok(None),
                Some(v) => v
                    .as_f64()
                    .map(|usd| Some(usd * 1e6))
                    .ok_or_else(|| (key.clone(), format!("{name} is not a number"))),
            }
        };
        let (Some(input), Some(output)) = (field(LITELLM_FIELDS[0])?, field(LITELLM_FIELDS[1])?)
        else {
            continue;
        };
        let base = Price {
            input,
            output,
            cached_input: field(LITELLM_FIELDS[2])?,
            cache_write_input: field(LITELLM_FIELDS[3])?,
        };
        let mut thresholds = BTreeSet::new();
        for name in e.keys() {
            if let Some(rest) = LITELLM_FIELDS
                .iter()
                .find_map(|f| name.strip_prefix(f)?.strip_prefix("_above_"))
                && let Some(k) = rest.strip_suffix("k_tokens")
                && let Ok(k) = k.parse::<i64>()
            {
                thresholds.insert(k * 1000);
            }
        }
        let mut tiers = Vec::new();
        for above in thresholds {
            let at = |i: usize, base: Option<f64>| -> Result<Option<f64>, (String, String)> {
                Ok(field(&format!(
                    "{}_above_{}k_tokens",
                    LITELLM_FIELDS[i],
                    above / 1000
                ))?
                .or(base))
            };
            tiers.push((
                above,
                Price {
                    input: at(0, Some(base.input))?.unwrap_or(base.input),
                    output: at(1, Some(base.output))?.unwrap_or(base.output),
                    cached_input: at(2, base.cached_input)?,
                    cache_write_input: at(3, base.cache_write_input)?,
                },
            ));
        }
        let entry = Entry { base, tiers };
        let provider = e.get("litellm_provider").and_then(Json::as_str);
        if let Some((_, bare)) = key.rsplit_once('/')
            && provider.is_some_and(|p| FIRST_PARTY.contains(&p))
        {
            aliases.push((bare.to_owned(), entry.clone()));
        }
        out.insert(key.clone(), entry);
    }
    for (bare, entry) in aliases {
        out.entry(bare).or_insert(entry);
    }
    Ok(out)
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

    /// Excerpts of LiteLLM's `model_prices_and_context_window.json` (the
    /// entries as in litellm 1.110.2's copy of it, cost fields only).
    fn litellm_file() -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            f.path(),
            r#"{
              "sample_spec": {"input_cost_per_token": 0.0, "output_cost_per_token": 0.0, "litellm_provider": "one of https://docs.litellm.ai/docs/providers", "mode": "one of: chat, embedding, ..."},
              "vertex_ai/claude-sonnet-4-5": {
                "cache_creation_input_token_cost": 3.75e-06,
                "cache_creation_input_token_cost_above_1hr": 6e-06,
                "cache_read_input_token_cost": 3e-07,
                "input_cost_per_token": 3e-06,
                "input_cost_per_token_above_200k_tokens": 6e-06,
                "output_cost_per_token_above_200k_tokens": 2.25e-05,
                "cache_creation_input_token_cost_above_200k_tokens": 7.5e-06,
                "cache_read_input_token_cost_above_200k_tokens": 6e-07,
                "litellm_provider": "vertex_ai-anthropic_models",
                "max_input_tokens": 200000, "max_output_tokens": 64000,
                "mode": "chat", "output_cost_per_token": 1.5e-05},
              "gemini/gemini-2.5-pro": {
                "cache_read_input_token_cost": 1.25e-07,
                "cache_read_input_token_cost_above_200k_tokens": 2.5e-07,
                "input_cost_per_token": 1.25e-06,
                "input_cost_per_token_above_200k_tokens": 2.5e-06,
                "litellm_provider": "gemini", "mode": "chat",
                "output_cost_per_token": 1e-05,
                "output_cost_per_token_above_200k_tokens": 1.5e-05},
              "gpt-5": {"input_cost_per_token": 1.25e-06, "output_cost_per_token": 1e-05,
                        "cache_read_input_token_cost": 1.25e-07, "litellm_provider": "openai", "mode": "chat"},
              "text-embedding-3-small": {"input_cost_per_token": 2e-08, "output_cost_per_token": 0.0, "mode": "embedding"}
            }"#,
        )
        .unwrap();
        f
    }

    #[test]
    fn litellms_list_prices_per_million_with_its_long_prompt_tier() {
        let f = litellm_file();
        let t = PriceTable::load(f.path()).unwrap();
        assert!(t.price("sample_spec").is_none());
        assert!(
            t.price("text-embedding-3-small").is_none(),
            "chat models only"
        );
        // USD per token, as USD per million.
        let p = t.price("vertex_ai/claude-sonnet-4-5").unwrap();
        let near = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(near(p.input, 3.0) && near(p.output, 15.0), "{p:?}");
        assert!(near(p.cached_input.unwrap(), 0.3) && near(p.cache_write_input.unwrap(), 3.75));
        // A first-party key with a prefix prices the bare name too.
        assert!(t.price("gemini-2.5-pro").is_some());
        let tokens = |input, output, cached| Tokens {
            input,
            output,
            cached,
            written: 0,
        };
        // At 200,000 input tokens: the base rates.
        let usd = t
            .estimate("gemini-2.5-pro", tokens(200_000, 1_000, 100_000))
            .unwrap();
        let want = (100_000.0 * 1.25 + 100_000.0 * 0.125 + 1_000.0 * 10.0) / 1e6;
        assert!((usd - want).abs() < 1e-9, "{usd} vs {want}");
        // One more: every token of the request at the long-prompt rates,
        // as Google bills it.
        let usd = t
            .estimate("gemini-2.5-pro", tokens(200_001, 1_000, 100_000))
            .unwrap();
        let want = (100_001.0 * 2.5 + 100_000.0 * 0.25 + 1_000.0 * 15.0) / 1e6;
        assert!((usd - want).abs() < 1e-9, "{usd} vs {want}");
        let usd = t.estimate("gpt-5", tokens(1_000_000, 0, 0)).unwrap();
        assert!((usd - 1.25).abs() < 1e-9, "{usd}");
    }

    #[test]
    fn a_litellm_price_that_is_no_number_names_its_model() {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            f.path(),
            r#"{"gpt-5": {"input_cost_per_token": "cheap", "output_cost_per_token": 1e-05}}"#,
        )
        .unwrap();
        let err = PriceTable::load(f.path()).unwrap_err().to_string();
        assert!(
            err.contains("\"gpt-5\"") && err.contains("input_cost_per_token is not a number"),
            "{err}"
        );
    }
}
