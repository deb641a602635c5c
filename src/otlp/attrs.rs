//! Reading OTLP attributes the way the agents send them: a number may arrive
//! as an int, a double or a string (Codex and Claude Code send strings), a
//! flag as a bool or the string "true". Everything else in [`super`] reads
//! attributes only through these helpers.

use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use serde_json::{Map, Value as Json};

/// The value of `key`, if present and set.
pub fn get<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

/// The first of `keys` that is present, as text (numbers and flags in their
/// usual text form). Empty strings count as absent.
pub fn text(attrs: &[KeyValue], keys: &[&str]) -> Option<String> {
    keys.iter()
        .filter_map(|k| get(attrs, k))
        .find_map(value_text)
}

pub fn value_text(v: &Value) -> Option<String> {
    let s = match v {
        Value::StringValue(s) => s.trim().to_owned(),
        Value::IntValue(i) => i.to_string(),
        Value::DoubleValue(d) => d.to_string(),
        Value::BoolValue(b) => b.to_string(),
        _ => return None,
    };
    (!s.is_empty()).then_some(s)
}

/// The first of `keys` that holds a number, as f64.
pub fn float(attrs: &[KeyValue], keys: &[&str]) -> Option<f64> {
    keys.iter()
        .filter_map(|k| get(attrs, k))
        .find_map(|v| match v {
            Value::IntValue(i) => Some(*i as f64),
            Value::DoubleValue(d) => d.is_finite().then_some(*d),
            Value::StringValue(s) => s.trim().parse::<f64>().ok().filter(|d| d.is_finite()),
            _ => None,
        })
}

/// The first of `keys` that holds a whole number (a double or a string such
/// as "12" or "12.0" is accepted; a fraction is rounded).
pub fn int(attrs: &[KeyValue], keys: &[&str]) -> Option<i64> {
    keys.iter()
        .filter_map(|k| get(attrs, k))
        .find_map(|v| match v {
            Value::IntValue(i) => Some(*i),
            Value::StringValue(s) if s.trim().parse::<i64>().is_ok() => s.trim().parse().ok(),
            _ => float_of(v).map(|d| d.round() as i64),
        })
}

fn float_of(v: &Value) -> Option<f64> {
    match v {
        Value::DoubleValue(d) => d.is_finite().then_some(*d),
        Value::StringValue(s) => s.trim().parse::<f64>().ok().filter(|d| d.is_finite()),
        _ => None,
    }
}

/// The first of `keys` that holds a flag: a bool, "true"/"false" (any case),
/// or a number (non-zero is true).
pub fn boolean(attrs: &[KeyValue], keys: &[&str]) -> Option<bool> {
    keys.iter()
        .filter_map(|k| get(attrs, k))
        .find_map(|v| match v {
            Value::BoolValue(b) => Some(*b),
            Value::IntValue(i) => Some(*i != 0),
            Value::StringValue(s) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" => Some(true),
                "false" | "0" | "no" => Some(false),
                _ => None,
            },
            _ => None,
        })
}

/// An attribute value as JSON: arrays and maps nest, bytes become hex.
pub fn to_json(v: &AnyValue) -> Json {
    match &v.value {
        None => Json::Null,
        Some(Value::StringValue(s)) => Json::String(s.clone()),
        Some(Value::BoolValue(b)) => Json::Bool(*b),
        Some(Value::IntValue(i)) => Json::from(*i),
        Some(Value::DoubleValue(d)) => serde_json::Number::from_f64(*d)
            .map(Json::Number)
            .unwrap_or_else(|| Json::String(d.to_string())),
        Some(Value::ArrayValue(a)) => Json::Array(a.values.iter().map(to_json).collect()),
        Some(Value::KvlistValue(l)) => Json::Object(to_map(&l.values)),
        Some(Value::BytesValue(b)) => Json::String(hex(b)),
        // An index into a string table that only profiles carry.
        Some(Value::StringValueStrindex(_)) => Json::Null,
    }
}

/// Attributes as a JSON object (a repeated key keeps its last value).
pub fn to_map(attrs: &[KeyValue]) -> Map<String, Json> {
    attrs
        .iter()
        .map(|kv| {
            let v = kv.value.as_ref().map(to_json).unwrap_or(Json::Null);
            (kv.key.clone(), v)
        })
        .collect()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, v: Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(v) }),
            ..Default::default()
        }
    }

    #[test]
    fn numbers_arrive_as_int_double_or_string() {
        let attrs = [
            kv("a", Value::IntValue(7)),
            kv("b", Value::DoubleValue(7.4)),
            kv("c", Value::StringValue(" 12 ".into())),
            kv("d", Value::StringValue("0.25".into())),
            kv("e", Value::StringValue("n/a".into())),
        ];
        assert_eq!(int(&attrs, &["a"]), Some(7));
        assert_eq!(int(&attrs, &["b"]), Some(7));
        assert_eq!(int(&attrs, &["c"]), Some(12));
        assert_eq!(float(&attrs, &["d"]), Some(0.25));
        assert_eq!(int(&attrs, &["e"]), None);
        assert_eq!(
            int(&attrs, &["missing", "c"]),
            Some(12),
            "first present key"
        );
        assert_eq!(float(&attrs, &["a"]), Some(7.0));
    }

    #[test]
    fn flags_arrive_as_bool_or_text() {
        let attrs = [
            kv("a", Value::BoolValue(false)),
            kv("b", Value::StringValue("True".into())),
            kv("c", Value::IntValue(0)),
        ];
        assert_eq!(boolean(&attrs, &["a"]), Some(false));
        assert_eq!(boolean(&attrs, &["b"]), Some(true));
        assert_eq!(boolean(&attrs, &["c"]), Some(false));
        assert_eq!(boolean(&attrs, &["x"]), None);
    }
}
